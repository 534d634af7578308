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

/// `petct-node run STUDY --out OUT EXTRA...`.
fn run(study: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(bin()).arg("run").arg(study).arg("--out").arg(out).args(extra).output().unwrap()
}

#[test]
fn exported_volumes_match_simpleitk_and_the_dicom_geometry() {
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    let summary = phantom(&study, &["--seed", "21"]);
    let out_dir = work.path().join("out");
    let out = run(&study, &out_dir, &["--export-volumes"]);
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
    let out = run(&study, &out_dir, &[]);
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

#[test]
fn a_registration_beyond_the_configured_limit_is_an_error_not_output() {
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    phantom(&study, &["--seed", "23", "--misalign", "10,0,0,0,0,0"]);
    let config = work.path().join("node.toml");
    std::fs::write(&config, "[registration]\nmax_translation_mm = 3.0\n").unwrap();
    let out_dir = work.path().join("out");
    let out = run(&study, &out_dir, &["--config", config.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("result rejected") && stderr.contains("exceeds 3 mm"), "{stderr}");
    assert!(!out_dir.join("run.json").exists(), "no output for a rejected registration");
}

/// The `run` outputs of a real study, read by independent tools: dciodvfy finds no error in the
/// SEG, SR or MIP; highdicom and pydicom read the SEG back equal to the exported mask and the SR
/// back equal to `findings.json` (tests/py/encode_check.py).
#[test]
fn run_writes_seg_sr_and_mip_that_read_back_as_findings_json() {
    require_tool("dciodvfy");
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    phantom(&study, &["--seed", "24"]);
    let out_dir = work.path().join("out");
    let out = run(&study, &out_dir, &["--export-volumes"]);
    assert_success(&out, "run");
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for name in ["seg.dcm", "sr.dcm", "mip.dcm"] {
        let out = Command::new("dciodvfy").arg(out_dir.join(name)).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
    assert!(out_dir.join("mip.png").is_file());

    // What the check compares against: the exported mask (NIfTI, u8 after a 352-byte header),
    // the CT's SOP Instance UIDs in the mask's slice order, and findings.json.
    let mut mask = Vec::new();
    let nii = std::fs::File::open(out_dir.join("mask.nii.gz")).unwrap();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(nii), &mut mask).unwrap();
    std::fs::write(out_dir.join("mask_1.bin"), &mask[352..]).unwrap();
    let ct_paths: Vec<_> = std::fs::read_dir(study.join("CT")).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    let plan = petct_node::assemble::plan(&ct_paths).unwrap();
    let ct_uids: Vec<String> = plan.paths().iter().map(|p| sop_uid(p)).collect();
    let findings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("findings.json")).unwrap()).unwrap();
    assert_eq!(findings["lesion_count"], run["lesion_count"]);
    assert!(findings["lesion_count"].as_u64().unwrap() > 0, "the phantom's lesions were not found");
    let expected = serde_json::json!({
        "dims": run["ct_dims"],
        "ct_sop_instance_uids": ct_uids,
        "segments": [1],
        "findings": findings,
        "uids": run["uids"],
    });
    std::fs::write(out_dir.join("expected.json"), serde_json::to_vec(&expected).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/encode_check.py");
    let out = Command::new("python3").arg(script).arg(&out_dir).output().unwrap();
    assert_success(&out, "highdicom check (pip install highdicom)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("highdicom/pydicom check of the run outputs: {report}");
    assert!(report["foreground_voxels"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["mask_mismatches_highdicom"], 0, "{report}");
    assert_eq!(report["mask_mismatches_pydicom"], 0, "{report}");
    assert_eq!(report["frames_in_slice_order"], true, "{report}");
    assert_eq!(report["measurement_mismatches"], serde_json::json!([]), "{report}");
    assert_eq!(report["sr_lesion_groups"], findings["lesion_count"], "{report}");
    let compared = report["measurements_compared"].as_u64().unwrap();
    assert_eq!(compared, 6 * findings["lesion_count"].as_u64().unwrap() + 3, "{report}");
}

#[test]
fn the_model_grid_keeps_the_box_the_activity_and_the_body() {
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    phantom(&study, &["--seed", "23"]);
    let out_dir = work.path().join("out");
    // 8 mm is coarser than the small CT in-plane (3.9 mm, filtered) and finer in z (13 mm).
    assert_success(&run(&study, &out_dir, &["--export-volumes", "--model-spacing", "8"]), "run");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/model_grid_check.py");
    let out = Command::new("python3").arg(script).arg(&out_dir).arg("8").output().unwrap();
    assert_success(&out, "SimpleITK check");
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("model grid: {check}");
    assert_eq!(check["size"], check["expected_size"]);
    assert_eq!(check["spacing"], serde_json::json!([8.0, 8.0, 8.0]));
    assert!(check["corner_error_mm"].as_f64().unwrap() < 1e-3, "{check}");
    assert!(check["direction_error"].as_f64().unwrap() < 1e-6, "{check}");
    let activity = check["activity_ratio"].as_f64().unwrap();
    assert!((activity - 1.0).abs() < 0.02, "activity not preserved: {check}");
    let body = check["body_fraction"].as_f64().unwrap();
    assert!(body > 0.2 && body < 0.9, "{check}");
    assert!(check["hu_outside_body_mean"].as_f64().unwrap() < -800.0, "{check}");
    assert!((check["density_ratio"].as_f64().unwrap() - 1.0).abs() < 0.02, "CT not preserved: {check}");
    // training/nifti.py reads what SimpleITK reads and writes labels SimpleITK reads back.
    let training = &check["training_reader"];
    assert_eq!(training["value_error"], 0.0, "{check}");
    assert!(training["affine_error_mm"].as_f64().unwrap() < 1e-3, "{check}");
    assert_eq!(training["label_mismatches"], 0, "{check}");
    assert_eq!(training["fraction_mismatches"], 0, "{check}");
    assert!(training["label_geometry_error_mm"].as_f64().unwrap() < 1e-3, "{check}");
    // The CT shape channel is scipy's filter (training/blob_channel.py) to float rounding.
    let blob = &check["ct_blob"];
    assert!(blob["max"].as_f64().unwrap() > 1.0, "{check}");
    assert!(blob["error"].as_f64().unwrap() < 1e-3, "{check}");
    assert_eq!(blob["outside_body_max"], 0.0, "{check}");
}
