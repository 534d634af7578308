//! SUVbw factor from real phantom headers: `petct-node phantom` writes PET series with each
//! vendor's conventions and the factor it used in truth/truth.json; `pet_header` +
//! `calibrate` must find the same factor from the DICOM files alone, and name the attribute
//! when one is taken away.

use std::path::Path;
use std::process::Command;

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, open_file};
use petct_node::calibrate::{self, CalibrateError, SuvFactor};
use petct_node::pet_header::series_pet_header;

/// Generate a small phantom with the product binary; returns its directory.
fn phantom(vendor: &str, seed: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_petct-node"))
        .args(["phantom", "--profile", "small", "--vendor", vendor, "--seed", &seed.to_string(), "--out"])
        .arg(dir.path())
        .output()
        .expect("run petct-node phantom");
    assert!(out.status.success(), "phantom {vendor}: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn truth_factor(dir: &Path) -> f64 {
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("truth/truth.json")).expect("truth.json")).expect("json");
    truth["suv_bw_factor"].as_f64().expect("suv_bw_factor in truth.json")
}

fn pet_objects(dir: &Path) -> Vec<InMemDicomObject> {
    let mut paths: Vec<_> = std::fs::read_dir(dir.join("PT"))
        .expect("PT dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no PT files");
    paths.iter().map(|p| open_file(p).expect("open PT").into_inner()).collect()
}

fn factor(objs: &[InMemDicomObject]) -> Result<SuvFactor, CalibrateError> {
    calibrate::suv_bw_factor(&series_pet_header(objs)?)
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

/// The factor from the headers equals the generator's; returns the rule for further checks.
fn check_vendor(vendor: &str, seed: u64) -> String {
    let dir = phantom(vendor, seed);
    let want = truth_factor(dir.path());
    let got = factor(&pet_objects(dir.path())).unwrap_or_else(|e| panic!("{vendor}: {e}"));
    assert!(rel(got.factor, want) < 1e-9, "{vendor}: factor {} vs truth {want} ({})", got.factor, got.rule);
    got.rule
}

#[test]
fn siemens_factor_matches_truth() {
    let rule = check_vendor("siemens", 31);
    assert!(rule.starts_with("BQML, decay START, scan time from Series Date/Time"), "{rule}");
}

#[test]
fn ge_factor_matches_truth_through_the_private_scan_time() {
    // GE's Series Time is after the acquisition: only the private date-time is the scan start.
    let rule = check_vendor("ge", 32);
    assert!(rule.contains("scan time from GE private"), "{rule}");
}

#[test]
fn philips_bqml_factor_matches_truth() {
    let rule = check_vendor("philips-bqml", 33);
    assert!(rule.starts_with("BQML, decay START, scan time from Series Date/Time"), "{rule}");
}

#[test]
fn philips_cnts_factor_matches_truth() {
    let rule = check_vendor("philips-cnts", 34);
    assert!(rule.starts_with("CNTS, Philips SUV Scale Factor (7053,1000)"), "{rule}");
}

#[test]
fn removed_attributes_are_named() {
    let dir = phantom("siemens", 35);
    let objs = pet_objects(dir.path());
    assert!(factor(&objs).is_ok());

    // Radionuclide Total Dose sits in the Radiopharmaceutical Information Sequence item.
    let mut no_dose = objs.clone();
    for o in &mut no_dose {
        assert!(o.update_value(tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE, |v| {
            for item in v.items_mut().expect("sequence").iter_mut() {
                assert!(item.remove_element(tags::RADIONUCLIDE_TOTAL_DOSE));
            }
        }));
    }
    let err = factor(&no_dose).expect_err("no dose");
    assert_eq!(err, CalibrateError::MissingAttribute { name: calibrate::TOTAL_DOSE });
    assert!(err.to_string().contains("Radionuclide Total Dose (0018,1074)"), "{err}");

    for (tag, name) in [
        (tags::PATIENT_WEIGHT, calibrate::WEIGHT),
        (tags::UNITS, calibrate::UNITS),
        (tags::DECAY_CORRECTION, calibrate::DECAY_CORRECTION),
        (tags::CORRECTED_IMAGE, calibrate::CORRECTED_IMAGE),
        (tags::SERIES_DATE, calibrate::SERIES_DATE),
        (tags::ACQUISITION_TIME, calibrate::ACQUISITION_DATE_TIME),
    ] {
        let mut edited = objs.clone();
        for o in &mut edited {
            assert!(o.remove_element(tag), "{name} was not in the phantom");
        }
        assert_eq!(factor(&edited), Err(CalibrateError::MissingAttribute { name }));
    }

    // One slice from another series (different dose) makes the set inconsistent.
    let mut mixed = objs.clone();
    mixed[0].update_value(tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE, |v| {
        for item in v.items_mut().expect("sequence").iter_mut() {
            item.put(dicom_core::DataElement::new(
                tags::RADIONUCLIDE_TOTAL_DOSE,
                dicom_core::VR::DS,
                dicom_core::PrimitiveValue::from("1.0e8"),
            ));
        }
    });
    assert_eq!(factor(&mixed), Err(CalibrateError::InconsistentAcrossInstances { name: calibrate::TOTAL_DOSE }));

    // Without DECY in Corrected Image the pixels are not decay corrected: no SUV.
    let mut no_decy = objs;
    for o in &mut no_decy {
        o.put(dicom_core::DataElement::new(
            tags::CORRECTED_IMAGE,
            dicom_core::VR::CS,
            dicom_core::PrimitiveValue::from("NORM\\ATTN\\SCAT"),
        ));
    }
    assert_eq!(factor(&no_decy), Err(CalibrateError::CorrectedImageLacks { flag: "DECY" }));
}

#[test]
fn philips_cnts_without_suv_scale_factor_uses_the_activity_concentration_factor() {
    let dir = phantom("philips-cnts", 36);
    let want = truth_factor(dir.path());
    let mut objs = pet_objects(dir.path());
    for o in &mut objs {
        // The phantom reserves block 0x10 for "Philips PET Private Group".
        assert!(o.remove_element(Tag(0x7053, 0x1000)));
    }
    let got = factor(&objs).expect("factor via (7053,1009)");
    assert!(got.rule.starts_with("CNTS, Philips Activity Concentration Scale Factor (7053,1009)"), "{}", got.rule);
    // The private SUV factor was rounded to a DS string, so agreement is to DS precision only.
    assert!(rel(got.factor, want) < 1e-6, "{} vs {want}", got.factor);
    // With neither factor, CNTS cannot be converted.
    for o in &mut objs {
        assert!(o.remove_element(Tag(0x7053, 0x1009)));
    }
    assert_eq!(
        factor(&objs),
        Err(CalibrateError::MissingAttribute { name: calibrate::PHILIPS_SUV_OR_ACTIVITY_FACTOR })
    );
}

#[test]
fn ge_without_private_time_falls_back_to_the_earliest_acquisition() {
    let dir = phantom("ge", 37);
    let want = truth_factor(dir.path());
    let mut objs = pet_objects(dir.path());
    for o in &mut objs {
        assert!(o.remove_element(Tag(0x0009, 0x100D)));
    }
    let got = factor(&objs).expect("factor");
    assert!(got.rule.contains("scan time from earliest Acquisition Date/Time"), "{}", got.rule);
    // The phantom's first bed starts at the scan start, so the earliest acquisition agrees.
    assert!(rel(got.factor, want) < 1e-9, "{} vs {want}", got.factor);
}
