//! `petct-node evaluate` on hand-made masks whose Dice, false-positive and false-negative
//! volumes, lesion-wise sensitivity and precision are known by hand, and on the DICOM-SEG that
//! `petct-node run` writes for a phantom study.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assert_success, bin};
use petct_node::volume::Geometry;
use serde_json::Value;

/// 40 x 30 x 20 voxels of 2 x 2 x 3 mm: 12 mm³ = 0.012 mL a voxel.
const DIMS: [usize; 3] = [40, 30, 20];
const VOXEL_ML: f64 = 2.0 * 2.0 * 3.0 / 1000.0;

fn grid() -> Geometry {
    Geometry {
        dims: DIMS,
        spacing_mm: [2.0, 2.0, 3.0],
        origin_mm: [-40.0, -30.0, -100.0],
        direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        frame_of_reference_uid: None,
    }
}

/// A box `[x0, x1) x [y0, y1) x [z0, z1)`.
type Cuboid = [usize; 6];

fn voxels(b: &Cuboid) -> usize {
    (b[1] - b[0]) * (b[3] - b[2]) * (b[5] - b[4])
}

/// A mask with `value` in the given boxes.
fn mask(boxes: &[Cuboid], value: u8) -> Vec<u8> {
    let [nx, ny, nz] = DIMS;
    let mut m = vec![0u8; nx * ny * nz];
    for b in boxes {
        for z in b[4]..b[5] {
            for y in b[2]..b[3] {
                for x in b[0]..b[1] {
                    m[(z * ny + y) * nx + x] = value;
                }
            }
        }
    }
    m
}

fn write_mask(path: &Path, g: &Geometry, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    petct_node::nifti::write(path, g, data, "test mask").unwrap();
}

fn evaluate(pred: &Path, reference: &Path, extra: &[&str]) -> Output {
    Command::new(bin()).args(["evaluate", "--pred"]).arg(pred).arg("--ref").arg(reference).args(extra).output().unwrap()
}

fn evaluate_json(pred: &Path, reference: &Path, extra: &[&str]) -> Value {
    let out = evaluate(pred, reference, &[&["--json"], extra].concat());
    assert_success(&out, "petct-node evaluate --json");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn pair<'a>(json: &'a Value, table: &str, keys: &[(&str, &str)]) -> &'a Value {
    json[table]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| keys.iter().all(|(k, v)| r[*k] == *v))
        .unwrap_or_else(|| panic!("no {table} row {keys:?} in {json:#}"))
}

#[track_caller]
fn close(value: &Value, expected: f64) {
    let v = value.as_f64().unwrap_or_else(|| panic!("{value} is not a number, expected {expected}"));
    assert!((v - expected).abs() <= 1e-12 * expected.abs().max(1.0), "{v} vs {expected}");
}

