"""Cases written by make_data.py, loaded into memory, and the channel normalisation of the
manifests (docs/models.md): value = (clamp(x, lo, hi) - offset) / scale."""
import functools
import glob
import json
import os

import numpy as np

import nifti

# Voxels above this SUV are hidden from the anomaly detector (its manifest's mask_threshold_suv).
MASK_THRESHOLD_SUV = 2.5
# A hot voxel below this CT number is urine, for the training log and the diagnostic (bladder
# 6 HU, lesions 20 HU and up).
FLUID_HU = 18.0

# The manifests' [[inputs]]: channel -> (source, clip, offset, scale); the node applies the same.
CHANNELS = {
    "suv": ("suv", (0.0, 20.0), 0.0, 10.0),
    "ct_hu": ("ct_hu", (-1000.0, 1000.0), 0.0, 1000.0),
    # A soft-tissue window beside the wide one: fluid (bladder, 0 HU), fat, liver and muscle lie
    # within 0.1 of each other in the wide window and 0.5-2.5 apart here.
    "ct_soft": ("ct_hu", (-200.0, 300.0), 50.0, 100.0),
    # A low SUV window beside the wide one: the lesions the nets missed even in their training
    # studies have SUVmax 2.5-3.5 at 4-7 times their background, a tenth of the wide window's range,
    # where the brain and the bladder (SUV 10-20) set the scale (training/README.md, item 27).
    "suv_soft": ("suv", (0.0, 5.0), 0.0, 2.5),
    "anomaly_prior": ("anomaly_prior", (0.0, 1.0), 0.0, 1.0),
    "suv_masked": ("suv_masked", (0.0, 20.0), 0.0, 10.0),
    "suv_mask": ("suv_mask", (0.0, 1.0), 0.0, 1.0),
    # The CT's shape (docs/models.md, item 74): the CT-plain lesions the nets miss score 10-45 HU,
    # lung nodules beside the heart more than any normal structure.
    "ct_blob": ("ct_blob", (0.0, 40.0), 0.0, 20.0),
}
# What the node pads with and puts outside the CT box, per source (docs/models.md).
AIR = {"suv": 0.0, "ct_hu": -1000.0, "anomaly_prior": 0.0, "suv_masked": 0.0, "suv_mask": 0.0, "ct_blob": 0.0}
# The model grid of every model here: 4 mm isotropic.
SPACING_MM = 4.0
VOXEL_ML = SPACING_MM**3 / 1000
# The largest window a batch-normalised segmentation net is served on (z, y, x; nets.norm_layer),
# smaller where the grid is (the manifest's patch_fits_grid): 102 x 51 x 64 cm, a whole-body study
# in one window, so the overlap repeats no work (windows of 64 x 96 x 128 did it twice over along z).
SERVE_PATCH = (256, 128, 160)


# The nets' size multiple, 2 ** (levels - 1): the manifests' size_multiple.
SIZE_MULTIPLE = 8


def serve_window(norm, trained_patch, window=None):
    """The window a net is served on (z, y, x) and whether it fits the grid (patch_fits_grid): under
    instance normalisation, which sees a window's statistics, `window` (its manifest's patch_size)
    or else the trained patch; SERVE_PATCH under batch normalisation, which takes no `window`."""
    if norm == "batch":
        if window:
            raise SystemExit("--window is for instance-normalised nets; batch-normalised ones fit the grid")
        return SERVE_PATCH, True
    return tuple(window or (trained_patch,) * 3), False


def window_arg(text, multiple=SIZE_MULTIPLE):
    """A --window argument, "Z,Y,X" (positive multiples of the nets' size multiple, as the node
    requires of patch_size), as a tuple (None when absent)."""
    if not text:
        return None
    window = tuple(int(v) for v in text.split(","))
    if len(window) != 3 or any(n <= 0 or n % multiple for n in window):
        raise SystemExit(f"--window {text}: three positive multiples of {multiple}, Z,Y,X")
    return window

# The anomaly detector's input channels, in the manifest's order.
ANOMALY_CHANNELS = ["suv_masked", "suv_mask", "ct_hu", "ct_soft"]


def normalise(channel, x):
    _, (lo, hi), offset, scale = CHANNELS[channel]
    return ((np.clip(x, lo, hi) - offset) / scale).astype(np.float32)


