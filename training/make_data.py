"""Training and evaluation data from the node itself.

For every seed: `petct-node phantom` writes a study, `petct-node run --model-spacing S` puts it
through the node's own preprocessing (assemble, SUVbw, resampling, model grid), and the
phantom's truth and reader masks are put on the same model grid here (Gaussian-filtered fraction
>= 0.5, as the node does with its body mask). With --models CONFIG the node also runs the
configured models (e.g. the anomaly detector) and exports their maps on the model grid.

    make_data.py --seeds 1000-1059 --out var/training/lesion [--normal] [--models CONFIG] [--jobs N]

Each case folder holds model_grid/{suv,ct_hu,body[,anomaly_prior]}.nii.gz,
labels/{truth,high_sensitivity,high_specificity}[_fraction].nii.gz and truth.json. Existing
complete cases are kept; --relabel writes only their labels and truth.json again.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

import nifti

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDORS = ["siemens", "ge", "philips-bqml", "philips-cnts"]
LABELS = {
    "truth": "lesions.nii.gz",
    "high_sensitivity": "reader_high_sensitivity.nii.gz",
    "high_specificity": "reader_high_specificity.nii.gz",
}
FWHM_PER_SIGMA = 2.354820045030949


def seeds(spec):
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def fraction_on_grid(mask_path, reference):
    """Foreground fraction filtered to the grid's resolution and sampled (float32; the label is
    where it is >= 0.5, the node's rule). Only the masks' bounding box (plus the filter's reach)
    is filtered: they are sparse."""
    m = nifti.read(mask_path)
    nz = np.argwhere(m.array != 0)
    if len(nz) == 0:
        return np.zeros(reference.array.shape, dtype=np.float32)
    fine, coarse = m.spacing, reference.spacing  # x, y, z
    sigma = np.sqrt(np.maximum(coarse**2 - fine**2, 0.0)) / FWHM_PER_SIGMA
    margin = np.ceil((3 * sigma + coarse) / fine).astype(int)[::-1]  # z, y, x
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + margin + 1, m.array.shape)
    box = (m.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] != 0).astype(np.float32)
    fraction = ndimage.gaussian_filter(box, (sigma / fine)[::-1], mode="nearest", truncate=4.0)
    sampled = sample_at(fraction, m.affine, reference.affine, (0, 0, 0), reference.array.shape, offset=lo)
    return sampled.astype(np.float32)


def sample_at(volume, volume_affine, grid_affine, lo, hi, offset=(0, 0, 0)):
    """`volume`, the part from voxel `offset` (z, y, x) on of the grid `volume_affine` describes,
    linearly sampled (0 beyond it) at the centres of the voxels `lo` to `hi` (z, y, x, `hi`
    excluded) of the grid `grid_affine` describes."""
    k, j, i = np.meshgrid(*(np.arange(a, b, dtype=np.float64) for a, b in zip(lo, hi)), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    at = (np.linalg.inv(volume_affine) @ grid_affine @ ijk)[:3][::-1] - np.asarray(offset)[:, None]
    return ndimage.map_coordinates(volume, at, order=1, mode="constant", cval=0.0).reshape(k.shape)


def write_labels(study, case):
    """The study's truth and reader masks on the case's model grid: labels/<source>.nii.gz (0/1)
    and labels/<source>_fraction.nii.gz (the fraction they come from, for soft targets), and
    truth.json (each lesion's kind, centre and confounder)."""
    reference = nifti.read(os.path.join(case, "model_grid", "suv.nii.gz"))
    os.makedirs(os.path.join(case, "labels"), exist_ok=True)
    for name, file in LABELS.items():
        fraction = fraction_on_grid(os.path.join(study, "truth", file), reference)
        nifti.write_like(os.path.join(case, "labels", f"{name}.nii.gz"), (fraction >= 0.5).astype(np.uint8), reference)
        nifti.write_like(os.path.join(case, "labels", f"{name}_fraction.nii.gz"), fraction, reference)
    shutil.copy(os.path.join(study, "truth", "truth.json"), os.path.join(case, "truth.json"))
    return json.load(open(os.path.join(case, "truth.json")))


def phantom(binary, seed, study, args):
    cmd = [binary, "phantom", "--profile", args.profile, "--seed", str(seed), "--out", study,
           "--vendor", VENDORS[seed % len(VENDORS)]]
    subprocess.run(cmd + (["--normal"] if args.normal else []), check=True, stdout=subprocess.DEVNULL)


def relabel(binary, seed, out, args):
    """A complete case's labels and truth.json written again from its phantom (the same seed
    makes the same study), the node not run again."""
    case = os.path.join(out, f"case{seed:05d}")
    if not os.path.exists(os.path.join(case, "done.json")):
        return False
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        study = os.path.join(tmp, "study")
        phantom(binary, seed, study, args)
        write_labels(study, case)
    return True


def make_case(binary, seed, out, args):
    case = os.path.join(out, f"case{seed:05d}")
    if os.path.exists(os.path.join(case, "done.json")):
        return False
    shutil.rmtree(case, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        study = os.path.join(tmp, "study")
        phantom(binary, seed, study, args)
        run = os.path.join(tmp, "run")
        cmd = [binary, "run", study, "--out", run, "--model-spacing", str(args.spacing)]
        if args.keep_ct_grid:
            cmd.append("--export-volumes")
        if args.models:
            cmd += ["--config", os.path.abspath(args.models)]
        summary = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
        shutil.copytree(os.path.join(run, "model_grid"), os.path.join(case, "model_grid"))
        truth = write_labels(study, case)
        if args.keep_ct_grid:
            # Evaluation on the CT grid: the reference masks as the phantom wrote them, and the
            # CT they are drawn on (a mask drawn with the CT's help, item 53).
            shutil.copytree(os.path.join(study, "truth"), os.path.join(case, "truth"))
            shutil.copy(os.path.join(run, "ct_hu.nii.gz"), os.path.join(case, "truth", "ct_hu.nii.gz"))
    with open(os.path.join(case, "done.json"), "w") as f:
        json.dump({"seed": seed, "normal": args.normal, "vendor": VENDORS[seed % len(VENDORS)],
                   "lesions": len(truth["lesions"]), "suv_bw_factor": summary["suv_bw_factor"],
                   "lesion_ml": sum(l["volume_ml"] for l in truth["lesions"]),
                   "anomaly_score": summary.get("anomaly_score")}, f)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", required=True, help="e.g. 1000-1059,1100")
    p.add_argument("--out", required=True)
    p.add_argument("--normal", action="store_true", help="lesion-free studies (phantom --normal)")
    p.add_argument("--profile", default="wholebody")
    p.add_argument("--spacing", type=float, default=4.0, help="model grid spacing, mm")
    p.add_argument("--models", help="node config with [[models]]: also export their maps")
    p.add_argument("--keep-ct-grid", action="store_true", help="also keep the CT-grid truth and CT (evaluation)")
    p.add_argument("--scratch", default=None, help="temporary folder (default: system temp)")
    p.add_argument("--jobs", type=int, default=1, help="cases made side by side")
    p.add_argument("--relabel", action="store_true",
                   help="only write the labels and truth.json of complete cases again (cases made before they had fractions)")
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "petct-node"))
    args = p.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release` first")
    os.makedirs(args.out, exist_ok=True)

    def one(seed):
        t0 = time.time()
        if args.relabel:
            done = relabel(args.binary, seed, args.out, args)
            print(f"seed {seed}: {'labelled' if done else 'not made yet'} in {time.time() - t0:.1f} s", flush=True)
            return
        made = make_case(args.binary, seed, args.out, args)
        print(f"seed {seed}: {'made' if made else 'kept'} in {time.time() - t0:.1f} s", flush=True)

    # Each case is a node process (its threads: RAYON_NUM_THREADS and the config's [inference]).
    with ThreadPoolExecutor(args.jobs) as pool:
        for _ in pool.map(one, seeds(args.seeds)):
            pass


if __name__ == "__main__":
    main()
