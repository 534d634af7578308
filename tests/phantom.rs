//! Integration tests of `petct-node phantom`: DICOM validity (dciodvfy), SUV factors from the
//! headers (our QIBA implementation and OHIF's @cornerstonejs/calculate-suv), lesion truth
//! consistency, NIfTI geometry, determinism and rigid misalignment.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::dciodvfy_errors;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, open_file};
use petct_node::phantom::{self, Misalign, PhantomOptions, Profile, Vendor};
use serde_json::Value;

const VENDORS: [Vendor; 4] = [Vendor::Siemens, Vendor::Ge, Vendor::PhilipsBqml, Vendor::PhilipsCnts];

fn options(seed: u64, vendor: Vendor) -> PhantomOptions {
    let mut o = PhantomOptions::new(seed, Profile::Small);
    o.vendor = vendor;
    o
}

fn generate(o: &PhantomOptions) -> (tempfile::TempDir, phantom::Summary) {
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = phantom::generate(o, dir.path()).expect("generate phantom");
    (dir, summary)
}

fn dcm_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    v.sort();
    v
}

fn truth(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("truth/truth.json")).expect("truth.json")).expect("json")
}

fn str_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

fn f64_of(obj: &InMemDicomObject, tag: Tag) -> Option<f64> {
    str_of(obj, tag).and_then(|s| s.trim().parse().ok())
}

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

// ---------------------------------------------------------------- dciodvfy

fn have_dciodvfy() -> bool {
    Command::new("dciodvfy").arg("-help").output().is_ok()
}

#[test]
fn dciodvfy_reports_no_errors_for_every_vendor() {
    if !have_dciodvfy() {
        eprintln!("SKIPPED: dciodvfy (Debian package dicom3tools) is not installed");
        return;
    }
    for vendor in VENDORS {
        let mut o = options(11, vendor);
        if vendor == Vendor::Ge {
            o.misalign = Some("4,-3,6,1,0,2".parse().expect("misalign"));
        }
        let (dir, s) = generate(&o);
        let mut files = dcm_files(&dir.path().join("CT"));
        files.extend(dcm_files(&dir.path().join("PT")));
        assert_eq!(files.len(), s.ct_slices + s.pt_slices);
        for f in &files {
            let errors = dciodvfy_errors(f);
            assert!(errors.is_empty(), "{vendor:?} {}: {errors:?}", f.display());
        }
    }
}

#[test]
fn dciodvfy_check_catches_a_broken_pet_header() {
    if !have_dciodvfy() {
        eprintln!("SKIPPED: dciodvfy (Debian package dicom3tools) is not installed");
        return;
    }
    let (dir, _) = generate(&options(12, Vendor::Siemens));
    let src = &dcm_files(&dir.path().join("PT"))[0];
    let mut obj = open_file(src).expect("open");
    // Patient Position must not be present with the Patient Orientation Code Sequence.
    obj.put(dicom_core::DataElement::new(tags::PATIENT_POSITION, dicom_core::VR::CS, "HFS"));
    let bad = dir.path().join("bad.dcm");
    obj.write_to_file(&bad).expect("write");
    assert!(!dciodvfy_errors(&bad).is_empty(), "dciodvfy should flag the broken file");
}

// ---------------------------------------------------------------- SUV factor (QIBA)

/// The PET header values the SUV computation needs, per instance.
#[derive(Debug, Clone)]
struct PetHeader {
    units: String,
    corrected_image: Vec<String>,
    decay_correction: String,
    weight_kg: f64,
    size_m: Option<f64>,
    sex: Option<String>,
    series_date: String,
    series_time: String,
    acquisition_date: String,
    acquisition_time: String,
    start_datetime: Option<String>,
    start_time: Option<String>,
    total_dose_bq: f64,
    half_life_s: f64,
    philips_suv_factor: Option<f64>,
    philips_activity_factor: Option<f64>,
    ge_post_injection_datetime: Option<String>,
    frame_reference_time_ms: Option<f64>,
    actual_frame_duration_ms: Option<f64>,
    rescale_slope: f64,
}