/// Sample standard deviation (n - 1).
fn sample_sd(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

// Patient p1: the reference has cubes A (5x5x5) and B (3x3x3); the model finds A shifted by
// two voxels along x (overlap 3x5x5) and a disjoint C (4x2x2) where there is nothing.
const A: Cuboid = [5, 10, 5, 10, 5, 10];
const B: Cuboid = [25, 28, 20, 23, 10, 13];
const A_SHIFTED: Cuboid = [7, 12, 5, 10, 5, 10];
const C: Cuboid = [30, 34, 2, 4, 15, 17];
const A_OVERLAP: usize = 3 * 5 * 5;
// Patient p2: one cube D, found exactly.
const D: Cuboid = [10, 14, 10, 14, 2, 6];
// Patient p3: nothing in the reference, a 2x2x2 cube E in the prediction.
const E: Cuboid = [20, 22, 20, 22, 8, 10];

/// PRED and REF for three patients, one folder on each side without a namesake, and a second
/// prediction source (`empty`, an empty mask) in p1 only.
fn three_patients(root: &Path) -> (PathBuf, PathBuf) {
    let (pred, reference) = (root.join("pred"), root.join("ref"));
    let g = grid();
    // Label values other than 1 are foreground too.
    write_mask(&reference.join("p1/truth.nii.gz"), &g, &mask(&[A, B], 3));
    write_mask(&pred.join("p1/model.nii.gz"), &g, &mask(&[A_SHIFTED, C], 1));
    write_mask(&pred.join("p1/empty.nii.gz"), &g, &mask(&[], 1));
    write_mask(&reference.join("p2/truth.nii.gz"), &g, &mask(&[D], 1));
    write_mask(&pred.join("p2/model.nii.gz"), &g, &mask(&[D], 255));
    write_mask(&reference.join("p3/truth.nii.gz"), &g, &mask(&[], 1));
    write_mask(&pred.join("p3/model.nii.gz"), &g, &mask(&[E], 1));
    write_mask(&pred.join("p9/model.nii.gz"), &g, &mask(&[E], 1));
    write_mask(&reference.join("p8/truth.nii.gz"), &g, &mask(&[D], 1));
    (pred, reference)
}

#[test]
fn hand_made_masks_give_the_metrics_computed_by_hand() {
    let work = tempfile::tempdir().unwrap();
    let (pred, reference) = three_patients(work.path());
    let out_dir = work.path().join("out");
    let json = evaluate_json(&pred, &reference, &["--out", out_dir.to_str().unwrap()]);
    assert_eq!(json["connectivity"], 18);
    assert_eq!(json["unmatched"], serde_json::json!({"pred_only": ["p9"], "ref_only": ["p8"]}));
    assert_eq!(json["matched"], serde_json::json!(["p1", "p2", "p3"]));
    assert_eq!(json["pred_sources"], serde_json::json!(["empty", "model"]));
    assert_eq!(json["ref_sources"], serde_json::json!(["truth"]));

    // Per patient.
    let (a, b, a2, c) = (voxels(&A), voxels(&B), voxels(&A_SHIFTED), voxels(&C));
    let dice_p1 = 2.0 * A_OVERLAP as f64 / (a2 + c + a + b) as f64;
    assert_eq!(dice_p1, 150.0 / 293.0);
    let p1 = pair(&json, "patients", &[("patient", "p1"), ("pred", "model"), ("ref", "truth")]);
    close(&p1["dice"], dice_p1);
    close(&p1["fpv_ml"], c as f64 * VOXEL_ML);
    close(&p1["fnv_ml"], b as f64 * VOXEL_ML);
    close(&p1["sensitivity"], 0.5);
    close(&p1["precision"], 0.5);
    close(&p1["ref_ml"], (a + b) as f64 * VOXEL_ML);
    close(&p1["pred_ml"], (a2 + c) as f64 * VOXEL_ML);
    assert_eq!((p1["ref_components"].as_u64(), p1["pred_components"].as_u64()), (Some(2), Some(2)));
    let p2 = pair(&json, "patients", &[("patient", "p2"), ("pred", "model")]);
    for (k, v) in [("dice", 1.0), ("fpv_ml", 0.0), ("fnv_ml", 0.0), ("sensitivity", 1.0), ("precision", 1.0)] {
        close(&p2[k], v);
    }
    // An empty reference scores only the false-positive volume.
    let p3 = pair(&json, "patients", &[("patient", "p3"), ("pred", "model")]);
    close(&p3["fpv_ml"], voxels(&E) as f64 * VOXEL_ML);
    assert_eq!((&p3["dice"], &p3["fnv_ml"], &p3["sensitivity"]), (&Value::Null, &Value::Null, &Value::Null));
    close(&p3["precision"], 0.0);
    assert_eq!(p3["ref_components"], 0);
    // An empty prediction: Dice 0, everything missed, no precision.
    let empty = pair(&json, "patients", &[("patient", "p1"), ("pred", "empty")]);
    close(&empty["dice"], 0.0);
    close(&empty["fpv_ml"], 0.0);
    close(&empty["fnv_ml"], (a + b) as f64 * VOXEL_ML);
    close(&empty["sensitivity"], 0.0);
    assert_eq!(empty["precision"], Value::Null);
    assert_eq!(json["patients"].as_array().unwrap().len(), 4);

    // Mean ± SD over patients: Dice and FNV over p1 and p2 (p3 has an empty reference), FPV and
    // precision over all three.
    let s = pair(&json, "summary", &[("pred", "model"), ("ref", "truth")]);
    assert_eq!((s["n"].as_u64(), s["n_dice"].as_u64(), s["n_fpv"].as_u64()), (Some(3), Some(2), Some(3)));
    close(&s["dice_mean"], (dice_p1 + 1.0) / 2.0);
    close(&s["dice_sd"], (1.0 - dice_p1) / 2f64.sqrt());
    let fpv = [c as f64 * VOXEL_ML, 0.0, voxels(&E) as f64 * VOXEL_ML];
    close(&s["fpv_ml_mean"], fpv.iter().sum::<f64>() / 3.0);
    // 0.192, 0 and 0.096 mL: mean 0.096, deviations ±0.096 and 0, SD 0.096.
    close(&s["fpv_ml_sd"], 0.096);
    close(&s["fpv_ml_sd"], sample_sd(&fpv));
    close(&s["fnv_ml_mean"], b as f64 * VOXEL_ML / 2.0);
    close(&s["fnv_ml_sd"], b as f64 * VOXEL_ML / 2f64.sqrt());
    assert_eq!(s["n_fnv"], 2);
    close(&s["sensitivity_mean"], 0.75);
    close(&s["sensitivity_sd"], 0.5 / 2f64.sqrt());
    close(&s["precision_mean"], 0.5);
    close(&s["precision_sd"], 0.5);
    assert_eq!(s["n_precision"], 3);
    // A source in one patient only: n = 1, no SD, no precision at all.
    let e = pair(&json, "summary", &[("pred", "empty"), ("ref", "truth")]);
    assert_eq!((e["n"].as_u64(), e["dice_sd"].clone(), e["n_precision"].as_u64()), (Some(1), Value::Null, Some(0)));
    close(&e["dice_mean"], 0.0);
    assert_eq!(e["precision_mean"], Value::Null);
    assert!(json["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("p2: PRED has no empty")));

    // The files of --out.
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap();
    let file_json: Value = serde_json::from_str(&read("evaluation.json")).unwrap();
    assert_eq!(file_json, json);
    let summary = read("summary.csv");
    let lines: Vec<&str> = summary.lines().collect();
    assert_eq!(lines.len(), 3, "{summary}");
    assert!(lines[0].starts_with("pred,ref,n,dice_mean,dice_sd,n_dice,fpv_ml_mean,fpv_ml_sd,n_fpv,fnv_ml_mean"));
    let row: Vec<&str> = lines.iter().find(|l| l.starts_with("model,truth,")).unwrap().split(',').collect();
    assert_eq!(row[2], "3");
    assert!((row[3].parse::<f64>().unwrap() - (dice_p1 + 1.0) / 2.0).abs() < 1e-12, "{row:?}");
    assert_eq!(lines.iter().find(|l| l.starts_with("empty,")).unwrap().split(',').nth(4), Some(""));
    let patients = read("patients.csv");
    assert_eq!(patients.lines().count(), 1 + 4, "{patients}");
    assert!(patients.starts_with("patient,pred,ref,dice,fpv_ml,fnv_ml,sensitivity,precision,ref_ml,pred_ml"));
    assert!(patients.lines().any(|l| l.starts_with("p3,model,truth,,")), "{patients}");
    check_png(&out_dir.join("matrix.png"), 2, 1);

    // The default table.
    let out = evaluate(&pred, &reference, &[]);
    assert_success(&out, "petct-node evaluate");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("warning: patient folder p9 is only in PRED"), "{text}");
    assert!(text.contains("warning: patient folder p8 is only in REF"), "{text}");
    let model = text.lines().find(|l| l.starts_with("model ")).unwrap();
    let cells: Vec<&str> = model.split_whitespace().collect();
    assert_eq!(&cells[..3], ["model", "truth", "3"], "{text}");
    assert!(model.contains(&format!("{:.3} ± {:.3} [n=2]", (dice_p1 + 1.0) / 2.0, (1.0 - dice_p1) / 2f64.sqrt())));
}

/// A PNG of plausible size: its signature and header, decoded in full, with more than a few
/// colours (the heat map, not a blank page).
fn check_png(path: &Path, rows: usize, cols: usize) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let (w, h) = (info.width as usize, info.height as usize);
    assert!(w >= 200 + 150 * cols && w < 4000, "width {w}");
    assert!(h >= 100 + 40 * rows && h < 4000, "height {h}");
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(3).collect();
    assert!(colours.len() > 20, "{} colours", colours.len());
}

#[test]
fn edge_contact_is_one_lesion_at_18_connectivity_and_two_at_6() {
    let work = tempfile::tempdir().unwrap();
    let (pred, reference) = (work.path().join("pred"), work.path().join("ref"));
    // Two voxels sharing only an edge (diagonal in one slice); the prediction finds one.
    write_mask(&reference.join("p/truth.nii.gz"), &grid(), &mask(&[[5, 6, 5, 6, 5, 6], [6, 7, 6, 7, 5, 6]], 1));
    write_mask(&pred.join("p/model.nii.gz"), &grid(), &mask(&[[5, 6, 5, 6, 5, 6]], 1));
    let at = |c: &str| {
        let json = evaluate_json(&pred, &reference, &["--connectivity", c]);
        assert_eq!(json["connectivity"], c.parse::<u64>().unwrap());
        pair(&json, "patients", &[("patient", "p")]).clone()
    };
    let (e18, e6) = (at("18"), at("6"));
    assert_eq!((e18["ref_components"].as_u64(), e6["ref_components"].as_u64()), (Some(1), Some(2)));
    close(&e18["sensitivity"], 1.0);
    close(&e6["sensitivity"], 0.5);
    close(&e18["fnv_ml"], 0.0);
    close(&e6["fnv_ml"], VOXEL_ML);
    close(&e18["dice"], 2.0 / 3.0);
    close(&e6["dice"], 2.0 / 3.0);
    assert_eq!(at("26")["ref_components"], 1);
    let out = evaluate(&pred, &reference, &["--connectivity", "8"]);
    assert_eq!(out.status.code(), Some(2));
}

#[track_caller]
fn input_error(out: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "{e:?} not in {stderr}");
    }
}

