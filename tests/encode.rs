//! The encode stage on a `small` phantom, checked by independent readers: dciodvfy for every
//! object, highdicom and pydicom (tests/py/encode_check.py) for the SEG's mask voxel for voxel
//! and the SR's measurements value for value, the png crate and dicom-rs for the MIP.

mod common;
#[path = "common/encode_fixture.rs"]
mod fixture;

use std::path::Path;
use std::process::Command;

use common::*;
use dicom_dictionary_std::tags;
use petct_node::encode::{self, Encoded};

const VERSION: &str = "petct-node test 1; threshold 1";

fn phantom(dir: &Path, seed: &str) {
    let out =
        Command::new(bin()).args(["phantom", "--profile", "small", "--seed", seed, "--out"]).arg(dir).output().unwrap();
    assert_success(&out, "phantom");
}

fn encode_with(f: &fixture::Fixture, version: &str) -> Encoded {
    encode::encode(&f.input(version)).expect("encode")
}

/// Writes the objects and what the Python check compares them with.
fn write(dir: &Path, f: &fixture::Fixture, e: &Encoded) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in [("seg.dcm", &e.seg), ("sr.dcm", &e.sr), ("mip.dcm", &e.mip), ("mip.png", &e.mip_png)] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    for s in &f.segments {
        std::fs::write(dir.join(format!("mask_{}.bin", s.number)), s.mask.data()).unwrap();
    }
    let ct_uids: Vec<String> =
        f.ct.headers
            .iter()
            .map(|h| h.get(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0').to_string())
            .collect();
    let expected = serde_json::json!({
        "dims": f.ct.volume.geometry().dims,
        "ct_sop_instance_uids": ct_uids,
        "segments": f.segments.iter().map(|s| s.number).collect::<Vec<_>>(),
        "findings": f.findings,
        "uids": e.uids,
    });
    std::fs::write(dir.join("expected.json"), serde_json::to_vec_pretty(&expected).unwrap()).unwrap();
}

fn check_with_dciodvfy(dir: &Path) {
    for name in ["seg.dcm", "sr.dcm", "mip.dcm"] {
        let errors = dciodvfy_errors(&dir.join(name));
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
}

fn python_check(dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/encode_check.py");
    let out = Command::new("python3").arg(script).arg(dir).output().unwrap();
    assert_success(&out, "highdicom check (pip install highdicom)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("highdicom/pydicom check: {report}");
    report
}

/// The MIP: the PNG and the Secondary Capture hold the same picture, square pixels, in the
/// study of the CT.
fn check_mip(dir: &Path, e: &Encoded, f: &fixture::Fixture) {
    let decoder = png::Decoder::new(std::io::Cursor::new(&e.mip_png));
    let mut reader = decoder.read_info().unwrap();
    let mut png_rgb = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut png_rgb).unwrap();
    let sc = dicom_object::open_file(dir.join("mip.dcm")).unwrap();
    let int = |t| sc.get(t).unwrap().to_int::<u32>().unwrap();
    assert_eq!((int(tags::COLUMNS), int(tags::ROWS)), (info.width, info.height));
    let pixels = sc.get(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(&pixels[..png_rgb.len()], &png_rgb[..]);
    let g = f.ct.volume.geometry();
    let spacing: Vec<f64> = sc.get(tags::PIXEL_SPACING).unwrap().to_multi_float64().unwrap();
    assert!((spacing[0] - spacing[1]).abs() / spacing[1] < 0.05, "pixels not square: {spacing:?}");
    assert_eq!(info.width as usize, g.dims[0]);
    let height_mm = (info.height - 1) as f64 * spacing[0];
    assert!((height_mm - (g.dims[2] - 1) as f64 * g.spacing_mm[2]).abs() < 1e-6);
    let study =
        |o: &dicom_object::DefaultDicomObject| o.get(tags::STUDY_INSTANCE_UID).unwrap().to_str().unwrap().to_string();
    assert_eq!(study(&sc), study(&f.ct.headers[0]));
    // Lesions are outlined in colour: some pixels are not grey, exactly when there are lesions.
    let coloured = png_rgb.chunks_exact(3).filter(|p| p[0] != p[1] || p[1] != p[2]).count();
    assert_eq!(coloured > 0, !f.findings.lesions.is_empty(), "{coloured} coloured pixels");
}

#[test]
fn seg_sr_and_mip_are_valid_and_read_back_exactly() {
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    phantom(&study, "31");
    let (ct, pet, suv) = fixture::load(&study);
    let f = fixture::build(ct, pet, suv, false);
    assert!(f.findings.lesion_count >= 2, "the fixture should find lesions: {}", f.findings.lesion_count);
    let e = encode_with(&f, VERSION);
    let dir = work.path().join("out");
    write(&dir, &f, &e);

    check_with_dciodvfy(&dir);
    let report = python_check(&dir);
    assert_eq!(report["mask_mismatches_highdicom"], 0, "{report}");
    assert_eq!(report["mask_mismatches_pydicom"], 0, "{report}");
    assert!(report["foreground_voxels"].as_u64().unwrap() > 100, "{report}");
    assert_eq!(report["frames_in_slice_order"], true, "{report}");
    assert_eq!(report["sr_lesion_groups"], f.findings.lesion_count, "{report}");
    assert_eq!(report["measurement_mismatches"], serde_json::json!([]), "{report}");
    assert_eq!(report["measurements_compared"], f.findings.lesion_count * 6 + 4, "{report}"); // 5 numbers and "detected by" per lesion, the totals
    check_mip(&dir, &e, &f);

    // A re-run gives the same objects, byte for byte; a new algorithm version new UIDs.
    let again = encode_with(&f, VERSION);
    assert_eq!(again.uids, e.uids);
    assert!(again.seg == e.seg && again.sr == e.sr && again.mip == e.mip && again.mip_png == e.mip_png);
    let other = encode_with(&f, "petct-node test 2; threshold 1");
    assert_ne!(other.uids.seg_instance, e.uids.seg_instance);
    assert_ne!(other.uids.sr_series, e.uids.sr_series);
}

#[test]
fn an_empty_segmentation_still_gives_valid_objects() {
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    phantom(&study, "32");
    let (ct, pet, suv) = fixture::load(&study);
    let f = fixture::build(ct, pet, suv, true);
    assert_eq!(f.findings.lesion_count, 0);
    let e = encode_with(&f, VERSION);
    let dir = work.path().join("out");
    write(&dir, &f, &e);
    check_with_dciodvfy(&dir);
    let report = python_check(&dir);
    assert_eq!(report["seg_frames"], 1, "one empty frame: {report}");
    assert_eq!(report["mask_mismatches_highdicom"], 0, "{report}");
    assert_eq!(report["mask_mismatches_pydicom"], 0, "{report}");
    assert_eq!(report["foreground_voxels"], 0, "{report}");
    assert_eq!(report["sr_lesion_groups"], 0, "{report}");
    assert_eq!(report["measurement_mismatches"], serde_json::json!([]), "{report}");
    check_mip(&dir, &e, &f);
}