fn read_pet_header(obj: &DefaultDicomObject) -> PetHeader {
    let rp = obj
        .element(tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE)
        .expect("radiopharmaceutical sequence")
        .items()
        .and_then(|i| i.first().cloned())
        .expect("one item");
    let private = |group: u16, creator: &str, element: u16| -> Option<String> {
        // Find the block reserved by the creator, as a reader must.
        (0x10u16..=0xff).find_map(|b| {
            (str_of(obj, Tag(group, b)).as_deref() == Some(creator))
                .then(|| str_of(obj, Tag(group, (b << 8) | element)))
                .flatten()
        })
    };
    PetHeader {
        units: str_of(obj, tags::UNITS).expect("Units"),
        corrected_image: str_of(obj, tags::CORRECTED_IMAGE)
            .expect("CorrectedImage")
            .split('\\')
            .map(String::from)
            .collect(),
        decay_correction: str_of(obj, tags::DECAY_CORRECTION).expect("DecayCorrection"),
        weight_kg: f64_of(obj, tags::PATIENT_WEIGHT).expect("PatientWeight"),
        size_m: f64_of(obj, tags::PATIENT_SIZE),
        sex: str_of(obj, tags::PATIENT_SEX),
        series_date: str_of(obj, tags::SERIES_DATE).expect("SeriesDate"),
        series_time: str_of(obj, tags::SERIES_TIME).expect("SeriesTime"),
        acquisition_date: str_of(obj, tags::ACQUISITION_DATE).expect("AcquisitionDate"),
        acquisition_time: str_of(obj, tags::ACQUISITION_TIME).expect("AcquisitionTime"),
        start_datetime: str_of(&rp, tags::RADIOPHARMACEUTICAL_START_DATE_TIME),
        start_time: str_of(&rp, tags::RADIOPHARMACEUTICAL_START_TIME),
        total_dose_bq: f64_of(&rp, tags::RADIONUCLIDE_TOTAL_DOSE).expect("dose"),
        half_life_s: f64_of(&rp, tags::RADIONUCLIDE_HALF_LIFE).expect("half-life"),
        philips_suv_factor: private(0x7053, "Philips PET Private Group", 0x00).and_then(|s| s.trim().parse().ok()),
        philips_activity_factor: private(0x7053, "Philips PET Private Group", 0x09).and_then(|s| s.trim().parse().ok()),
        ge_post_injection_datetime: private(0x0009, "GEMS_PETD_01", 0x0d),
        frame_reference_time_ms: f64_of(obj, tags::FRAME_REFERENCE_TIME),
        actual_frame_duration_ms: f64_of(obj, tags::ACTUAL_FRAME_DURATION),
        rescale_slope: f64_of(obj, tags::RESCALE_SLOPE).expect("RescaleSlope"),
    }
}

/// Seconds since 1970 of a DA + TM (or a DT).
fn seconds(date: &str, time: &str) -> f64 {
    let y: i32 = date[0..4].parse().expect("year");
    let m: u8 = date[4..6].parse().expect("month");
    let d: u8 = date[6..8].parse().expect("day");
    let day = time::Date::from_calendar_date(y, time::Month::try_from(m).expect("month"), d).expect("date");
    let days = (day - time::Date::from_calendar_date(1970, time::Month::January, 1).expect("epoch")).whole_days();
    let t = time.trim();
    let hh: f64 = t[0..2].parse().expect("hh");
    let mm: f64 = t.get(2..4).map_or(0.0, |v| v.parse().expect("mm"));
    let ss: f64 = t.get(4..).map_or(0.0, |v| v.parse().expect("ss"));
    days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss
}

fn dt_seconds(dt: &str) -> f64 {
    seconds(&dt[0..8], &dt[8..])
}

/// SUVbw factor per the QIBA vendor-neutral pseudo-code (rescaled pixel value -> SUVbw).
fn qiba_suv_bw_factor(headers: &[PetHeader]) -> f64 {
    let h = &headers[0];
    assert!(h.corrected_image.iter().any(|c| c == "ATTN") && h.corrected_image.iter().any(|c| c == "DECY"));
    let bqml_factor = || {
        assert_eq!(h.decay_correction, "START");
        let series = seconds(&h.series_date, &h.series_time);
        let earliest_acq =
            headers.iter().map(|x| seconds(&x.acquisition_date, &x.acquisition_time)).fold(f64::MAX, f64::min);
        let scan = if series <= earliest_acq {
            series
        } else if let Some(ge) = &h.ge_post_injection_datetime {
            dt_seconds(ge)
        } else {
            panic!("series time after acquisition time without a GE private scan time");
        };
        let start = match (&h.start_datetime, &h.start_time) {
            (Some(dt), _) => dt_seconds(dt),
            (None, Some(t)) => seconds(&h.series_date, t),
            _ => panic!("no injection time"),
        };
        let decay_s = scan - start;
        assert!(decay_s > 0.0);
        let decayed = h.total_dose_bq * (-decay_s / h.half_life_s).exp2();
        h.weight_kg * 1000.0 / decayed
    };
    match h.units.as_str() {
        "BQML" => bqml_factor(),
        "CNTS" => match (h.philips_suv_factor, h.philips_activity_factor) {
            (Some(f), _) if f != 0.0 => f,
            (_, Some(a)) => a * bqml_factor(),
            _ => panic!("CNTS without Philips scale factors"),
        },
        u => panic!("unsupported units {u}"),
    }
}

