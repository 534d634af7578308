//! Rigid registration on misaligned phantoms: the target registration error at every lesion
//! centre in `truth.json`, between where the phantom really put it in the PET frame and where
//! the found transform maps it.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use petct_node::assemble::assemble;
use petct_node::geometry::registration::{RegistrationOptions, register_rigid};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

fn apply(m: &serde_json::Value, p: [f64; 3]) -> [f64; 3] {
    let at = |r: usize, c: usize| m[r][c].as_f64().unwrap();
    std::array::from_fn(|r| at(r, 0) * p[0] + at(r, 1) * p[1] + at(r, 2) * p[2] + at(r, 3))
}

/// Registers one phantom misaligned by `misalign` and returns the TRE (mm) at every lesion.
fn lesion_tre(profile: &str, seed: &str, misalign: &str, extra: &[&str]) -> Vec<f64> {
    let work = tempfile::tempdir().unwrap();
    let study = work.path().join("study");
    let (_, truth) =
        write_phantom(&study, &[&["--profile", profile, "--seed", seed, "--misalign", misalign], extra].concat());
    let ct = assemble(&files(&study.join("CT"))).unwrap();
    let pet = assemble(&files(&study.join("PT"))).unwrap();
    let mut options = RegistrationOptions::default();
    // REG_PYRAMID, REG_SAMPLES_ALL, REG_FINAL_SAMPLES: try other options (to tune the defaults).
    if let Ok(p) = std::env::var("REG_PYRAMID") {
        options.pyramid_sigma_mm = p.split(',').map(|x| x.parse().unwrap()).collect();
    }
    if let Ok(p) = std::env::var("REG_SAMPLES_ALL") {
        options.samples = p.parse().unwrap();
    }
    if let Ok(p) = std::env::var("REG_FINAL_SAMPLES") {
        options.final_samples = p.parse().unwrap();
    }
    // REG_SCAN=1: print the metric along tz around the truth, on samples drawn at the truth
    // (REG_SIGMAS, REG_BINS, REG_SAMPLES, REG_MARGIN override the options).
    if std::env::var("REG_SCAN").is_ok() {
        let v: Vec<f64> = misalign.split(',').map(|x| x.parse().unwrap()).collect();
        let env = |k: &str| std::env::var(k).ok();
        let mut o = options.clone();
        o.initial_angles_deg = [v[3], v[4], v[5]];
        o.initial_translation_mm = [v[0], v[1], v[2]];
        if let Some(b) = env("REG_BINS") {
            o.bins = b.parse().unwrap();
        }
        if let Some(b) = env("REG_SAMPLES") {
            o.samples = b.parse().unwrap();
        }
        if let Some(b) = env("REG_MARGIN") {
            o.edge_margin_mm = b.parse().unwrap();
        }
        let sigmas: Vec<f64> =
            env("REG_SIGMAS").unwrap_or("8,2".into()).split(',').map(|x| x.parse().unwrap()).collect();
        for sigma in sigmas {
            let mut line = format!("sigma {sigma} tz:");
            for d in [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5] {
                let mi = petct_node::geometry::registration::mutual_information_at(
                    &ct.volume,
                    &pet.volume,
                    sigma,
                    [v[3], v[4], v[5]],
                    [v[0], v[1], v[2] + d],
                    &o,
                )
                .unwrap();
                line += &format!(" {d}:{mi:.5}");
            }
            eprintln!("{line}");
        }
        if env("REG_ONLY_SCAN").is_some() {
            return vec![];
        }
    }
    let reg = register_rigid(&ct.volume, &pet.volume, &options).unwrap();
    eprintln!("{:?}", reg.levels);
    let matrix = &truth["misalignment"]["matrix_ct_to_pet"];
    let lesions = truth["lesions"].as_array().unwrap();
    assert!(!lesions.is_empty());
    let tre: Vec<f64> = lesions
        .iter()
        .map(|l| {
            let c: [f64; 3] = std::array::from_fn(|i| l["centre_mm"][i].as_f64().unwrap());
            let (expected, found) = (apply(matrix, c), reg.transform.apply(c));
            (0..3).map(|i| (expected[i] - found[i]).powi(2)).sum::<f64>().sqrt()
        })
        .collect();
    eprintln!(
        "{profile} seed {seed} misalign {misalign}: TRE mm max {:.2} mean {:.2} over {} lesions {:?}; found angles {:?} deg \
         translation {:?} mm; MI {:.4} -> {:.4}; {} iterations in {:.2} s",
        tre.iter().cloned().fold(0.0, f64::max),
        tre.iter().sum::<f64>() / tre.len() as f64,
        tre.len(),
        tre.iter().map(|t| (t * 100.0).round() / 100.0).collect::<Vec<_>>(),
        reg.angles_deg,
        reg.translation_mm,
        reg.metric_initial,
        reg.metric_final,
        reg.iterations,
        reg.seconds
    );
    tre
}

/// `small` has 13 mm slices (CT and PET) and 8 mm PET pixels: too coarse for 2 mm in z, so the
/// accuracy cases use `wholebody` cut to 120 slices (3 mm CT slices, 4 mm PET pixels).
/// The bound is below elastix's worst lesion TRE on the first three cases (1.18 to 1.28 mm,
/// BENCHMARKS.md, `bench/registration_vs_elastix.py`); ours measured 0.25 to 0.84 mm on these
/// four (elastix 0.36 mm on the last, ours 0.35).
fn check(seed: &str, misalign: &str) {
    let tre = lesion_tre("wholebody", seed, misalign, &["--slices", "120"]);
    let worst = tre.iter().cloned().fold(0.0, f64::max);
    assert!(worst < 1.0, "{misalign}: worst lesion TRE {worst:.2} mm >= 1.0 mm: {tre:?}");
}

#[test]
fn translation_and_rotation() {
    check("31", "10,-5,8,2,0,3");
}

#[test]
fn twenty_mm_and_five_degrees() {
    check("32", "20,0,0,0,0,5");
}

#[test]
fn all_axes() {
    check("33", "-15,12,-6,4,-3,0");
}

#[test]
fn rotations_about_x_and_y_another_seed() {
    check("34", "5,10,-12,-3,4,2");
}

/// The coarse `small` profile: figures printed for the report, only a loose bound checked.
#[test]
fn small_profile_is_within_a_pet_voxel() {
    for (seed, misalign) in [("31", "10,-5,8,2,0,3"), ("32", "20,0,0,0,0,5"), ("33", "-15,12,-6,4,-3,0")] {
        let tre = lesion_tre("small", seed, misalign, &[]);
        let worst = tre.iter().cloned().fold(0.0, f64::max);
        assert!(worst < 8.0, "small {misalign}: worst lesion TRE {worst:.2} mm: {tre:?}");
    }
}
