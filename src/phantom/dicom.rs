//! DICOM headers and files: CT Image Storage and PET Image Storage, Explicit VR Little Endian
//! Part 10 files, with the modules and vendor habits readers depend on (PET Series, PET
//! Isotope, NM/PET Patient Orientation, GE and Philips private SUV-related attributes).
//!
//! Every number written as DS is formatted first and read back, and the study's SUV factors
//! are computed from those read-back values, so a reader of the headers gets exactly the
//! factor recorded in truth.json.

use std::path::Path;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::anatomy::Patient;
use super::grid::Grid;
use super::rng::Stream;
use super::{Phantom, PhantomError, PhantomOptions, Vendor, ct};

pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const PET_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.128";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLEMENTATION_VERSION: &str = "PETCT_NODE_01";
/// F-18 half-life in seconds, as scanners write it.
pub const F18_HALF_LIFE_S: f64 = 6586.2;

pub const GE_PRIVATE_CREATOR: &str = "GEMS_PETD_01";
pub const PHILIPS_PRIVATE_CREATOR: &str = "Philips PET Private Group";

/// A UID under the 2.25 (UUID-derived) root, from a hash of `parts`.
pub fn uid(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // Shape it as a version-8 (custom) UUID, as 2.25 expects a UUID.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// Format a DS value in at most 16 characters (shortest round-trip form when it fits).
pub fn ds(v: f64) -> String {
    let s = format!("{v}");
    if s.len() <= 16 {
        return s;
    }
    for digits in (1..=10).rev() {
        let s = format!("{v:.digits$e}");
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.0e}")
}

/// The value a reader gets back from [`ds`].
pub fn ds_value(v: f64) -> f64 {
    ds(v).parse().unwrap_or(v)
}

fn date_str(days_since_2024: i64) -> String {
    let base = time::Date::from_calendar_date(2024, time::Month::January, 1).unwrap_or(time::Date::MIN);
    let d = base.checked_add(time::Duration::days(days_since_2024)).unwrap_or(base);
    format!("{:04}{:02}{:02}", d.year(), d.month() as u8, d.day())
}

fn tm(seconds_of_day: i64) -> String {
    let s = seconds_of_day.rem_euclid(86_400);
    format!("{:02}{:02}{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Study-level values shared by the headers and the truth.
#[derive(Debug, Clone, Serialize)]
pub struct StudyInfo {
    pub study_uid: String,
    pub ct_series_uid: String,
    pub pt_series_uid: String,
    pub ct_for_uid: String,
    pub pt_for_uid: String,
    #[serde(skip)]
    fingerprint: String,
    pub vendor: Vendor,
    pub date: String,
    pub study_time_s: i64,
    pub ct_time_s: i64,
    pub injection_time_s: i64,
    /// Start of the PET acquisition (the decay-correction reference).
    pub pet_start_s: i64,
    /// Series Time written in the PET headers (GE: after the acquisition).
    pub pt_series_time_s: i64,
    pub bed_duration_s: i64,
    pub bed_step_mm: f64,
    pub injected_dose_bq: f64,
    pub half_life_s: f64,
    pub weight_kg: f64,
    pub decayed_dose_bq: f64,
    /// SUVbw per Bq/mL.
    pub bqml_suv_factor: f64,
    /// `BQML` or `CNTS`.
    pub units: &'static str,
    /// Philips: Bq/mL per count (7053,1009).
    pub activity_concentration_factor: Option<f64>,
    /// Philips: SUV per rescaled pixel unit (7053,1000).
    pub philips_suv_factor: Option<f64>,
    /// SUVbw per rescaled pixel value of this series.
    pub suv_bw_factor: f64,
    #[serde(skip)]
    patient_name: String,
    #[serde(skip)]
    patient_id: String,
    #[serde(skip)]
    birth_date: String,
    #[serde(skip)]
    sex: &'static str,
    #[serde(skip)]
    age: String,
    #[serde(skip)]
    height_m: f64,
    #[serde(skip)]
    accession: String,
}

impl StudyInfo {
    pub fn new(options: &PhantomOptions, patient: &Patient, _ct: &Grid, pet: &Grid) -> StudyInfo {
        let fp = options.fingerprint();
        let u = |key: &str| uid(&["petct-node phantom", &fp, key]);
        let mut s = Stream::new(options.seed, "study");
        let day = s.range_usize(0, 730) as i64;
        let injection_time_s = 7 * 3600 + 30 * 60 + s.range_usize(0, 6 * 3600) as i64;
        let uptake_s = s.range_usize(55 * 60, 70 * 60 + 1) as i64;
        let pet_start_s = injection_time_s + uptake_s;
        let ct_time_s = pet_start_s - 300 - s.range_usize(0, 120) as i64;
        let study_time_s = ct_time_s - 180;
        let (bed_duration_s, units) = match options.vendor {
            Vendor::Siemens => (120, "BQML"),
            Vendor::Ge => (150, "BQML"),
            Vendor::PhilipsBqml => (90, "BQML"),
            Vendor::PhilipsCnts => (90, "CNTS"),
        };
        let bed_step_mm = 150.0;
        let extent = (pet.nz() as f64 - 1.0) * pet.spacing_mm[2];
        let beds = (extent / bed_step_mm).floor() as i64 + 1;
        let pt_series_time_s = match options.vendor {
            // GE writes the (re)reconstruction time as Series Time; readers must use the
            // private scan date-time instead.
            Vendor::Ge => pet_start_s + beds * bed_duration_s + 420,
            _ => pet_start_s,
        };
        let weight_kg = ds_value(patient.weight_kg);
        let dose_mbq_per_kg = s.uniform(3.0, 4.0);
        let injected_dose_bq = ds_value((weight_kg * dose_mbq_per_kg * 10.0).round() * 1e5);
        let half_life_s = ds_value(F18_HALF_LIFE_S);
        let decay_s = (pet_start_s - injection_time_s) as f64;
        let decayed_dose_bq = injected_dose_bq * (-decay_s / half_life_s).exp2();
        let bqml_suv_factor = weight_kg * 1000.0 / decayed_dose_bq;
        let (activity_concentration_factor, philips_suv_factor, suv_bw_factor) = match options.vendor {
            Vendor::PhilipsCnts => {
                let acf = ds_value(s.uniform(0.02, 0.06));
                let suv = ds_value(acf * bqml_suv_factor);
                (Some(acf), Some(suv), suv)
            }
            Vendor::PhilipsBqml => {
                let suv = ds_value(bqml_suv_factor);
                (Some(1.0), Some(suv), bqml_suv_factor)
            }
            _ => (None, None, bqml_suv_factor),
        };
        let birth_year = 2024 + day / 365 - patient.age_years as i64;
        let birth = format!("{:04}{:02}{:02}", birth_year, s.range_usize(1, 13), s.range_usize(1, 29));
        StudyInfo {
            study_uid: u("study"),
            ct_series_uid: u("series/CT"),
            pt_series_uid: u("series/PT"),
            ct_for_uid: u("frame-of-reference/CT"),
            pt_for_uid: if options.misalign.is_some() {
                u("frame-of-reference/PT")
            } else {
                u("frame-of-reference/CT")
            },
            fingerprint: fp,
            vendor: options.vendor,
            date: date_str(day),
            study_time_s,
            ct_time_s,
            injection_time_s,
            pet_start_s,
            pt_series_time_s,
            bed_duration_s,
            bed_step_mm,
            injected_dose_bq,
            half_life_s,
            weight_kg,
            decayed_dose_bq,
            bqml_suv_factor,
            units,
            activity_concentration_factor,
            philips_suv_factor,
            suv_bw_factor,
            patient_name: format!("PHANTOM^SEED{}", options.seed),
            patient_id: format!("PHANTOM-{:06}", options.seed),
            birth_date: birth,
            sex: patient.sex.dicom(),
            age: format!("{:03}Y", patient.age_years),
            height_m: patient.height_m,
            accession: format!("PH{:010}", options.seed % 10_000_000_000),
        }
    }

    fn instance_uid(&self, modality: &str, index: usize) -> String {
        uid(&["petct-node phantom", &self.fingerprint, modality, &index.to_string()])
    }

    /// Injection date-time as DT.
    pub fn injection_dt(&self) -> String {
        format!("{}{}.000000", self.date, tm(self.injection_time_s))
    }

    /// PET acquisition start date-time as DT.
    pub fn pet_start_dt(&self) -> String {
        format!("{}{}.000000", self.date, tm(self.pet_start_s))
    }

    /// Bed position (acquired feet first) of a PET slice.
    fn bed_of(&self, pet: &Grid, k: usize) -> i64 {
        ((k as f64 * pet.spacing_mm[2]) / self.bed_step_mm).floor() as i64
    }

    /// (acquisition time of day in s, frame reference time in ms, decay factor) of a slice:
    /// each bed starts later, and START decay correction scales it back to the series start.
    fn pet_slice_timing(&self, pet: &Grid, k: usize) -> (i64, f64, f64) {
        let bed = self.bed_of(pet, k);
        let t0 = (bed * self.bed_duration_s) as f64;
        let lambda = std::f64::consts::LN_2 / self.half_life_s;
        let dur = self.bed_duration_s as f64;
        let avg = lambda * dur / (1.0 - (-lambda * dur).exp());
        let decay_factor = (lambda * t0).exp() * avg;
        let frame_ref_ms = 1000.0 * (t0 + avg.ln() / lambda);
        (self.pet_start_s + bed * self.bed_duration_s, frame_ref_ms, decay_factor)
    }
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, v.into()));
}

fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::CODE_VALUE, VR::SH, value);
    put(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put(&mut o, tags::CODE_MEANING, VR::LO, meaning);
    o
}