fn pet_headers(dir: &Path) -> Vec<PetHeader> {
    dcm_files(&dir.join("PT")).iter().map(|p| read_pet_header(&open_file(p).expect("open PT"))).collect()
}

#[test]
fn qiba_suv_factor_from_headers_matches_truth_for_every_vendor() {
    for vendor in VENDORS {
        let o = options(21, vendor);
        let (dir, summary) = generate(&o);
        let t = truth(dir.path());
        let truth_factor = t["suv_bw_factor"].as_f64().expect("factor");
        assert!(rel(summary.suv_bw_factor, truth_factor) < 1e-15);
        let headers = pet_headers(dir.path());
        let f = qiba_suv_bw_factor(&headers);
        assert!(rel(f, truth_factor) < 1e-6, "{vendor:?}: headers {f} vs truth {truth_factor}");
        if vendor == Vendor::PhilipsCnts {
            // The activity-concentration route must agree with the SUV scale factor.
            let mut no_suv = headers.clone();
            for h in &mut no_suv {
                h.philips_suv_factor = None;
            }
            let g = qiba_suv_bw_factor(&no_suv);
            assert!(rel(g, truth_factor) < 1e-6, "CNTS via (7053,1009): {g} vs {truth_factor}");
        }
        if vendor == Vendor::Ge {
            // GE writes a Series Time after the acquisition: the private date-time is needed.
            let h = &headers[0];
            assert!(seconds(&h.series_date, &h.series_time) > seconds(&h.acquisition_date, &h.acquisition_time));
        }
        // Pixel values times the factor give back the generator's PET SUV.
        let ph = phantom::build(&o).expect("build");
        let g = ph.pet_grid;
        let files = dcm_files(&dir.path().join("PT"));
        for f in [&files[0], &files[files.len() / 2]] {
            let obj = open_file(f).expect("open");
            let h = read_pet_header(&obj);
            let index: usize = str_of(&obj, tags::IMAGE_INDEX).expect("index").parse().expect("int");
            let k = g.nz() - index;
            let pixels = obj.element(tags::PIXEL_DATA).expect("pixels").to_bytes().expect("bytes");
            let n = g.nx() * g.ny();
            let step = h.rescale_slope * truth_factor;
            for p in 0..n {
                let stored = u16::from_le_bytes([pixels[2 * p], pixels[2 * p + 1]]) as f64;
                let suv = stored * step;
                let expected = ph.pet_suv[k * n + p] as f64;
                assert!(
                    (suv - expected).abs() <= 0.5 * step + 1e-4 * expected.abs() + 1e-9,
                    "{vendor:?} slice {k} px {p}: {suv} vs {expected}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- SUV factor (OHIF reference)

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

fn ensure_calculate_suv() -> bool {
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED: node is not installed, cannot run @cornerstonejs/calculate-suv");
        return false;
    }
    let module = js_dir().join("node_modules/@cornerstonejs/calculate-suv");
    if !module.exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(js_dir())
            .status()
            .expect("run npm ci in tests/js");
        assert!(status.success(), "npm ci in tests/js failed (network?)");
    }
    true
}

fn instance_json(h: &PetHeader) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("CorrectedImage".into(), h.corrected_image.clone().into());
    m.insert("Units".into(), h.units.clone().into());
    m.insert("RadionuclideHalfLife".into(), h.half_life_s.into());
    m.insert("RadionuclideTotalDose".into(), h.total_dose_bq.into());
    m.insert("DecayCorrection".into(), h.decay_correction.clone().into());
    m.insert("PatientWeight".into(), h.weight_kg.into());
    m.insert("SeriesDate".into(), h.series_date.clone().into());
    m.insert("SeriesTime".into(), h.series_time.clone().into());
    m.insert("AcquisitionDate".into(), h.acquisition_date.clone().into());
    m.insert("AcquisitionTime".into(), h.acquisition_time.clone().into());
    if let Some(v) = &h.start_datetime {
        m.insert("RadiopharmaceuticalStartDateTime".into(), v.clone().into());
    }
    if let Some(v) = &h.start_time {
        m.insert("RadiopharmaceuticalStartTime".into(), v.clone().into());
    }
    if h.philips_suv_factor.is_some() || h.philips_activity_factor.is_some() {
        m.insert(
            "PhilipsPETPrivateGroup".into(),
            serde_json::json!({
                "SUVScaleFactor": h.philips_suv_factor,
                "ActivityConcentrationScaleFactor": h.philips_activity_factor,
            }),
        );
    }
    if let Some(v) = &h.ge_post_injection_datetime {
        m.insert("GEPrivatePostInjectionDateTime".into(), v.clone().into());
    }
    if let Some(v) = h.frame_reference_time_ms {
        m.insert("FrameReferenceTime".into(), v.into());
    }
    if let Some(v) = h.actual_frame_duration_ms {
        m.insert("ActualFrameDuration".into(), v.into());
    }
    if let Some(v) = h.size_m {
        m.insert("PatientSize".into(), v.into());
    }
    if let Some(v) = &h.sex {
        m.insert("PatientSex".into(), v.clone().into());
    }
    Value::Object(m)
}

#[test]
fn cornerstone_calculate_suv_matches_truth_for_every_vendor() {
    if !ensure_calculate_suv() {
        return;
    }
    for vendor in VENDORS {
        let (dir, _) = generate(&options(31, vendor));
        let truth_factor = truth(dir.path())["suv_bw_factor"].as_f64().expect("factor");
        let headers = pet_headers(dir.path());
        let input = dir.path().join("instances.json");
        let list: Vec<Value> = headers.iter().map(instance_json).collect();
        std::fs::write(&input, serde_json::to_vec(&list).expect("json")).expect("write");
        let out = Command::new("node")
            .arg(js_dir().join("suv.cjs"))
            .arg(&input)
            .current_dir(js_dir())
            .output()
            .expect("run node");
        assert!(out.status.success(), "{vendor:?}: {}", String::from_utf8_lossy(&out.stderr));
        let factors: Vec<f64> = serde_json::from_slice(&out.stdout).expect("factors");
        assert_eq!(factors.len(), headers.len());
        for f in factors {
            assert!(rel(f, truth_factor) < 1e-6, "{vendor:?}: calculate-suv {f} vs truth {truth_factor}");
        }
    }
}

// ---------------------------------------------------------------- NIfTI truth

struct Nifti {
    dims: [usize; 3],
    srow: [[f64; 4]; 3],
    datatype: i16,
    data: Vec<u8>,
}

fn read_nifti(path: &Path) -> Nifti {
    let mut bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).expect("open nifti"))
        .read_to_end(&mut bytes)
        .expect("gunzip");
    let i16_at = |o: usize| i16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let f32_at = |o: usize| f32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes")) as f64;
    assert_eq!(i32::from_le_bytes(bytes[0..4].try_into().expect("4")), 348);
    assert_eq!(&bytes[344..348], b"n+1\0");
    assert_eq!(i16_at(254), 1, "sform_code");
    let dims = [i16_at(42) as usize, i16_at(44) as usize, i16_at(46) as usize];
    let srow = [0, 1, 2].map(|r| [0, 1, 2, 3].map(|c| f32_at(280 + 16 * r + 4 * c)));
    let offset = f32_at(108) as usize;
    Nifti { dims, srow, datatype: i16_at(70), data: bytes[offset..].to_vec() }
}

