"""The Dice a perfect net on the model grid would reach: the truth as make_data.py puts it on that
grid, mapped back onto the CT grid as the node maps a probability (linear interpolation, >= 0.5),
against the truth on the CT grid; once from the 0/1 label (what the nets are trained on) and once
from its fraction (`train_seg.py --soft-labels`).

    grid_ceiling.py var/training/validation/case08000 ...   (cases made with --keep-ct-grid)
"""
import os
import sys

import numpy as np

import nifti
from make_data import fraction_on_grid, sample_at


def dice_on_ct(on_grid, grid, truth):
    """Dice of `on_grid` (values on `grid`) interpolated onto the CT grid of `truth`, >= 0.5,
    within the truth's bounding box plus 6 CT voxels."""
    t = truth.array != 0
    nz = np.argwhere(t)
    lo, hi = np.maximum(nz.min(0) - 6, 0), np.minimum(nz.max(0) + 7, t.shape)
    p = sample_at(on_grid.astype(np.float32), grid.affine, truth.affine, lo, hi) >= 0.5
    t = t[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return 2 * np.count_nonzero(p & t) / (np.count_nonzero(p) + np.count_nonzero(t))


def main():
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    rows = []
    for case in sys.argv[1:]:
        grid = nifti.read(os.path.join(case, "model_grid", "suv.nii.gz"))
        path = os.path.join(case, "truth", "lesions.nii.gz")
        truth = nifti.read(path)
        fraction = fraction_on_grid(path, grid)
        rows.append((dice_on_ct(fraction >= 0.5, grid, truth), dice_on_ct(fraction, grid, truth)))
        label, soft = rows[-1]
        print(f"{os.path.basename(case)}: from the label {label:.3f}, from its fraction {soft:.3f}", flush=True)
    label, fraction = np.mean(rows, axis=0)
    print(f"mean over {len(rows)} cases: from the label {label:.3f}, from its fraction {fraction:.3f}")


if __name__ == "__main__":
    main()
