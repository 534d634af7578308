//! `assemble` against series built to have each defect a real series can have.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use petct_node::assemble::{AssembleError, assemble};

/// Writes a CT series of `n` slices, letting `edit` change slice `i` before it is written.
fn series(dir: &Path, n: usize, edit: impl Fn(usize, &mut dicom_object::InMemDicomObject)) -> Vec<PathBuf> {
    let spec = SeriesSpec::new("CT", &new_uid(), &new_uid(), n);
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let mut obj = instance(&spec, i, &new_uid());
            edit(i, &mut obj);
            let path = dir.join(format!("{i:03}.dcm"));
            write_part10(obj, &path);
            path
        })
        .collect()
}

fn set_position(obj: &mut dicom_object::InMemDicomObject, x: f64, y: f64, z: f64) {
    obj.put(DataElement::new(
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        dicom_value!(Strs, [x.to_string(), y.to_string(), z.to_string()]),
    ));
}

#[test]
fn a_good_series_is_sorted_along_the_normal_with_its_geometry() {
    let dir = tempfile::tempdir().unwrap();
    // Instance numbers run against the slice order: sorting must use positions.
    let mut files = series(dir.path(), 6, |i, o| {
        o.put(DataElement::new(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from((100 - i).to_string())));
    });
    files.reverse();
    files.swap(1, 4);
    let s = assemble(&files).unwrap();
    let g = s.volume.geometry();
    assert_eq!(s.modality, "CT");
    assert_eq!(g.dims, [16, 16, 6]);
    assert_eq!(g.spacing_mm, [2.0, 2.0, 3.0]);
    // Slices are at z = -3 i: sorted along +z, the first slice is the last written.
    assert_eq!(g.origin_mm, [0.0, 0.0, -15.0]);
    assert_eq!(g.direction, [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
    assert!(g.frame_of_reference_uid.is_some());
    // Slice k of the volume is instance 5 - k; its pixels are ((p + index) % 4096) - 1024 HU.
    for k in 0..6 {
        let index = 5 - k;
        let slice = s.volume.slice(k);
        for (p, v) in slice.iter().enumerate() {
            assert_eq!(*v, ((p + index) % 4096) as f32 - 1024.0, "slice {k} pixel {p}");
        }
    }
    assert_eq!(s.headers.len(), 6);
    assert_eq!(s.paths[0], dir.path().join("005.dcm"));
}

#[test]
fn a_missing_slice_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = series(dir.path(), 8, |_, _| {});
    files.remove(4);
    let e = assemble(&files).err().unwrap();
    assert!(
        matches!(e, AssembleError::MissingSlice { gap_mm, spacing_mm, .. } if gap_mm == 6.0 && spacing_mm == 3.0),
        "{e}"
    );
}

#[test]
fn a_duplicate_position_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let files = series(dir.path(), 5, |i, o| {
        if i == 3 {
            set_position(o, 0.0, 0.0, -6.0);
        }
    });
    let e = assemble(&files).err().unwrap();
    assert!(matches!(e, AssembleError::DuplicatePosition { .. }), "{e}");
}

#[test]
fn a_dynamic_series_is_more_than_one_volume() {
    let dir = tempfile::tempdir().unwrap();
    let files = series(dir.path(), 8, |i, o| {
        set_position(o, 0.0, 0.0, -3.0 * (i % 4) as f64);
        o.put(DataElement::new(tags::TEMPORAL_POSITION_INDEX, VR::IS, PrimitiveValue::from((i / 4 + 1).to_string())));
    });
    let e = assemble(&files).err().unwrap();
    assert!(matches!(e, AssembleError::MultipleVolumes { count: 2 }), "{e}");
}

#[test]
fn mixed_orientation_size_and_frame_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let files = series(&dir.path().join("o"), 4, |i, o| {
        if i == 2 {
            o.put(DataElement::new(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                dicom_value!(Strs, ["0", "1", "0", "1", "0", "0"]),
            ));
        }
    });
    assert!(matches!(assemble(&files), Err(AssembleError::MixedOrientation { .. })));
    let files = series(&dir.path().join("s"), 4, |i, o| {
        if i == 1 {
            o.put(DataElement::new(tags::PIXEL_SPACING, VR::DS, dicom_value!(Strs, ["1", "1"])));
        }
    });
    assert!(matches!(assemble(&files), Err(AssembleError::MixedSize { .. })));
    let files = series(&dir.path().join("f"), 4, |i, o| {
        if i == 3 {
            o.put_str(tags::FRAME_OF_REFERENCE_UID, VR::UI, new_uid());
        }
    });
    assert!(matches!(assemble(&files), Err(AssembleError::MixedFrameOfReference { .. })));
}

#[test]
fn gantry_tilt_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // Positions drift along y: the stack leans against its normal by atan(1/3) = 18.4 degrees.
    let files = series(&dir.path().join("p"), 5, |i, o| set_position(o, 0.0, i as f64, -3.0 * i as f64));
    let e = assemble(&files).err().unwrap();
    assert!(matches!(e, AssembleError::GantryTilt { degrees } if (degrees - 18.43).abs() < 0.01), "{e}");
    let files = series(&dir.path().join("a"), 3, |_, o| {
        o.put(DataElement::new(tags::GANTRY_DETECTOR_TILT, VR::DS, PrimitiveValue::from("12")));
    });
    assert!(matches!(assemble(&files), Err(AssembleError::GantryTilt { degrees }) if degrees == 12.0));
}