#[test]
fn masks_on_other_grids_are_refused_with_both_files_named() {
    let work = tempfile::tempdir().unwrap();
    let (pred, reference) = (work.path().join("pred"), work.path().join("ref"));
    write_mask(&reference.join("p1/truth.nii.gz"), &grid(), &mask(&[D], 1));
    let mut shifted = grid();
    shifted.origin_mm[1] += 0.5;
    write_mask(&pred.join("p1/model.nii.gz"), &shifted, &mask(&[D], 1));
    let out = evaluate(&pred, &reference, &[]);
    input_error(&out, &["p1", "pred/p1/model.nii.gz", "ref/p1/truth.nii.gz", "differ by up to 0.5000 mm"]);

    let mut larger = grid();
    larger.dims[2] += 1;
    let data = vec![0u8; DIMS[0] * DIMS[1] * (DIMS[2] + 1)];
    write_mask(&pred.join("p1/model.nii.gz"), &larger, &data);
    input_error(&evaluate(&pred, &reference, &[]), &["model.nii.gz", "40x30x21", "40x30x20"]);
}

#[test]
fn two_sources_of_one_name_and_no_matching_patient_are_errors() {
    let work = tempfile::tempdir().unwrap();
    let (pred, reference) = (work.path().join("pred"), work.path().join("ref"));
    write_mask(&reference.join("p1/truth.nii.gz"), &grid(), &mask(&[D], 1));
    write_mask(&pred.join("p1/model.nii.gz"), &grid(), &mask(&[D], 1));
    std::fs::copy(pred.join("p1/model.nii.gz"), pred.join("p1/model.nii")).unwrap();
    input_error(&evaluate(&pred, &reference, &[]), &["p1", "\"model\"", "model.nii.gz", "model.nii "]);

    std::fs::remove_file(pred.join("p1/model.nii")).unwrap();
    std::fs::rename(pred.join("p1"), pred.join("p2")).unwrap();
    input_error(&evaluate(&pred, &reference, &[]), &["no patient folder of", "has a namesake"]);
    input_error(&evaluate(&work.path().join("nowhere"), &reference, &[]), &["nowhere"]);
}