struct VendorStrings {
    manufacturer: &'static str,
    model: &'static str,
    ct_kernel: &'static str,
    pet_recon: &'static str,
    station: &'static str,
}

fn vendor_strings(v: Vendor) -> VendorStrings {
    match v {
        Vendor::Siemens => VendorStrings {
            manufacturer: "SIEMENS",
            model: "Biograph Vision 600",
            ct_kernel: "Br38f",
            pet_recon: "OSEM3D 4i5s",
            station: "PHANTOMPET1",
        },
        Vendor::Ge => VendorStrings {
            manufacturer: "GE MEDICAL SYSTEMS",
            model: "Discovery MI",
            ct_kernel: "STANDARD",
            pet_recon: "VPFXS",
            station: "PHANTOMPET2",
        },
        Vendor::PhilipsBqml | Vendor::PhilipsCnts => VendorStrings {
            manufacturer: "Philips Medical Systems",
            model: "Vereos PET/CT",
            ct_kernel: "B",
            pet_recon: "3D-OSEM 3i9s",
            station: "PHANTOMPET3",
        },
    }
}

/// Patient, study, equipment and shared image attributes.
fn base_object(study: &StudyInfo, modality: &str) -> InMemDicomObject {
    let vs = vendor_strings(study.vendor);
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 100");
    put(&mut o, tags::STUDY_DATE, VR::DA, study.date.as_str());
    put(&mut o, tags::STUDY_TIME, VR::TM, tm(study.study_time_s));
    put(&mut o, tags::ACCESSION_NUMBER, VR::SH, study.accession.as_str());
    put(&mut o, tags::MODALITY, VR::CS, modality);
    put(&mut o, tags::MANUFACTURER, VR::LO, vs.manufacturer);
    put(&mut o, tags::INSTITUTION_NAME, VR::LO, "petct-node synthetic phantom");
    put(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "");
    put(&mut o, tags::STATION_NAME, VR::SH, vs.station);
    put(&mut o, tags::STUDY_DESCRIPTION, VR::LO, "PET^WB FDG (SYNTHETIC)");
    put(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, vs.model);
    put(&mut o, tags::PATIENT_NAME, VR::PN, study.patient_name.as_str());
    put(&mut o, tags::PATIENT_ID, VR::LO, study.patient_id.as_str());
    put(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, study.birth_date.as_str());
    put(&mut o, tags::PATIENT_SEX, VR::CS, study.sex);
    put(&mut o, tags::PATIENT_AGE, VR::AS, study.age.as_str());
    put(&mut o, tags::PATIENT_SIZE, VR::DS, ds(study.height_m));
    put(&mut o, tags::PATIENT_WEIGHT, VR::DS, ds(study.weight_kg));
    put(&mut o, tags::BODY_PART_EXAMINED, VR::CS, "WHOLEBODY");
    put(&mut o, tags::DEVICE_SERIAL_NUMBER, VR::LO, "PHANTOM0001");
    put(&mut o, tags::SOFTWARE_VERSIONS, VR::LO, "petct-node phantom 1");
    put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, study.study_uid.as_str());
    put(&mut o, tags::STUDY_ID, VR::SH, "1");
    put(&mut o, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0");
    put(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, "");
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put(&mut o, tags::BITS_ALLOCATED, VR::US, 16u16);
    put(&mut o, tags::BITS_STORED, VR::US, 16u16);
    put(&mut o, tags::HIGH_BIT, VR::US, 15u16);
    put(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    put(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    o
}

fn put_geometry(o: &mut InMemDicomObject, g: &Grid, k: usize) {
    put(o, tags::ROWS, VR::US, g.ny() as u16);
    put(o, tags::COLUMNS, VR::US, g.nx() as u16);
    put(o, tags::PIXEL_SPACING, VR::DS, format!("{}\\{}", ds(g.spacing_mm[1]), ds(g.spacing_mm[0])));
    put(o, tags::IMAGE_POSITION_PATIENT, VR::DS, format!("{}\\{}\\{}", ds(g.x_mm(0)), ds(g.y_mm(0)), ds(g.z_mm(k))));
    put(o, tags::SLICE_LOCATION, VR::DS, ds(g.z_mm(k)));
    put(o, tags::SLICE_THICKNESS, VR::DS, ds(g.spacing_mm[2]));
}

fn write_file(obj: InMemDicomObject, study: &StudyInfo, path: &Path) -> Result<(), PhantomError> {
    let impl_uid = uid(&["petct-node implementation"]);
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_VR_LE)
                .implementation_class_uid(impl_uid)
                .implementation_version_name(IMPLEMENTATION_VERSION),
        )
        .map_err(|e| PhantomError::Dicom {
            what: format!("file meta for {}", path.display()),
            message: e.to_string(),
        })?;
    let _ = study;
    file.write_to_file(path)
        .map_err(|e| PhantomError::Dicom { what: format!("writing {}", path.display()), message: e.to_string() })
}