#[test]
fn non_uniform_spacing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let files =
        series(dir.path(), 6, |i, o| set_position(o, 0.0, 0.0, -3.0 * i as f64 - if i >= 3 { 0.5 } else { 0.0 }));
    let e = assemble(&files).err().unwrap();
    assert!(matches!(e, AssembleError::NonUniformSpacing { .. }), "{e}");
}

#[test]
fn multi_frame_and_missing_pixel_data_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let files = series(&dir.path().join("m"), 3, |i, o| {
        if i == 0 {
            o.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("2")));
        }
    });
    assert!(matches!(assemble(&files), Err(AssembleError::MultiFrame { frames: 2, .. })));
    let files = series(&dir.path().join("n"), 3, |i, o| {
        if i == 1 {
            o.remove_element(tags::PIXEL_DATA);
        }
    });
    assert!(matches!(assemble(&files), Err(AssembleError::NoPixelData { .. })));
    assert!(matches!(assemble(&[]), Err(AssembleError::NoInstances)));
}

#[test]
fn a_phantom_study_assembles_into_ct_and_pet_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["phantom", "--profile", "small", "--seed", "5", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_success(&out, "phantom");
    let files = |sub: &str| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.path().join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    };
    let ct = assemble(&files("CT")).unwrap();
    let pt = assemble(&files("PT")).unwrap();
    assert_eq!(ct.volume.geometry().dims, [128, 128, 48]);
    assert_eq!(pt.modality, "PT");
    assert_eq!(ct.volume.geometry().frame_of_reference_uid, pt.volume.geometry().frame_of_reference_uid);
    // Air in the corner of the CT, and a body whose soft tissue is near 0 HU.
    assert!(ct.volume.slice(0)[0] < -900.0);
    let body: Vec<f32> = ct.volume.data().iter().copied().filter(|v| (-200.0..200.0).contains(v)).collect();
    assert!(body.len() > 50_000, "{} soft-tissue voxels", body.len());
    // PET in Bq/mL: positive activity, no negative values after rescale.
    assert!(pt.volume.data().iter().all(|v| *v >= 0.0));
    assert!(pt.volume.data().iter().any(|v| *v > 1000.0));
}

#[test]
fn inspect_reports_geometry_completeness_and_pairing() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args(["phantom", "--profile", "small", "--seed", "3", "--misalign", "5,0,0,0,0,2", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_success(&out, "phantom");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // One PET slice goes missing: the PET is then incomplete by the node's rule.
    let mut pt: Vec<PathBuf> = std::fs::read_dir(dir.path().join("PT")).unwrap().map(|e| e.unwrap().path()).collect();
    pt.sort();
    let inspect = |d: &Path| {
        let out = std::process::Command::new(bin()).args(["inspect", "--json"]).arg(d).output().unwrap();
        assert_success(&out, "inspect");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let report = inspect(dir.path());
    let series = report["series"].as_array().unwrap();
    assert_eq!(series.len(), 2);
    let find = |m: &str| series.iter().find(|s| s["modality"] == m).unwrap().clone();
    let (ct, pet) = (find("CT"), find("PT"));
    assert_eq!(ct["dims"], serde_json::json!([128, 128, 48]));
    assert_eq!(ct["complete"], true);
    assert_eq!(pet["complete"], true);
    assert_eq!(pet["expected_slices"], summary["pt_slices"]);
    assert_eq!(pet["paired_ct_series_uid"], summary["ct_series_instance_uid"]);
    assert_eq!(pet["needs_registration"], true, "misaligned PET has its own frame of reference");
    // The NIfTI truth files are reported as skipped, not as series.
    assert!(report["skipped_files"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("truth")));

    std::fs::remove_file(&pt[pt.len() / 2]).unwrap();
    let report = inspect(dir.path());
    let pet = report["series"].as_array().unwrap().iter().find(|s| s["modality"] == "PT").unwrap().clone();
    assert_eq!(pet["complete"], false);
    let warnings = pet["warnings"].to_string();
    assert!(warnings.contains("missing slice") && warnings.contains("PET slices"), "{warnings}");
}

#[test]
fn signed_pixels_and_per_slice_rescale_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let files = series(dir.path(), 3, |i, o| {
        o.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(1u16)));
        // -500 as a 16-bit two's complement word, with a slope that differs per slice (as PET has).
        o.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(vec![(-500i16) as u16; 256].into())));
        o.put(DataElement::new(tags::RESCALE_SLOPE, VR::DS, PrimitiveValue::from(format!("{}", i + 1))));
    });
    let s = assemble(&files).unwrap();
    // Sorted along +z, slice k is instance 2 - k: value = -500 * (3 - k) - 1024.
    for k in 0..3 {
        assert!(s.volume.slice(k).iter().all(|v| *v == -500.0 * (3 - k) as f32 - 1024.0), "slice {k}");
    }
}
