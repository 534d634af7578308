"""highdicom building the same SEG and SR as petct-node (bench/encode.sh runs it).

Usage: encode_highdicom.py DIR ROUNDS NODE_SECONDS
DIR is what benches/encode.rs wrote: mask_<n>.bin, expected.json (CT grid, CT and PET paths,
segments, findings, UIDs). The CT and PET headers are read first (not timed); each round then
builds the Segmentation (BINARY, empty frames omitted) and the Comprehensive 3D SR (TID 1500
with one TID 1411 group per lesion, study totals, Image Library and evidence of the CT, the PET
and the SEG) and serialises both to bytes, as petct-node does. Prints seconds and the ratio.
"""
import io
import json
import sys
import time

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

d, rounds, node = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ex = json.load(open(f"{d}/expected.json"))
nx, ny, nz = ex["dims"]
uids = ex["uids"]
findings = ex["findings"]
ct = [pydicom.dcmread(p, stop_before_pixels=True) for p in ex["ct_paths"]]
pet = [pydicom.dcmread(p, stop_before_pixels=True) for p in ex["pet_paths"]]
masks = np.stack(
    [np.fromfile(f"{d}/mask_{s['number']}.bin", dtype=np.uint8).reshape(nz, ny, nx) for s in ex["segments"]],
    axis=-1,
).astype(bool)

SUV = Code("126401", "DCM", "SUVbw")
SUV_UNIT = Code("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
ML = Code("ml", "UCUM", "milliliter")
GRAM = Code("g", "UCUM", "gram")
NO_UNITS = Code("1", "UCUM", "no units")


def build():
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=s["number"],
            segment_label=s["label"],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=s["algorithm_name"], version=s["algorithm_version"], family=codes.cid7162.ArtificialIntelligence
            ),
        )
        for s in ex["segments"]
    ]
    seg = hd.seg.Segmentation(
        source_images=ct,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids["seg_series"],
        series_number=900,
        sop_instance_uid=uids["seg_instance"],
        instance_number=1,
        manufacturer="petct-node",
        manufacturer_model_name="petct-node",
        software_versions="petct-node bench",
        device_serial_number="1",
    )
    groups = []
    for lesion in findings["lesions"]:
        m = [
            hd.sr.Measurement(name=SUV, value=lesion["suv_max"], unit=SUV_UNIT, derivation=codes.SCT.Maximum),
            hd.sr.Measurement(name=SUV, value=lesion["suv_mean"], unit=SUV_UNIT, derivation=codes.SCT.Mean),
            hd.sr.Measurement(name=SUV, value=lesion["suv_peak"], unit=SUV_UNIT, derivation=codes.DCM.PeakValueWithinROI),
            hd.sr.Measurement(name=codes.SCT.Volume, value=lesion["volume_ml"], unit=ML),
            hd.sr.Measurement(name=codes.DCM.TotalLesionGlycolysis, value=lesion["tlg"], unit=GRAM),
        ]
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"Lesion {lesion['label']}"
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=lesion["segments"][0],
                    source_series=hd.sr.SourceSeriesForSegmentation(ct[0].SeriesInstanceUID),
                ),
                finding_type=codes.SCT.Lesion,
                measurements=m,
            )
        )
    totals = [
        hd.sr.Measurement(name=Code("246206008", "SCT", "Number of lesions"), value=findings["lesion_count"], unit=NO_UNITS),
        hd.sr.Measurement(name=codes.DCM.MetabolicVolume, value=findings["total_mtv_ml"], unit=ML),
        hd.sr.Measurement(name=codes.DCM.TotalLesionGlycolysis, value=findings["total_tlg"], unit=GRAM),
    ]
    groups.append(
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Study totals"),
            measurements=totals,
        )
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=hd.UID(), name="petct-node", manufacturer_name="petct-node"
            ),
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=Code("443271005", "SCT", "PET/CT FDG imaging of whole body"),
        imaging_measurements=groups,
        referenced_images=ct + pet,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=ct + pet + [seg],
        content=report,
        series_instance_uid=uids["sr_series"],
        series_number=901,
        sop_instance_uid=uids["sr_instance"],
        instance_number=1,
        manufacturer="petct-node",
    )
    out = []
    for ds in (seg, sr):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return seg, out


best = None
for _ in range(rounds):
    t0 = time.perf_counter()
    seg, blobs = build()
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
print(f"highdicom {hd.__version__} SEG+SR:        {best:.3f} s ({int(seg.NumberOfFrames)} frames; SEG {len(blobs[0]) // 1024} KiB, SR {len(blobs[1]) // 1024} KiB)")
print(f"petct-node is {best / node:.1f}x faster (its time includes the MIP)")