/// Write one CT file per slice; returns the number written.
pub fn write_ct_series(study: &StudyInfo, ph: &Phantom, dir: &Path) -> Result<usize, PhantomError> {
    let g = &ph.ct_grid;
    let vs = vendor_strings(study.vendor);
    let mut base = base_object(study, "CT");
    put(&mut base, tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE);
    put(&mut base, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL");
    for (tag, vr) in [(tags::SERIES_DATE, VR::DA), (tags::ACQUISITION_DATE, VR::DA), (tags::CONTENT_DATE, VR::DA)] {
        put(&mut base, tag, vr, study.date.as_str());
    }
    for tag in [tags::SERIES_TIME, tags::ACQUISITION_TIME, tags::CONTENT_TIME] {
        put(&mut base, tag, VR::TM, tm(study.ct_time_s));
    }
    put(&mut base, tags::SERIES_DESCRIPTION, VR::LO, "CT WB 3.0 (attenuation correction)");
    put(&mut base, tags::SERIES_INSTANCE_UID, VR::UI, study.ct_series_uid.as_str());
    put(&mut base, tags::SERIES_NUMBER, VR::IS, "2");
    put(&mut base, tags::ACQUISITION_NUMBER, VR::IS, "1");
    put(&mut base, tags::FRAME_OF_REFERENCE_UID, VR::UI, study.ct_for_uid.as_str());
    // PET states the position in the Patient Orientation Code Sequence instead.
    put(&mut base, tags::PATIENT_POSITION, VR::CS, "HFS");
    put(&mut base, tags::SCAN_OPTIONS, VR::CS, "HELIX");
    put(&mut base, tags::KVP, VR::DS, "120");
    put(&mut base, tags::DATA_COLLECTION_DIAMETER, VR::DS, "500");
    put(&mut base, tags::RECONSTRUCTION_DIAMETER, VR::DS, ds(g.spacing_mm[0] * g.nx() as f64));
    put(&mut base, tags::DISTANCE_SOURCE_TO_DETECTOR, VR::DS, "1085.6");
    put(&mut base, tags::DISTANCE_SOURCE_TO_PATIENT, VR::DS, "595");
    put(&mut base, tags::GANTRY_DETECTOR_TILT, VR::DS, "0");
    put(&mut base, tags::TABLE_HEIGHT, VR::DS, "140");
    put(&mut base, tags::ROTATION_DIRECTION, VR::CS, "CW");
    put(&mut base, tags::EXPOSURE_TIME, VR::IS, "500");
    put(&mut base, tags::X_RAY_TUBE_CURRENT, VR::IS, "60");
    put(&mut base, tags::EXPOSURE, VR::IS, "30");
    put(&mut base, tags::CONVOLUTION_KERNEL, VR::SH, vs.ct_kernel);
    put(&mut base, tags::PIXEL_REPRESENTATION, VR::US, 1u16);
    put(&mut base, tags::WINDOW_CENTER, VR::DS, "40\\-600");
    put(&mut base, tags::WINDOW_WIDTH, VR::DS, "400\\1500");
    put(&mut base, tags::WINDOW_CENTER_WIDTH_EXPLANATION, VR::LO, "SOFT TISSUE\\LUNG");
    put(&mut base, tags::RESCALE_INTERCEPT, VR::DS, ds(ct::RESCALE_INTERCEPT));
    put(&mut base, tags::RESCALE_SLOPE, VR::DS, "1");
    put(&mut base, tags::RESCALE_TYPE, VR::LO, "HU");
    put(&mut base, tags::INSTANCE_CREATION_DATE, VR::DA, study.date.as_str());
    put(&mut base, tags::INSTANCE_CREATION_TIME, VR::TM, tm(study.ct_time_s + 60));
    let n = g.slice_len();
    (0..g.nz()).into_par_iter().try_for_each(|k| {
        let instance = g.nz() - k;
        let mut o = base.clone();
        put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, study.instance_uid("CT", instance));
        put(&mut o, tags::INSTANCE_NUMBER, VR::IS, instance.to_string());
        put_geometry(&mut o, g, k);
        let mut bytes = Vec::with_capacity(2 * n);
        for v in &ph.ct_stored[k * n..(k + 1) * n] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        put(&mut o, tags::PIXEL_DATA, VR::OW, bytes);
        write_file(o, study, &dir.join(format!("CT{instance:04}.dcm")))
    })?;
    Ok(g.nz())
}