impl Nifti {
    fn u8s(&self) -> &[u8] {
        assert_eq!(self.datatype, 2);
        &self.data
    }
    fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.datatype, 16);
        self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }
}

#[test]
fn lesion_truth_is_consistent_with_masks_and_noiseless_activity() {
    for seed in [41, 42, 43] {
        let (dir, summary) = generate(&options(seed, Vendor::Siemens));
        let t = truth(dir.path());
        let tdir = dir.path().join("truth");
        let lesions = read_nifti(&tdir.join("lesions.nii.gz"));
        let sens = read_nifti(&tdir.join("reader_high_sensitivity.nii.gz"));
        let spec = read_nifti(&tdir.join("reader_high_specificity.nii.gz"));
        let suv = read_nifti(&tdir.join("suv_true.nii.gz")).f32s();
        let (lab, sens, spec) = (lesions.u8s(), sens.u8s(), spec.u8s());
        assert_eq!(lab.len(), suv.len());
        let list = t["lesions"].as_array().expect("lesions");
        assert_eq!(list.len(), summary.lesions);
        assert!(!list.is_empty(), "seed {seed} has lesions");
        let spacing: Vec<f64> =
            t["ct_grid"]["spacing_mm"].as_array().expect("spacing").iter().map(|v| v.as_f64().expect("f")).collect();
        let voxel_ml = spacing.iter().product::<f64>() / 1000.0;
        let (mut n_sens, mut n_spec) = (0, 0);
        for l in list {
            let id = l["id"].as_u64().expect("id") as u8;
            let voxels: Vec<usize> = (0..lab.len()).filter(|&i| lab[i] == id).collect();
            assert_eq!(voxels.len() as u64, l["voxels"].as_u64().expect("voxels"));
            let mean = voxels.iter().map(|&i| suv[i] as f64).sum::<f64>() / voxels.len() as f64;
            let max = voxels.iter().map(|&i| suv[i] as f64).fold(f64::MIN, f64::max);
            assert!(rel(mean, l["true_suv_mean"].as_f64().expect("mean")) < 1e-9, "lesion {id} mean");
            assert!(rel(max, l["true_suv_max"].as_f64().expect("max")) < 1e-9, "lesion {id} max");
            assert!(rel(voxels.len() as f64 * voxel_ml, l["volume_ml"].as_f64().expect("vol")) < 1e-9);
            // Blurring lowers the maximum and SUVpeak lies between mean and max of the blur.
            let (omax, omean, opeak) = (
                l["observed_suv_max"].as_f64().expect("omax"),
                l["observed_suv_mean"].as_f64().expect("omean"),
                l["observed_suv_peak"].as_f64().expect("opeak"),
            );
            assert!(omean <= omax, "lesion {id}: {omax} {omean}");
            // Next to a hot organ the blur spills in and SUVpeak's sphere reaches into it
            // (the point of confounders); elsewhere blurring only lowers the values.
            if l["confounder"].is_null() {
                assert!(omax <= max + 1e-6 && opeak <= omax + 1e-6, "lesion {id}: {max} {omax} {opeak}");
            }
            let marked: Vec<&str> =
                l["marked_by"].as_array().expect("marked").iter().map(|v| v.as_str().expect("s")).collect();
            if marked.contains(&"high_sensitivity") {
                n_sens += 1;
                assert!(voxels.iter().all(|&i| sens[i] == id), "sensitive reader must contain lesion {id}");
                let grown = sens.iter().filter(|&&v| v == id).count();
                assert!(grown > voxels.len(), "sensitive borders are looser for lesion {id}");
            } else {
                assert!(!sens.contains(&id));
            }
            if marked.contains(&"high_specificity") {
                n_spec += 1;
                let core: Vec<usize> = (0..spec.len()).filter(|&i| spec[i] == id).collect();
                assert!(!core.is_empty() && core.iter().all(|&i| lab[i] == id), "specific reader inside lesion {id}");
            } else {
                assert!(!spec.contains(&id));
            }
        }
        assert!(n_spec < n_sens, "seed {seed}: specificity reader marks fewer ({n_spec} vs {n_sens})");
    }
}

