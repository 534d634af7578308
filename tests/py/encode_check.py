"""Independent check of petct-node's encoder output with highdicom and pydicom.

Usage: encode_check.py DIR
DIR holds seg.dcm, sr.dcm, mask_<n>.bin (uint8, z-y-x, one per segment) and expected.json
(CT grid dims, CT SOP Instance UIDs in slice order, segment numbers, the findings, the UIDs).
Prints one JSON object: mask mismatches (highdicom and a plain pydicom bit unpacking, frames
mapped to CT slices by their referenced SOP Instance UID), frame order, and every SR
measurement that differs from the findings (compared exactly, as floats).
"""
import json
import sys

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

d = sys.argv[1]
expected = json.load(open(f"{d}/expected.json"))
nx, ny, nz = expected["dims"]
ct_uids = expected["ct_sop_instance_uids"]
segments = expected["segments"]
findings = expected["findings"]
report = {}

masks = {n: np.fromfile(f"{d}/mask_{n}.bin", dtype=np.uint8).reshape(nz, ny, nx) != 0 for n in segments}
report["foreground_voxels"] = int(sum(m.sum() for m in masks.values()))

# --- SEG through highdicom ------------------------------------------------------------------
seg = hd.seg.segread(f"{d}/seg.dcm")
pixels = seg.get_pixels_by_source_instance(
    source_sop_instance_uids=ct_uids,
    segment_numbers=segments,
    assert_missing_frames_are_empty=True,
)
report["mask_mismatches_highdicom"] = int(
    sum((pixels[..., i] != 0).astype(np.uint8).__ne__(masks[n]).sum() for i, n in enumerate(segments))
)

# --- SEG through pydicom, bits unpacked by hand ---------------------------------------------
ds = pydicom.dcmread(f"{d}/seg.dcm")
frames = int(ds.NumberOfFrames)
report["seg_frames"] = frames
bits = np.unpackbits(np.frombuffer(ds.PixelData, dtype=np.uint8), bitorder="little")
bits = bits[: frames * ds.Rows * ds.Columns].reshape(frames, ds.Rows, ds.Columns)
slice_of = {uid: k for k, uid in enumerate(ct_uids)}
ours = {n: np.zeros((nz, ny, nx), dtype=bool) for n in segments}
order = []
for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
    number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
    ours[number][slice_of[uid]] |= bits[i] != 0
    order.append((number, slice_of[uid]))
report["frames_in_slice_order"] = order == sorted(order)
report["mask_mismatches_pydicom"] = int(sum((ours[n] != masks[n]).sum() for n in segments))
report["seg_same_frame_of_reference_and_study"] = bool(ds.StudyInstanceUID and ds.FrameOfReferenceUID)

# --- SR through highdicom -------------------------------------------------------------------
sr = hd.sr.srread(f"{d}/sr.dcm")
content = sr.content
mismatches = []
compared = 0


def compare(what, got, want):
    global compared
    compared += 1
    if got != want:
        mismatches.append({"what": what, "sr": got, "findings": want})


def measurement(group, name, derivation=None):
    found = [
        m
        for m in group.get_measurements(name=name)
        if derivation is None or (m.derivation is not None and m.derivation == derivation)
    ]
    if len(found) != 1:
        mismatches.append({"what": f"{name.meaning} {derivation}", "found": len(found)})
        return None
    return found[0]


groups = content.get_volumetric_roi_measurement_groups()
report["sr_lesion_groups"] = len(groups)
by_id = {g.tracking_identifier: g for g in groups}
tracking_uids = set()
seg_uid = expected["uids"]["seg_instance"]
for lesion in findings["lesions"]:
    g = by_id.get(f"Lesion {lesion['label']}")
    if g is None:
        mismatches.append({"what": f"no group for lesion {lesion['label']}"})
        continue
    tracking_uids.add(str(g.tracking_uid))
    ref = [i for i in g[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121191"]
    sop = ref[0].ReferencedSOPSequence[0] if len(ref) == 1 else None
    if sop is None or sop.ReferencedSOPInstanceUID != seg_uid or int(sop.ReferencedSegmentNumber) != lesion["segments"][0]:
        mismatches.append({"what": f"lesion {lesion['label']}: referenced segment"})
    found_by = [i.TextValue for i in g[0].ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "DETECTED-BY"]
    compare(f"lesion {lesion['label']} detected by", found_by, [", ".join(lesion["detected_by"])])
    suv = pydicom.sr.coding.Code("126401", "DCM", "SUVbw")
    for key, m in [
        ("suv_max", measurement(g, suv, codes.SCT.Maximum)),
        ("suv_mean", measurement(g, suv, codes.SCT.Mean)),
        ("suv_peak", measurement(g, suv, codes.DCM.PeakValueWithinROI)),
        ("volume_ml", measurement(g, codes.SCT.Volume)),
        ("tlg", measurement(g, codes.DCM.TotalLesionGlycolysis)),
    ]:
        if m is not None:
            compare(f"lesion {lesion['label']} {key}", m.value, lesion[key])
            if key.startswith("suv") and m.unit.value != "{SUVbw}g/ml":
                mismatches.append({"what": f"{key} unit {m.unit.value}"})
if len(tracking_uids) != len(findings["lesions"]):
    mismatches.append({"what": "tracking UIDs are not unique"})

study = content.get_image_measurement_groups()
if len(study) != 1:
    mismatches.append({"what": f"{len(study)} study-level groups"})
else:
    g = study[0]
    totals = [
        ("lesion_count", measurement(g, pydicom.sr.coding.Code("246206008", "SCT", "Number of lesions"))),
        ("total_mtv_ml", measurement(g, codes.DCM.MetabolicVolume)),
        ("total_tlg", measurement(g, codes.DCM.TotalLesionGlycolysis)),
    ]
    if findings["anomaly_score"] is not None:
        totals.append(("anomaly_score", measurement(g, pydicom.sr.coding.Code("ANOMALY-SCORE", "99PETCT", "x"))))
    for key, m in totals:
        if m is not None:
            compare(key, m.value, findings[key])

# Evidence: every referenced instance is listed.
evidence = {
    sop.ReferencedSOPInstanceUID
    for study_item in pydicom.dcmread(f"{d}/sr.dcm").CurrentRequestedProcedureEvidenceSequence
    for series in study_item.ReferencedSeriesSequence
    for sop in series.ReferencedSOPSequence
}
if not (set(ct_uids) <= evidence and seg_uid in evidence):
    mismatches.append({"what": "evidence lacks CT instances or the SEG"})

report["measurement_mismatches"] = mismatches
report["measurements_compared"] = compared
print(json.dumps(report))
