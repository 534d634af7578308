"""Checks OUT/model_grid/*.nii.gz against the CT-grid exports of the same run, independently of
the node: the grid's box and direction, activity and CT values preserved, air outside.
Usage: model_grid_check.py OUT SPACING_MM; prints one JSON object."""
import json
import sys

import numpy as np
import SimpleITK as sitk

out, spacing = sys.argv[1], float(sys.argv[2])
fine = {n: sitk.ReadImage(f"{out}/{n}.nii.gz") for n in ("suv_on_ct", "ct_hu")}
coarse = {n: sitk.ReadImage(f"{out}/model_grid/{n}.nii.gz") for n in ("suv", "ct_hu", "body")}
ct, grid = fine["ct_hu"], coarse["ct_hu"]


def corner(img):
    return np.array(img.TransformContinuousIndexToPhysicalPoint([-0.5, -0.5, -0.5]))


extent = np.array(ct.GetSize()) * np.array(ct.GetSpacing())
suv_fine = sitk.GetArrayFromImage(fine["suv_on_ct"]).astype(np.float64)
suv_coarse = sitk.GetArrayFromImage(coarse["suv"]).astype(np.float64)
activity = lambda a, img: a.sum() * np.prod(img.GetSpacing())
body = sitk.GetArrayFromImage(coarse["body"])
hu = sitk.GetArrayFromImage(grid)
print(json.dumps({
    "size": list(grid.GetSize()),
    "expected_size": [max(1, int(np.floor(e / spacing + 0.5))) for e in extent],
    "spacing": list(grid.GetSpacing()),
    "corner_error_mm": float(np.abs(corner(grid) - corner(ct)).max()),
    "direction_error": float(np.abs(np.array(grid.GetDirection()) - np.array(ct.GetDirection())).max()),
    "activity_ratio": float(activity(suv_coarse, coarse["suv"]) / activity(suv_fine, fine["suv_on_ct"])),
    "body_fraction": float(body.mean()),
    "hu_outside_body_mean": float(hu[body == 0].mean()),
    # HU + 1000 is zero in air: its integral is kept like the activity's.
    "density_ratio": float(activity(hu + 1000.0, grid) / activity(sitk.GetArrayFromImage(ct) + 1000.0, ct)),
}))
