"""Checks OUT/model_grid/*.nii.gz against the CT-grid exports of the same run, independently of
the node: the grid's box and direction, activity and CT values preserved, air outside. Also
checks training/nifti.py (the training chain's reader and label writer, which replaced
SimpleITK there) against SimpleITK on the same files, and the node's `ct_blob` against training/blob_channel.py (scipy).
Usage: model_grid_check.py OUT SPACING_MM; prints one JSON object."""
import json
import os
import sys
import tempfile

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "training"))
import nifti  # noqa: E402
from blob_channel import ct_blob  # noqa: E402

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


def lps_affine(img):
    """SimpleITK's voxel (i, j, k) -> LPS mm, as nifti.Image.affine holds it."""
    m = np.eye(4)
    m[:3, :3] = np.array(img.GetDirection()).reshape(3, 3) * np.array(img.GetSpacing())
    m[:3, 3] = img.GetOrigin()
    return m


def training_reader_errors():
    """The largest difference between nifti.py and SimpleITK: values, affine (mm), and a label
    written by nifti.write_like on the model grid and read back by SimpleITK."""
    files = [f"{out}/{n}.nii.gz" for n in ("suv_on_ct", "ct_hu")]
    files += [f"{out}/model_grid/{n}.nii.gz" for n in ("suv", "ct_hu", "body")]
    values = affine = 0.0
    for f in files:
        ours, theirs = nifti.read(f), sitk.ReadImage(f)
        want = sitk.GetArrayFromImage(theirs)
        if ours.array.shape != want.shape:
            return {"shape_mismatch": f}
        values = max(values, float(np.abs(ours.array.astype(np.float64) - want).max()))
        affine = max(affine, float(np.abs(ours.affine - lps_affine(theirs)).max()))
    like = nifti.read(f"{out}/model_grid/body.nii.gz")
    # Random, so that no flip or transpose of the grid maps it onto itself.
    fraction = np.random.default_rng(0).random(like.array.shape, dtype=np.float32)
    label = (fraction < 0.1).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        nifti.write_like(f"{tmp}/label.nii.gz", label, like)
        back = sitk.ReadImage(f"{tmp}/label.nii.gz")
        written = int((sitk.GetArrayFromImage(back) != label).sum())
        geometry = float(np.abs(lps_affine(back) - lps_affine(coarse["body"])).max())
        # The label fractions make_data.py writes beside the labels (float32).
        nifti.write_like(f"{tmp}/fraction.nii.gz", fraction, like)
        fractions = int((sitk.GetArrayFromImage(sitk.ReadImage(f"{tmp}/fraction.nii.gz")) != fraction).sum())
    return {"value_error": values, "affine_error_mm": affine, "label_mismatches": written,
            "label_geometry_error_mm": geometry, "fraction_mismatches": fractions}


def ct_blob_check():
    """The node's shape channel against scipy's filter on the node's own CT and body."""
    ours = nifti.read(f"{out}/model_grid/ct_blob.nii.gz").array
    ct, body = (nifti.read(f"{out}/model_grid/{n}.nii.gz").array for n in ("ct_hu", "body"))
    want = ct_blob(ct, body, spacing_mm=spacing)
    return {"error": float(np.abs(ours - want).max()), "max": float(want.max()),
            "outside_body_max": float(np.abs(ours[body == 0]).max())}


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
    "training_reader": training_reader_errors(),
    "ct_blob": ct_blob_check(),
}))
