//! `petct-node run` end to end on phantoms, checked by independent readers (SimpleITK, pydicom).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn phantom(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let out =
        Command::new(bin()).args(["phantom", "--profile", "small", "--out"]).arg(dir).args(extra).output().unwrap();
    assert_success(&out, "phantom");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn exported_volumes_match_simpleitk_and_the_dicom_geometry() {
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    let summary = phantom(&study, &["--seed", "21"]);
    let out_dir = work.path().join("out");
    let out = Command::new(bin())
        .args(["run"])
        .arg(&study)
        .arg("--out")
        .arg(&out_dir)
        .arg("--export-volumes")
        .output()
        .unwrap();
    assert_success(&out, "run");
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(run["pet_series_uid"], summary["pt_series_instance_uid"]);
    assert_eq!(run["ct_series_uid"], summary["ct_series_instance_uid"]);
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(study.join("truth/truth.json")).unwrap()).unwrap();
    let (ours, expected) = (run["suv_bw_factor"].as_f64().unwrap(), truth["suv_bw_factor"].as_f64().unwrap());
    assert!(((ours - expected) / expected).abs() < 1e-9, "{ours} vs {expected}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/resample_check.py");
    let out = Command::new("python3").arg(script).arg(&out_dir).arg(study.join("CT")).output().unwrap();
    assert_success(&out, "SimpleITK check (pip install SimpleITK)");
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("SimpleITK comparison: {check}");
    assert!(check["max_abs_diff_suv"].as_f64().unwrap() < 1e-3, "{check}");
    assert!(check["voxels_compared"].as_i64().unwrap() > 100_000, "{check}");
    assert_eq!(check["outside_is_zero"], true);
    assert!(check["ct_origin_error_mm"].as_f64().unwrap() < 1e-3, "{check}");
    assert!(check["ct_direction_error"].as_f64().unwrap() < 1e-6, "{check}");
    assert_eq!(check["ct_size"], serde_json::json!([128, 128, 48]));
}

#[test]
fn a_misaligned_study_is_registered_and_reported() {
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    phantom(&study, &["--seed", "22", "--misalign", "10,0,0,0,0,3"]);
    let out_dir = work.path().join("out");
    let out = Command::new(bin()).args(["run"]).arg(&study).arg("--out").arg(&out_dir).output().unwrap();
    assert_success(&out, "run");
    let reg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("registration.json")).unwrap()).unwrap();
    // `small` has 13 mm slices: only the in-plane parameters are checked tightly here; the
    // accuracy cases are in tests/registration.rs.
    assert!((reg["translation_mm"][0].as_f64().unwrap() - 10.0).abs() < 2.0, "{reg}");
    assert!((reg["angles_deg"][2].as_f64().unwrap() - 3.0).abs() < 1.0, "{reg}");
    assert!(reg["metric_final"].as_f64().unwrap() > reg["metric_initial"].as_f64().unwrap(), "{reg}");
    assert_eq!(reg["transform"].as_array().unwrap().len(), 4);
}