/// The uncompressed voxels of a u8 NIfTI written by the node (352-byte header).
fn nifti_u8(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()), &mut bytes)
        .unwrap();
    assert_eq!(i16::from_le_bytes([bytes[70], bytes[71]]), 2, "{}: not u8", path.display());
    bytes.split_off(352)
}

/// Component sizes and, for each, whether it touches `other`: a plain flood fill over the 18
/// face and edge neighbours, independent of the node's run-based labelling.
fn components_18(m: &[u8], other: &[u8], dims: [usize; 3]) -> Vec<(usize, bool)> {
    let [nx, ny, nz] = dims;
    let mut seen = vec![false; m.len()];
    let mut out = Vec::new();
    for start in 0..m.len() {
        if m[start] == 0 || seen[start] {
            continue;
        }
        seen[start] = true;
        let (mut stack, mut size, mut touches) = (vec![start], 0, false);
        while let Some(v) = stack.pop() {
            size += 1;
            touches |= other[v] != 0;
            let (x, y, z) = ((v % nx) as i64, ((v / nx) % ny) as i64, (v / (nx * ny)) as i64);
            for dz in -1..=1i64 {
                for dy in -1..=1i64 {
                    for dx in -1..=1i64 {
                        let nonzero = [dx, dy, dz].iter().filter(|d| **d != 0).count();
                        let (a, b, c) = (x + dx, y + dy, z + dz);
                        if nonzero == 0 || nonzero == 3 || a < 0 || b < 0 || c < 0 {
                            continue;
                        }
                        if a >= nx as i64 || b >= ny as i64 || c >= nz as i64 {
                            continue;
                        }
                        let w = ((c as usize * ny) + b as usize) * nx + a as usize;
                        if m[w] != 0 && !seen[w] {
                            seen[w] = true;
                            stack.push(w);
                        }
                    }
                }
            }
        }
        out.push((size, touches));
    }
    out
}