/// Write one PET file per slice; returns the number written.
pub fn write_pt_series(study: &StudyInfo, ph: &Phantom, dir: &Path) -> Result<usize, PhantomError> {
    let g = &ph.pet_grid;
    let vs = vendor_strings(study.vendor);
    let mut base = base_object(study, "PT");
    put(&mut base, tags::SOP_CLASS_UID, VR::UI, PET_IMAGE_STORAGE);
    put(&mut base, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY");
    for (tag, vr) in [(tags::SERIES_DATE, VR::DA), (tags::ACQUISITION_DATE, VR::DA), (tags::CONTENT_DATE, VR::DA)] {
        put(&mut base, tag, vr, study.date.as_str());
    }
    put(&mut base, tags::SERIES_TIME, VR::TM, tm(study.pt_series_time_s));
    put(&mut base, tags::SERIES_DESCRIPTION, VR::LO, "PET WB FDG AC");
    put(&mut base, tags::SERIES_INSTANCE_UID, VR::UI, study.pt_series_uid.as_str());
    put(&mut base, tags::SERIES_NUMBER, VR::IS, "3");
    put(&mut base, tags::ACQUISITION_NUMBER, VR::IS, "1");
    put(&mut base, tags::FRAME_OF_REFERENCE_UID, VR::UI, study.pt_for_uid.as_str());
    put(&mut base, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    put(&mut base, tags::RESCALE_INTERCEPT, VR::DS, "0");
    put(&mut base, tags::RECONSTRUCTION_DIAMETER, VR::DS, ds(g.spacing_mm[0] * g.nx() as f64));
    put(&mut base, tags::CONVOLUTION_KERNEL, VR::SH, "GAUSSIAN 5.0");
    put(&mut base, tags::INSTANCE_CREATION_DATE, VR::DA, study.date.as_str());
    put(&mut base, tags::INSTANCE_CREATION_TIME, VR::TM, tm(study.pt_series_time_s + 60));
    // PET Series module.
    put(&mut base, tags::UNITS, VR::CS, study.units);
    put(&mut base, tags::SUV_TYPE, VR::CS, "BW");
    put(&mut base, tags::COUNTS_SOURCE, VR::CS, "EMISSION");
    put(&mut base, tags::SERIES_TYPE, VR::CS, "WHOLE BODY\\IMAGE");
    put(&mut base, tags::NUMBER_OF_SLICES, VR::US, g.nz() as u16);
    put(&mut base, tags::CORRECTED_IMAGE, VR::CS, "NORM\\DTIM\\ATTN\\SCAT\\DECY\\RAN");
    put(&mut base, tags::RANDOMS_CORRECTION_METHOD, VR::CS, "DLYD");
    put(&mut base, tags::ATTENUATION_CORRECTION_METHOD, VR::LO, "measured,AC_CT");
    put(&mut base, tags::SCATTER_CORRECTION_METHOD, VR::LO, "Model-based");
    put(&mut base, tags::DECAY_CORRECTION, VR::CS, "START");
    put(&mut base, tags::RECONSTRUCTION_METHOD, VR::LO, vs.pet_recon);
    put(&mut base, tags::COLLIMATOR_TYPE, VR::CS, "NONE");
    put(&mut base, tags::AXIAL_ACCEPTANCE, VR::DS, "17");
    // PET Isotope module.
    let mut rp = InMemDicomObject::new_empty();
    put(&mut rp, tags::RADIOPHARMACEUTICAL, VR::LO, "Fluorodeoxyglucose");
    put(&mut rp, tags::RADIOPHARMACEUTICAL_ROUTE, VR::LO, "Intravenous");
    put(&mut rp, tags::RADIOPHARMACEUTICAL_VOLUME, VR::DS, "8");
    put(&mut rp, tags::RADIOPHARMACEUTICAL_START_TIME, VR::TM, tm(study.injection_time_s));
    put(&mut rp, tags::RADIOPHARMACEUTICAL_START_DATE_TIME, VR::DT, study.injection_dt());
    put(&mut rp, tags::RADIONUCLIDE_TOTAL_DOSE, VR::DS, ds(study.injected_dose_bq));
    put(&mut rp, tags::RADIONUCLIDE_HALF_LIFE, VR::DS, ds(study.half_life_s));
    put(&mut rp, tags::RADIONUCLIDE_POSITRON_FRACTION, VR::DS, "0.9673");
    put_seq(&mut rp, tags::RADIONUCLIDE_CODE_SEQUENCE, vec![code("77004003", "SCT", "^18^Fluorine")]);
    put_seq(
        &mut rp,
        tags::RADIOPHARMACEUTICAL_CODE_SEQUENCE,
        vec![code("35321007", "SCT", "Fluorodeoxyglucose F^18^")],
    );
    put_seq(&mut base, tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE, vec![rp]);
    // NM/PET Patient Orientation module.
    let mut orient = code("102538003", "SCT", "recumbent");
    put_seq(&mut orient, tags::PATIENT_ORIENTATION_MODIFIER_CODE_SEQUENCE, vec![code("40199007", "SCT", "supine")]);
    put_seq(&mut base, tags::PATIENT_ORIENTATION_CODE_SEQUENCE, vec![orient]);
    put_seq(&mut base, tags::PATIENT_GANTRY_RELATIONSHIP_CODE_SEQUENCE, vec![code("102540008", "SCT", "headfirst")]);
    // Vendor private groups.
    match study.vendor {
        Vendor::Ge => {
            put(&mut base, Tag(0x0009, 0x0010), VR::LO, GE_PRIVATE_CREATOR);
            put(&mut base, Tag(0x0009, 0x100D), VR::DT, study.pet_start_dt());
        }
        Vendor::PhilipsBqml | Vendor::PhilipsCnts => {
            put(&mut base, Tag(0x7053, 0x0010), VR::LO, PHILIPS_PRIVATE_CREATOR);
            if let Some(f) = study.philips_suv_factor {
                put(&mut base, Tag(0x7053, 0x1000), VR::DS, ds(f));
            }
            if let Some(f) = study.activity_concentration_factor {
                put(&mut base, Tag(0x7053, 0x1009), VR::DS, ds(f));
            }
        }
        Vendor::Siemens => {}
    }
    // Stored unit per SUV: Bq/mL, or counts for Philips CNTS.
    let unit_per_suv = 1.0 / study.suv_bw_factor;
    // Display window SUV 0..6 in stored units.
    put(&mut base, tags::WINDOW_CENTER, VR::DS, ds(3.0 * unit_per_suv));
    put(&mut base, tags::WINDOW_WIDTH, VR::DS, ds(6.0 * unit_per_suv));
    let n = g.slice_len();
    (0..g.nz()).into_par_iter().try_for_each(|k| {
        let index = g.nz() - k;
        let mut o = base.clone();
        let (acq_s, frame_ref_ms, decay_factor) = study.pet_slice_timing(g, k);
        put(&mut o, tags::ACQUISITION_TIME, VR::TM, tm(acq_s));
        put(&mut o, tags::CONTENT_TIME, VR::TM, tm(acq_s));
        put(&mut o, tags::FRAME_REFERENCE_TIME, VR::DS, ds((frame_ref_ms * 1000.0).round() / 1000.0));
        put(&mut o, tags::ACTUAL_FRAME_DURATION, VR::IS, (study.bed_duration_s * 1000).to_string());
        put(&mut o, tags::DECAY_FACTOR, VR::DS, ds((decay_factor * 1e6).round() / 1e6));
        put(&mut o, tags::DOSE_CALIBRATION_FACTOR, VR::DS, "1");
        put(&mut o, tags::SLICE_SENSITIVITY_FACTOR, VR::DS, "1");
        put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, study.instance_uid("PT", index));
        put(&mut o, tags::INSTANCE_NUMBER, VR::IS, index.to_string());
        put(&mut o, tags::IMAGE_INDEX, VR::US, index as u16);
        put_geometry(&mut o, g, k);
        let slice = &ph.pet_suv[k * n..(k + 1) * n];
        let max_unit = slice.iter().fold(0f32, |m, &v| m.max(v)) as f64 * unit_per_suv;
        // Per-slice slope: the slice maximum maps to 32767, as scanners do.
        let slope = if max_unit > 0.0 { ds_value(max_unit / 32767.0) } else { 1.0 };
        put(&mut o, tags::RESCALE_SLOPE, VR::DS, ds(slope));
        let scale = unit_per_suv / slope;
        let mut bytes = Vec::with_capacity(2 * n);
        for &v in slice {
            let s = (v as f64 * scale).round().clamp(0.0, 32767.0) as u16;
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        put(&mut o, tags::PIXEL_DATA, VR::OW, bytes);
        write_file(o, study, &dir.join(format!("PT{index:04}.dcm")))
    })?;
    Ok(g.nz())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_valid_and_stable() {
        let a = uid(&["x", "1"]);
        assert_eq!(a, uid(&["x", "1"]));
        assert_ne!(a, uid(&["x", "2"]));
        assert!(a.len() <= 64 && a.starts_with("2.25."));
        assert!(a.chars().all(|c| c.is_ascii_digit() || c == '.'));
        assert!(!a[5..].starts_with('0'));
    }

    #[test]
    fn ds_fits_and_round_trips_closely() {
        for v in [78.4, 312_400_000.0, 6586.2, 0.000_123_456_789_123, 1.0 / 3.0, -1024.0, 12_345.678_901_234] {
            let s = ds(v);
            assert!(s.len() <= 16, "{s}");
            let back: f64 = s.parse().expect("parse");
            assert!(((back - v) / v).abs() < 1e-9, "{v} -> {s}");
        }
        assert_eq!(ds(78.4), "78.4");
    }

    #[test]
    fn times_format() {
        assert_eq!(tm(9 * 3600 + 5 * 60 + 7), "090507");
        assert_eq!(date_str(0), "20240101");
        assert_eq!(date_str(366), "20250101");
    }
}