#[test]
fn nifti_affine_matches_the_ct_headers() {
    let (dir, _) = generate(&options(51, Vendor::Siemens));
    let n = read_nifti(&dir.path().join("truth/tissues.nii.gz"));
    let cts: Vec<DefaultDicomObject> =
        dcm_files(&dir.path().join("CT")).iter().map(|p| open_file(p).expect("ct")).collect();
    assert_eq!(n.dims[2], cts.len());
    for obj in &cts {
        let ipp: Vec<f64> = str_of(obj, tags::IMAGE_POSITION_PATIENT)
            .expect("ipp")
            .split('\\')
            .map(|v| v.parse().expect("f"))
            .collect();
        let rows: usize = obj.element(tags::ROWS).expect("rows").to_int::<usize>().expect("int");
        assert_eq!(rows, n.dims[1]);
        // Voxel (0, 0, k) of the NIfTI is the first pixel of the slice at this z (RAS = -L, -P, S).
        let k = ((ipp[2] - n.srow[2][3]) / n.srow[2][2]).round() as usize;
        let ras = [0, 1, 2].map(|r| n.srow[r][2] * k as f64 + n.srow[r][3]);
        assert!((ras[0] + ipp[0]).abs() < 1e-3 && (ras[1] + ipp[1]).abs() < 1e-3 && (ras[2] - ipp[2]).abs() < 1e-3);
    }
    // Labels of the tissue map are the documented ones.
    let t = truth(dir.path());
    let names: BTreeMap<u64, String> = t["tissue_labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|p| (p[0].as_u64().expect("id"), p[1].as_str().expect("name").to_string()))
        .collect();
    assert_eq!(names.get(&9).map(String::as_str), Some("liver"));
    assert!(n.u8s().iter().all(|&v| names.contains_key(&(v as u64))));
}

// ---------------------------------------------------------------- study structure

#[test]
fn one_study_shared_frame_of_reference_and_consistent_geometry() {
    let (dir, s) = generate(&options(61, Vendor::Siemens));
    let ct = open_file(&dcm_files(&dir.path().join("CT"))[0]).expect("ct");
    let pt = open_file(&dcm_files(&dir.path().join("PT"))[0]).expect("pt");
    for obj in [&ct, &pt] {
        assert_eq!(str_of(obj, tags::STUDY_INSTANCE_UID).as_deref(), Some(s.study_instance_uid.as_str()));
        assert_eq!(str_of(obj, tags::FRAME_OF_REFERENCE_UID).as_deref(), Some(s.ct_frame_of_reference_uid.as_str()));
        assert_eq!(str_of(obj, tags::IMAGE_ORIENTATION_PATIENT).as_deref(), Some("1\\0\\0\\0\\1\\0"));
    }
    assert_eq!(str_of(&pt, tags::UNITS).as_deref(), Some("BQML"));
    assert_eq!(str_of(&pt, tags::DECAY_CORRECTION).as_deref(), Some("START"));
    let n: usize = pt.element(tags::NUMBER_OF_SLICES).expect("n").to_int::<usize>().expect("int");
    assert_eq!(n, s.pt_slices);
    // PET series starts about an hour after injection.
    let h = read_pet_header(&pt);
    let uptake_min =
        (seconds(&h.series_date, &h.series_time) - dt_seconds(h.start_datetime.as_deref().expect("dt"))) / 60.0;
    assert!((50.0..=75.0).contains(&uptake_min), "uptake {uptake_min} min");
}

#[test]
fn misalignment_moves_pet_and_gets_its_own_frame_of_reference() {
    let mut o = options(71, Vendor::Siemens);
    let (_, aligned) = generate(&o);
    let m: Misalign = "20,0,-10,0,0,3".parse().expect("misalign");
    o.misalign = Some(m);
    let (dir, s) = generate(&o);
    assert_ne!(s.pt_frame_of_reference_uid, s.ct_frame_of_reference_uid);
    assert_ne!(s.study_instance_uid, aligned.study_instance_uid);
    let t = truth(dir.path());
    assert_eq!(t["misalignment"]["parameters"]["tx_mm"].as_f64(), Some(20.0));
    assert!(t["misalignment"]["matrix_ct_to_pet"].is_array());
    // The activity centroid moves by the translation (rotation is about the CT centre).
    let centroid = |opts: &PhantomOptions| {
        let ph = phantom::build(opts).expect("build");
        let g = ph.pet_grid;
        let mut c = [0.0f64; 3];
        let mut w = 0.0f64;
        for k in 0..g.nz() {
            for j in 0..g.ny() {
                for i in 0..g.nx() {
                    let v = ph.pet_suv[g.index(i, j, k)] as f64;
                    c[0] += v * g.x_mm(i);
                    c[1] += v * g.y_mm(j);
                    c[2] += v * g.z_mm(k);
                    w += v;
                }
            }
        }
        c.map(|v| v / w)
    };
    let a = centroid(&options(71, Vendor::Siemens));
    let b = centroid(&o);
    assert!((b[0] - a[0] - 20.0).abs() < 4.0, "x shift {}", b[0] - a[0]);
    // Along z part of the anatomy leaves the axial field of view: only the direction is firm.
    assert!(b[2] - a[2] < -4.0 && b[2] - a[2] > -16.0, "z shift {}", b[2] - a[2]);
}

#[test]
fn normal_study_has_no_lesions_and_empty_masks() {
    let mut o = options(81, Vendor::Siemens);
    o.normal = true;
    let (dir, s) = generate(&o);
    assert_eq!(s.lesions, 0);
    let t = truth(dir.path());
    assert_eq!(t["lesions"].as_array().map(Vec::len), Some(0));
    assert_eq!(t["normal"].as_bool(), Some(true));
    for f in ["lesions.nii.gz", "reader_high_sensitivity.nii.gz", "reader_high_specificity.nii.gz"] {
        assert!(read_nifti(&dir.path().join("truth").join(f)).u8s().iter().all(|&v| v == 0), "{f}");
    }
}

// ---------------------------------------------------------------- determinism

fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for sub in ["CT", "PT", "truth"] {
        for e in std::fs::read_dir(dir.join(sub)).expect("dir") {
            let p = e.expect("entry").path();
            out.insert(p.strip_prefix(dir).expect("prefix").to_path_buf(), std::fs::read(&p).expect("read"));
        }
    }
    out
}

