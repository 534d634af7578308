"""Independent check of `petct-node run --export-volumes` with SimpleITK and pydicom.

Usage: resample_check.py OUT_DIR CT_DICOM_DIR
Prints one JSON line: the largest SUV difference between petct-node's suv_on_ct.nii.gz and
SimpleITK's linear resampling of suv.nii.gz onto ct_hu.nii.gz (inside the PET field of view),
the number of voxels compared, and how far SimpleITK's reading of the CT NIfTI origin and
directions lies from the DICOM Image Position/Orientation of the first CT slice.
"""
import glob
import json
import sys

import numpy as np
import pydicom
import SimpleITK as sitk

out, ct_dir = sys.argv[1], sys.argv[2]
ct = sitk.ReadImage(f"{out}/ct_hu.nii.gz")
pet = sitk.ReadImage(f"{out}/suv.nii.gz")
ours = sitk.GetArrayFromImage(sitk.ReadImage(f"{out}/suv_on_ct.nii.gz"))
reference = sitk.GetArrayFromImage(sitk.Resample(pet, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
ones = sitk.Image(pet.GetSize(), sitk.sitkFloat32) + 1.0
ones.CopyInformation(pet)
inside = sitk.GetArrayFromImage(sitk.Resample(ones, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)) > 0.5

slices = [pydicom.dcmread(f, stop_before_pixels=True) for f in glob.glob(f"{ct_dir}/*.dcm")]
iop = np.array(slices[0].ImageOrientationPatient, dtype=float)
normal = np.cross(iop[:3], iop[3:])
first = min(slices, key=lambda s: float(np.dot(np.array(s.ImagePositionPatient, dtype=float), normal)))
origin_error = float(np.max(np.abs(np.array(ct.GetOrigin()) - np.array(first.ImagePositionPatient, dtype=float))))
direction = np.array(ct.GetDirection()).reshape(3, 3)
direction_error = float(np.max(np.abs(direction[:, 0] - iop[:3])) + np.max(np.abs(direction[:, 1] - iop[3:])))
print(json.dumps({
    "max_abs_diff_suv": float(np.max(np.abs(ours[inside] - reference[inside]))),
    "voxels_compared": int(inside.sum()),
    "outside_is_zero": bool(np.all(ours[~inside] == 0.0)),
    "ct_origin_error_mm": origin_error,
    "ct_direction_error": direction_error,
    "ct_size": list(ct.GetSize()),
}))