#[test]
fn a_dicom_seg_segment_is_evaluated_like_the_mask_it_encodes() {
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    common::write_phantom(&study, &["--profile", "small", "--seed", "5"]);
    let run_dir = work.path().join("run");
    let out = Command::new(bin()).arg("run").arg(&study).arg("--out").arg(&run_dir).arg("--export-volumes").output();
    assert_success(&out.unwrap(), "petct-node run");
    let (pred, reference) = (work.path().join("pred/p1"), work.path().join("ref/p1"));
    std::fs::create_dir_all(&pred).unwrap();
    std::fs::create_dir_all(&reference).unwrap();
    for (from, to) in [
        (run_dir.join("seg.dcm"), pred.join("seg.dcm")),
        (run_dir.join("mask.nii.gz"), pred.join("mask.nii.gz")),
        (run_dir.join("mask.nii.gz"), reference.join("mask.nii.gz")),
        (study.join("truth/lesions.nii.gz"), reference.join("lesions.nii.gz")),
    ] {
        std::fs::copy(from, to).unwrap();
    }
    let out_dir = work.path().join("out");
    let json =
        evaluate_json(&work.path().join("pred"), &work.path().join("ref"), &["--out", out_dir.to_str().unwrap()]);
    // The SEG's one segment is named by its Segment Label.
    assert_eq!(json["pred_sources"], serde_json::json!(["Lesions (classical)", "mask"]));
    assert_eq!(json["ref_sources"], serde_json::json!(["lesions", "mask"]));
    let seg = "Lesions (classical)";
    let same = pair(&json, "patients", &[("pred", seg), ("ref", "mask")]);
    assert_eq!(
        (&same["dice"], &same["fpv_ml"], &same["fnv_ml"]),
        (&Value::from(1.0), &Value::from(0.0), &Value::from(0.0))
    );
    assert!(same["ref_components"].as_u64().unwrap() > 0);

    // Against the truth: what the NIfTI mask gives, and what a flood fill computes here.
    let from_seg = pair(&json, "patients", &[("pred", seg), ("ref", "lesions")]);
    let from_nifti = pair(&json, "patients", &[("pred", "mask"), ("ref", "lesions")]);
    for k in ["dice", "fpv_ml", "fnv_ml", "sensitivity", "precision", "ref_components", "pred_components"] {
        assert_eq!(from_seg[k], from_nifti[k], "{k}");
    }
    let (m, t) = (nifti_u8(&run_dir.join("mask.nii.gz")), nifti_u8(&study.join("truth/lesions.nii.gz")));
    let dims = [128, 128, 48];
    assert_eq!(m.len(), 128 * 128 * 48);
    let voxel_ml = 3.90625 * 3.90625 * 13.0 / 1000.0;
    let (pm, tm) = (m.iter().filter(|&&v| v != 0).count(), t.iter().filter(|&&v| v != 0).count());
    let both = m.iter().zip(&t).filter(|(a, b)| **a != 0 && **b != 0).count();
    assert!(both > 0 && tm > both, "the phantom should be partly found: {both} of {tm}");
    close(&from_seg["dice"], 2.0 * both as f64 / (pm + tm) as f64);
    let (pc, tc) = (components_18(&m, &t, dims), components_18(&t, &m, dims));
    let missed = |c: &[(usize, bool)]| c.iter().filter(|(_, hit)| !hit).map(|(s, _)| s).sum::<usize>();
    assert!((from_seg["fpv_ml"].as_f64().unwrap() - missed(&pc) as f64 * voxel_ml).abs() < 1e-9);
    assert!((from_seg["fnv_ml"].as_f64().unwrap() - missed(&tc) as f64 * voxel_ml).abs() < 1e-9);
    assert_eq!(from_seg["ref_components"], tc.len());
    assert_eq!(from_seg["pred_components"], pc.len());
    let hits = |c: &[(usize, bool)]| c.iter().filter(|(_, hit)| *hit).count() as f64;
    close(&from_seg["sensitivity"], hits(&tc) / tc.len() as f64);
    close(&from_seg["precision"], hits(&pc) / pc.len() as f64);

    let s = pair(&json, "summary", &[("pred", seg), ("ref", "mask")]);
    assert_eq!((s["n"].as_u64(), s["dice_mean"].as_f64(), s["dice_sd"].clone()), (Some(1), Some(1.0), Value::Null));
    assert_eq!((s["fpv_ml_mean"].as_f64(), s["fnv_ml_mean"].as_f64()), (Some(0.0), Some(0.0)));
    let summary = std::fs::read_to_string(out_dir.join("summary.csv")).unwrap();
    assert!(summary.lines().any(|l| l.starts_with("Lesions (classical),mask,1,1,,1,0,,1,0,,1,")), "{summary}");
    assert_eq!(summary.lines().count(), 1 + 4);
    check_png(&out_dir.join("matrix.png"), 2, 2);
}