#[test]
fn same_arguments_give_the_same_bytes() {
    let mut o = options(91, Vendor::Ge);
    o.lesions = Some(6);
    let (a, _) = generate(&o);
    let (b, _) = generate(&o);
    let (ta, tb) = (tree(a.path()), tree(b.path()));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(v == &tb[k], "{} differs between runs", k.display());
    }
    let (c, sc) = generate(&options(92, Vendor::Ge));
    let tc = tree(c.path());
    assert_ne!(ta.get(Path::new("CT/CT0010.dcm")), tc.get(Path::new("CT/CT0010.dcm")));
    assert_ne!(truth(a.path())["study_instance_uid"], serde_json::json!(sc.study_instance_uid));
}

#[test]
fn seeds_give_different_patients() {
    let a = phantom::build(&options(101, Vendor::Siemens)).expect("a");
    let b = phantom::build(&options(102, Vendor::Siemens)).expect("b");
    assert!(a.patient.weight_kg != b.patient.weight_kg || a.patient.height_m != b.patient.height_m);
    assert_ne!(a.labels, b.labels);
}

#[test]
fn wholebody_geometry_with_few_slices() {
    let mut o = PhantomOptions::new(3, Profile::Wholebody);
    o.ct_slices = Some(12);
    let (dir, s) = generate(&o);
    assert_eq!(s.ct_slices, 12);
    let ct = open_file(&dcm_files(&dir.path().join("CT"))[0]).expect("ct");
    assert_eq!(ct.element(tags::ROWS).expect("rows").to_int::<u16>().expect("int"), 512);
    assert_eq!(str_of(&ct, tags::PIXEL_SPACING).as_deref(), Some("0.9765625\\0.9765625"));
    assert_eq!(str_of(&ct, tags::SLICE_THICKNESS).as_deref(), Some("3"));
    let pt = open_file(&dcm_files(&dir.path().join("PT"))[0]).expect("pt");
    assert_eq!(pt.element(tags::ROWS).expect("rows").to_int::<u16>().expect("int"), 200);
    if !have_dciodvfy() {
        eprintln!("SKIPPED (dciodvfy part): dciodvfy is not installed");
        return;
    }
    for vendor in VENDORS {
        let mut o = PhantomOptions::new(4, Profile::Wholebody);
        o.ct_slices = Some(10);
        o.vendor = vendor;
        let (dir, _) = generate(&o);
        for sub in ["CT", "PT"] {
            let files = dcm_files(&dir.path().join(sub));
            for f in [&files[0], &files[files.len() - 1]] {
                let errors = dciodvfy_errors(f);
                assert!(errors.is_empty(), "{vendor:?} {}: {errors:?}", f.display());
            }
        }
    }
}

/// Run with `cargo test --release --test phantom -- --ignored` (debug builds are far slower).
#[test]
#[ignore]
fn wholebody_is_generated_in_under_15_s() {
    let o = PhantomOptions::new(1, Profile::Wholebody);
    let (_dir, s) = generate(&o);
    assert_eq!(s.ct_slices, 300);
    eprintln!("wholebody generated in {:.2} s", s.elapsed_s);
    assert!(s.elapsed_s < 15.0, "took {} s", s.elapsed_s);
}
