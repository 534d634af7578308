"""The CT shape channel `ct_blob` (training/README.md item 74; docs/models.md) in scipy: the
reference the node's own (src/infer/shape.rs, which `run --export-volumes` writes as
model_grid/ct_blob.nii.gz for training) is held to in tests/pipeline.rs. How much the CT around
each voxel is a bright ball, not a tube, a sheet or an edge: the CT-plain lesions the nets miss
are nodes among bowel and vessels and nodules beside the heart (item 72), as dense as their
neighbours and told apart only by shape.

For each scale sigma (4, 6, 8 mm) the Hessian H of the CT (HU clipped to [-200, 200], so bone and
air do not swamp soft tissue against fat or lung) smoothed with a Gaussian of sigma; where all
three eigenvalues are negative (a bright ball), -sigma^2 times the largest (the flattest
direction's curvature, which is near 0 along a tube and across a sheet); the maximum over scales,
in HU; 0 outside the body.
"""
import numpy as np
from scipy import ndimage

import data

SIGMAS_MM = (4.0, 6.0, 8.0)
HU_WINDOW = (-200.0, 200.0)
ORDERS = {(0, 0): (2, 0, 0), (1, 1): (0, 2, 0), (2, 2): (0, 0, 2), (0, 1): (1, 1, 0), (0, 2): (1, 0, 1), (1, 2): (0, 1, 1)}


def ct_blob(ct, body, spacing_mm=data.SPACING_MM):
    """The channel (float32, the grid of `ct`, z y x) from the CT in HU and the body mask."""
    out = np.zeros(ct.shape, np.float32)
    box = ndimage.find_objects(body.astype(np.uint8))[0]
    a = np.clip(ct[box].astype(np.float32), *HU_WINDOW)
    inside = body[box] != 0
    for sigma in SIGMAS_MM:
        g = sigma / spacing_mm
        h = {k: ndimage.gaussian_filter(a, g, order=o, mode="nearest") for k, o in ORDERS.items()}
        where = np.nonzero(inside & (h[0, 0] + h[1, 1] + h[2, 2] < 0))  # a ball has a negative trace
        m = np.empty((len(where[0]), 3, 3), np.float32)
        for (i, j), v in h.items():
            m[:, i, j] = m[:, j, i] = v[where]
        flattest = np.linalg.eigvalsh(m)[:, 2] * g * g  # per voxel^2 -> scale-normalised, HU
        scale = np.zeros(a.shape, np.float32)
        scale[where] = np.maximum(-flattest, 0)
        out[box] = np.maximum(out[box], scale)
    return out