def voxels_in(volume_ml):
    """The number of model-grid voxels in `volume_ml` (at least one), as the node counts its
    score volume."""
    return max(1, int(round(volume_ml / VOXEL_ML)))


def air_values(channels):
    """Each channel's normalised air value, the padding of sliding-window inference."""
    return np.array([normalise(c, np.float32(AIR[CHANNELS[c][0]])) for c in channels], dtype=np.float32)


def anomaly_inputs(suv, ct, hidden):
    """The anomaly detector's channels with the `hidden` voxels of the SUV masked."""
    sources = {"suv_masked": np.where(hidden, 0.0, suv), "suv_mask": hidden.astype(np.float32), "ct_hu": ct, "ct_soft": ct}
    return np.stack([normalise(c, sources[c]) for c in ANOMALY_CHANNELS])


def read(path):
    return nifti.read(path).array  # (z, y, x)


class Case:
    def __init__(self, folder, with_prior=False, fraction=None):
        self.folder = folder
        self.meta = json.load(open(os.path.join(folder, "done.json")))
        grid = os.path.join(folder, "model_grid")
        suv = nifti.read(os.path.join(grid, "suv.nii.gz"))
        self.affine = suv.affine  # voxel (i, j, k) -> LPS mm, as truth.json's centres
        self.suv = suv.array.astype(np.float32)
        self.ct = read(os.path.join(grid, "ct_hu.nii.gz")).astype(np.float32)
        self.body = read(os.path.join(grid, "body.nii.gz")).astype(np.uint8)
        self.prior = read(os.path.join(grid, "anomaly_prior.nii.gz")).astype(np.float32) if with_prior else None
        self.labels = {}
        for f in glob.glob(os.path.join(folder, "labels", "*.nii.gz")):
            name = os.path.basename(f)[: -len(".nii.gz")]
            if not name.endswith("_fraction"):
                self.labels[name] = read(f).astype(np.uint8)
        # Float32 volumes: only the one asked for (soft targets of the source trained on).
        path = os.path.join(folder, "labels", f"{fraction}_fraction.nii.gz")
        self.fraction = read(path).astype(np.float32) if fraction else None
        truth = os.path.join(folder, "truth.json")
        self.truth = json.load(open(truth)) if os.path.exists(truth) else None
        # int16 indices: an int64 list of a whole body's voxels is tens of MB per case.
        self.body_voxels = np.argwhere(self.body != 0).astype(np.int16)

    @functools.cached_property
    def blob(self):
        """The CT shape channel (the node's model_grid/ct_blob.nii.gz), read when a net asks for
        it; None in cases made before item 74."""
        path = os.path.join(self.folder, "model_grid", "ct_blob.nii.gz")
        return read(path).astype(np.float32) if os.path.exists(path) else None


def voxel_of(case, point_mm):
    """The (z, y, x) index of the model-grid voxel of `case` nearest to `point_mm` (LPS), as
    truth.json gives lesion centres; it may lie outside the grid."""
    return tuple(np.rint((np.linalg.inv(case.affine) @ [*point_mm, 1.0])[:3][::-1]).astype(int))


def seed_set(spec):
    """`1000-1079,1100` as a set of seeds."""
    out = set()
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def load(root, with_prior=False, seeds=None, fraction=None):
    """The complete cases under `root`, only those of `seeds` (a spec such as 1000-1079) if given,
    with the label fraction of source `fraction` if given (make_data.py --relabel for older cases)."""
    return [Case(f, with_prior, fraction) for f in folders(root, seeds)]


def folders(root, seeds=None):
    """The complete case folders under `root`, only those of `seeds` if given, in seed order."""
    wanted = seed_set(seeds) if seeds else None
    found = sorted(f for f in glob.glob(os.path.join(root, "case*")) if os.path.exists(os.path.join(f, "done.json")))
    return [f for f in found if wanted is None or int(os.path.basename(f)[4:]) in wanted]


def crop(a, centre, size, fill):
    """The `size` box around `centre` (z, y, x) of `a`, `fill` beyond its edges."""
    out = np.full(size, fill, dtype=a.dtype)
    lo = [c - s // 2 for c, s in zip(centre, size)]
    src = tuple(slice(max(l, 0), min(l + s, n)) for l, s, n in zip(lo, size, a.shape))
    dst = tuple(slice(sl.start - l, sl.stop - l) for sl, l in zip(src, lo))
    out[dst] = a[src]
    return out
