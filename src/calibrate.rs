//! Calibration of PET pixel values to SUV: the SUVbw factor by the QIBA vendor-neutral
//! pseudo-code (the same rules as OHIF's `@cornerstonejs/calculate-suv`) and SUL by the
//! Janmahasatian lean body mass. Pure: it works on a [`PetHeader`] of plain values, which
//! `pet_header` reads from the DICOM instances.
//!
//! The factor multiplies *rescaled* pixel values (stored value × Rescale Slope + Intercept,
//! applied per instance because the slope varies per slice) to give SUVbw in g/mL.

use serde::Serialize;
use time::{Date, Duration, PrimitiveDateTime, Time};

/// Units (0054,1001) of the rescaled pixel values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Units {
    /// Bq/mL.
    Bqml,
    /// Counts (Philips); needs a Philips private scale factor.
    Cnts,
    /// g/mL: already SUVbw.
    Gml,
    Other(String),
}

impl Units {
    pub fn parse(s: &str) -> Units {
        match s.trim() {
            "BQML" => Units::Bqml,
            "CNTS" => Units::Cnts,
            "GML" => Units::Gml,
            other => Units::Other(other.to_string()),
        }
    }
}

/// Decay Correction (0054,1102): the time the pixel values are decay-corrected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecayCorrection {
    /// To the start of the acquisition.
    Start,
    /// To the radiopharmaceutical administration time.
    Admin,
    /// NONE or anything else: not supported.
    Other(String),
}

impl DecayCorrection {
    pub fn parse(s: &str) -> DecayCorrection {
        match s.trim() {
            "START" => DecayCorrection::Start,
            "ADMIN" => DecayCorrection::Admin,
            other => DecayCorrection::Other(other.to_string()),
        }
    }
}

/// Patient's Sex (0010,0040).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sex {
    Male,
    Female,
    Other(String),
}

impl Sex {
    pub fn parse(s: &str) -> Sex {
        match s.trim() {
            "M" => Sex::Male,
            "F" => Sex::Female,
            other => Sex::Other(other.to_string()),
        }
    }
}

/// The PET header values the SUV rules need, for one instance or (merged) one series.
/// Everything that a real header may lack is an `Option`; the rules say which is required.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PetHeader {
    /// Units (0054,1001).
    pub units: Option<Units>,
    /// Decay Correction (0054,1102).
    pub decay_correction: Option<DecayCorrection>,
    /// Corrected Image (0028,0051) values, e.g. `["NORM", "ATTN", "DECY"]`.
    pub corrected_image: Option<Vec<String>>,
    /// Series Date (0008,0021).
    pub series_date: Option<Date>,
    /// Series Time (0008,0031).
    pub series_time: Option<Time>,
    /// Acquisition Date (0008,0022) + Time (0008,0032), one entry per instance; `None` where an
    /// instance lacks either. QIBA uses the earliest.
    pub acquisition: Vec<Option<PrimitiveDateTime>>,
    /// GE private scan date-time (0009,xx0D) under creator "GEMS_PETD_01".
    pub ge_scan_datetime: Option<PrimitiveDateTime>,
    /// Radiopharmaceutical Start DateTime (0018,1078).
    pub injection_datetime: Option<PrimitiveDateTime>,
    /// Radiopharmaceutical Start Time (0018,1072), used with the Series Date when the
    /// date-time is absent.
    pub injection_time: Option<Time>,
    /// Radionuclide Total Dose (0018,1074), Bq.
    pub dose_bq: Option<f64>,
    /// Radionuclide Half Life (0018,1075), s.
    pub half_life_s: Option<f64>,
    /// Patient's Weight (0010,1030), kg.
    pub weight_kg: Option<f64>,
    /// Patient's Size (0010,1020), m.
    pub height_m: Option<f64>,
    /// Patient's Sex (0010,0040).
    pub sex: Option<Sex>,
    /// Philips SUV Scale Factor (7053,xx00) under creator "Philips PET Private Group".
    pub philips_suv_factor: Option<f64>,
    /// Philips Activity Concentration Scale Factor (7053,xx09), Bq/mL per count.
    pub philips_activity_factor: Option<f64>,
}

/// A factor from rescaled PET pixel values to SUV (g/mL), with the rule that produced it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SuvFactor {
    pub factor: f64,
    /// Human-readable, e.g. "BQML, decay START, scan time from Series Date/Time, ...".
    pub rule: String,
}

/// Why no SUV factor could be computed. Every variant names the attribute at fault; all are
/// permanent properties of the input series, so none is worth retrying.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrateError {
    #[error("missing attribute {name}")]
    MissingAttribute { name: &'static str },
    #[error("attribute {name} has an invalid value {value:?}: {reason}")]
    InvalidAttribute { name: &'static str, value: String, reason: &'static str },
    #[error("Corrected Image (0028,0051) lacks {flag}: SUV needs attenuation- and decay-corrected images")]
    CorrectedImageLacks { flag: &'static str },
    #[error("unsupported Units (0054,1001) {units:?}: expected BQML, CNTS or GML")]
    UnsupportedUnits { units: String },
    #[error("unsupported Decay Correction (0054,1102) {value:?}: expected START or ADMIN")]
    UnsupportedDecayCorrection { value: String },
    #[error("unsupported Patient's Sex (0010,0040) {value:?} for lean body mass: expected M or F")]
    UnsupportedSex { value: String },
    #[error("{name} ({injection}) is after the scan time ({scan}, from {scan_source})")]
    InjectionAfterScan { name: &'static str, injection: String, scan: String, scan_source: &'static str },
    #[error("{name} differs between instances of one series")]
    InconsistentAcrossInstances { name: &'static str },
    #[error("no PET instances")]
    NoInstances,
}

impl CalibrateError {
    /// Whether retrying could succeed: never, the series itself has to change.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

// Attribute names used in errors and rules, in one place so tests can match them.
pub const UNITS: &str = "Units (0054,1001)";
pub const DECAY_CORRECTION: &str = "Decay Correction (0054,1102)";
pub const CORRECTED_IMAGE: &str = "Corrected Image (0028,0051)";
pub const SERIES_DATE: &str = "Series Date (0008,0021)";
pub const SERIES_TIME: &str = "Series Time (0008,0031)";
pub const ACQUISITION_DATE_TIME: &str = "Acquisition Date (0008,0022) / Acquisition Time (0008,0032)";
pub const GE_SCAN_DATE_TIME: &str = "GE private scan date-time (0009,xx0D) \"GEMS_PETD_01\"";
pub const INJECTION_DATE_TIME: &str = "Radiopharmaceutical Start DateTime (0018,1078)";
pub const INJECTION_TIME: &str = "Radiopharmaceutical Start Time (0018,1072)";
pub const INJECTION_DATE_TIME_OR_TIME: &str =
    "Radiopharmaceutical Start DateTime (0018,1078) or Radiopharmaceutical Start Time (0018,1072)";
pub const TOTAL_DOSE: &str = "Radionuclide Total Dose (0018,1074)";
pub const HALF_LIFE: &str = "Radionuclide Half Life (0018,1075)";
pub const WEIGHT: &str = "Patient's Weight (0010,1030)";
pub const HEIGHT: &str = "Patient's Size (0010,1020)";
pub const SEX: &str = "Patient's Sex (0010,0040)";
pub const PHILIPS_SUV_FACTOR: &str = "Philips SUV Scale Factor (7053,xx00) \"Philips PET Private Group\"";
pub const PHILIPS_ACTIVITY_FACTOR: &str =
    "Philips Activity Concentration Scale Factor (7053,xx09) \"Philips PET Private Group\"";
pub const PHILIPS_SUV_OR_ACTIVITY_FACTOR: &str = "Philips SUV Scale Factor (7053,xx00) or Activity Concentration \
     Scale Factor (7053,xx09) \"Philips PET Private Group\" (required for Units CNTS)";

/// SUVbw factor (g/mL per rescaled pixel unit) by the QIBA vendor-neutral rules.
///
/// - Corrected Image must contain ATTN and DECY.
/// - BQML: weight × 1000 / decayed dose. With Decay Correction START the dose decays from the
///   injection to the scan time; with ADMIN the images are corrected to the injection, so the
///   dose is used as is.
/// - CNTS: the Philips SUV scale factor (7053,1000); without it, the activity-concentration
///   factor (7053,1009) times the BQML factor.
/// - GML: already SUVbw, factor 1 (QIBA: GML is taken to mean SUVbw, not SUVlbm).
///
/// Scan time (START): Series Date/Time when not after the earliest Acquisition Date/Time;
/// otherwise (a post-processed series) the GE private scan date-time if present, else the
/// earliest Acquisition Date/Time. Injection: Radiopharmaceutical Start DateTime, else the Start
/// Time on the Series Date, a day earlier when that would be after the scan (midnight).
pub fn suv_bw_factor(h: &PetHeader) -> Result<SuvFactor, CalibrateError> {
    check_corrected_image(h)?;
    match h.units.as_ref().ok_or(CalibrateError::MissingAttribute { name: UNITS })? {
        Units::Bqml => {
            let (factor, rule) = bqml_factor(h)?;
            Ok(SuvFactor { factor, rule: format!("BQML, {rule}") })
        }
        Units::Cnts => cnts_factor(h),
        // QIBA does not check weight, dose or times here: the pixels are SUVbw already.
        Units::Gml => Ok(SuvFactor { factor: 1.0, rule: "GML (pixel values are SUVbw)".to_string() }),
        Units::Other(u) => Err(CalibrateError::UnsupportedUnits { units: u.clone() }),
    }
}

/// SUL factor (SUV normalised by lean body mass, Janmahasatian formula): the SUVbw factor
/// times lean body mass / weight. Needs Patient's Sex (M or F) and Size besides the SUVbw
/// attributes.
pub fn sul_factor(h: &PetHeader) -> Result<SuvFactor, CalibrateError> {
    let bw = suv_bw_factor(h)?;
    let weight_kg = positive(h.weight_kg, WEIGHT)?;
    let height_m = positive(h.height_m, HEIGHT)?;
    if height_m > 3.0 {
        // Patient's Size is in metres; a value such as 175 was entered in centimetres.
        return Err(CalibrateError::InvalidAttribute {
            name: HEIGHT,
            value: height_m.to_string(),
            reason: "must be in metres",
        });
    }
    let sex = h.sex.as_ref().ok_or(CalibrateError::MissingAttribute { name: SEX })?;
    let lbm_kg = lean_body_mass_kg(weight_kg, height_m, sex)?;
    Ok(SuvFactor {
        factor: bw.factor * lbm_kg / weight_kg,
        rule: format!("SUL (Janmahasatian lean body mass {lbm_kg:.2} kg) from SUVbw: {}", bw.rule),
    })
}

/// Lean body mass in kg by Janmahasatian et al. (2005):
/// male 9270·W / (6680 + 216·BMI), female 9270·W / (8780 + 244·BMI), BMI = W / H².
pub fn lean_body_mass_kg(weight_kg: f64, height_m: f64, sex: &Sex) -> Result<f64, CalibrateError> {
    let bmi = weight_kg / (height_m * height_m);
    match sex {
        Sex::Male => Ok(9270.0 * weight_kg / (6680.0 + 216.0 * bmi)),
        Sex::Female => Ok(9270.0 * weight_kg / (8780.0 + 244.0 * bmi)),
        Sex::Other(v) => Err(CalibrateError::UnsupportedSex { value: v.clone() }),
    }
}

/// Merge per-instance headers into one series header: series-level values must agree (as
/// calculate-suv's single-series check demands); acquisition times are concatenated.
pub fn merge_series(headers: Vec<PetHeader>) -> Result<PetHeader, CalibrateError> {
    let mut it = headers.into_iter();
    let mut series = it.next().ok_or(CalibrateError::NoInstances)?;
    for h in it {
        let same = |ok: bool, name: &'static str| {
            if ok { Ok(()) } else { Err(CalibrateError::InconsistentAcrossInstances { name }) }
        };
        same(h.units == series.units, UNITS)?;
        same(h.decay_correction == series.decay_correction, DECAY_CORRECTION)?;
        same(h.corrected_image == series.corrected_image, CORRECTED_IMAGE)?;
        same(h.series_date == series.series_date, SERIES_DATE)?;
        same(h.series_time == series.series_time, SERIES_TIME)?;
        same(h.ge_scan_datetime == series.ge_scan_datetime, GE_SCAN_DATE_TIME)?;
        same(h.injection_datetime == series.injection_datetime, INJECTION_DATE_TIME)?;
        same(h.injection_time == series.injection_time, INJECTION_TIME)?;
        same(h.dose_bq == series.dose_bq, TOTAL_DOSE)?;
        same(h.half_life_s == series.half_life_s, HALF_LIFE)?;
        same(h.weight_kg == series.weight_kg, WEIGHT)?;
        same(h.height_m == series.height_m, HEIGHT)?;
        same(h.sex == series.sex, SEX)?;
        // One factor per series: per-slice Philips factors would need per-slice SUV.
        same(h.philips_suv_factor == series.philips_suv_factor, PHILIPS_SUV_FACTOR)?;
        same(h.philips_activity_factor == series.philips_activity_factor, PHILIPS_ACTIVITY_FACTOR)?;
        series.acquisition.extend(h.acquisition);
    }
    Ok(series)
}

fn check_corrected_image(h: &PetHeader) -> Result<(), CalibrateError> {
    let flags = h.corrected_image.as_ref().ok_or(CalibrateError::MissingAttribute { name: CORRECTED_IMAGE })?;
    for flag in ["ATTN", "DECY"] {
        if !flags.iter().any(|f| f.trim() == flag) {
            return Err(CalibrateError::CorrectedImageLacks { flag });
        }
    }
    Ok(())
}

fn cnts_factor(h: &PetHeader) -> Result<SuvFactor, CalibrateError> {
    // Zero is treated as absent, as calculate-suv does.
    if let Some(f) = h.philips_suv_factor.filter(|&f| f != 0.0) {
        let factor = finite_positive(f, PHILIPS_SUV_FACTOR)?;
        return Ok(SuvFactor { factor, rule: "CNTS, Philips SUV Scale Factor (7053,1000)".to_string() });
    }
    if let Some(a) = h.philips_activity_factor.filter(|&a| a != 0.0) {
        // (7053,1009) scales rescaled counts to Bq/mL; then proceed as for BQML.
        let a = finite_positive(a, PHILIPS_ACTIVITY_FACTOR)?;
        let (bqml, rule) = bqml_factor(h)?;
        return Ok(SuvFactor {
            factor: a * bqml,
            rule: format!("CNTS, Philips Activity Concentration Scale Factor (7053,1009) to Bq/mL, then {rule}"),
        });
    }
    Err(CalibrateError::MissingAttribute { name: PHILIPS_SUV_OR_ACTIVITY_FACTOR })
}

/// SUVbw per Bq/mL, with the part of the rule that chose the times.
fn bqml_factor(h: &PetHeader) -> Result<(f64, String), CalibrateError> {
    let weight_kg = positive(h.weight_kg, WEIGHT)?;
    let dose_bq = positive(h.dose_bq, TOTAL_DOSE)?;
    let decay = h.decay_correction.as_ref().ok_or(CalibrateError::MissingAttribute { name: DECAY_CORRECTION })?;
    let (decayed_dose_bq, rule) = match decay {
        // Pixel values are corrected back to the injection: no decay of the dose.
        DecayCorrection::Admin => (dose_bq, "decay ADMIN (dose not decayed)".to_string()),
        DecayCorrection::Start => {
            let half_life_s = positive(h.half_life_s, HALF_LIFE)?;
            let (scan, scan_source) = scan_datetime(h)?;
            let (injection, injection_name, injection_rule) = injection_datetime(h, scan)?;
            let decay_s = (scan - injection).as_seconds_f64();
            if decay_s < 0.0 {
                return Err(CalibrateError::InjectionAfterScan {
                    name: injection_name,
                    injection: injection.to_string(),
                    scan: scan.to_string(),
                    scan_source,
                });
            }
            (
                dose_bq * (-decay_s / half_life_s).exp2(),
                format!(
                    "decay START, scan time from {scan_source}, injection from {injection_rule}, decay {decay_s} s"
                ),
            )
        }
        DecayCorrection::Other(v) => return Err(CalibrateError::UnsupportedDecayCorrection { value: v.clone() }),
    };
    Ok((weight_kg * 1000.0 / decayed_dose_bq, rule))
}

/// The scan date-time by the QIBA rule, and which attribute gave it.
fn scan_datetime(h: &PetHeader) -> Result<(PrimitiveDateTime, &'static str), CalibrateError> {
    let date = h.series_date.ok_or(CalibrateError::MissingAttribute { name: SERIES_DATE })?;
    let time = h.series_time.ok_or(CalibrateError::MissingAttribute { name: SERIES_TIME })?;
    let series = PrimitiveDateTime::new(date, time);
    let earliest = h
        .acquisition
        .iter()
        .try_fold(None::<PrimitiveDateTime>, |min, a| {
            let a = a.ok_or(CalibrateError::MissingAttribute { name: ACQUISITION_DATE_TIME })?;
            Ok(Some(min.map_or(a, |m| m.min(a))))
        })?
        .ok_or(CalibrateError::MissingAttribute { name: ACQUISITION_DATE_TIME })?;
    if series <= earliest {
        Ok((series, "Series Date/Time"))
    } else if let Some(ge) = h.ge_scan_datetime {
        // Series Date/Time after the acquisition: a post-processed series (GE writes the
        // reconstruction time); GE keeps the real scan start privately.
        Ok((ge, "GE private scan date-time (0009,xx0D)"))
    } else {
        Ok((earliest, "earliest Acquisition Date/Time"))
    }
}

/// The injection date-time, the attribute name it came from and the rule text.
fn injection_datetime(
    h: &PetHeader,
    scan: PrimitiveDateTime,
) -> Result<(PrimitiveDateTime, &'static str, &'static str), CalibrateError> {
    if let Some(dt) = h.injection_datetime {
        return Ok((dt, INJECTION_DATE_TIME, "Radiopharmaceutical Start DateTime"));
    }
    let time = h.injection_time.ok_or(CalibrateError::MissingAttribute { name: INJECTION_DATE_TIME_OR_TIME })?;
    // The start time has no date: assume the Series Date, but an injection cannot follow the
    // scan, so a start time later than the scan means the day before (scan past midnight).
    let date = h.series_date.ok_or(CalibrateError::MissingAttribute { name: SERIES_DATE })?;
    let same_day = PrimitiveDateTime::new(date, time);
    if same_day > scan {
        let day_before = same_day.checked_sub(Duration::DAY).ok_or(CalibrateError::InvalidAttribute {
            name: SERIES_DATE,
            value: date.to_string(),
            reason: "out of range",
        })?;
        Ok((day_before, INJECTION_TIME, "Radiopharmaceutical Start Time on the day before the Series Date (midnight)"))
    } else {
        Ok((same_day, INJECTION_TIME, "Radiopharmaceutical Start Time on the Series Date"))
    }
}

fn positive(v: Option<f64>, name: &'static str) -> Result<f64, CalibrateError> {
    finite_positive(v.ok_or(CalibrateError::MissingAttribute { name })?, name)
}

fn finite_positive(v: f64, name: &'static str) -> Result<f64, CalibrateError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(CalibrateError::InvalidAttribute { name, value: v.to_string(), reason: "must be a positive number" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime, time};

    /// A BQML START header: F-18-like half-life 6000 s (so decay times are whole half-lives),
    /// 400 MBq injected at 08:00:00, 80 kg, series starts 09:40:00 = injection + 6000 s.
    fn bqml() -> PetHeader {
        PetHeader {
            units: Some(Units::Bqml),
            decay_correction: Some(DecayCorrection::Start),
            corrected_image: Some(["NORM", "DTIM", "ATTN", "SCAT", "DECY", "RAN"].map(String::from).to_vec()),
            series_date: Some(date!(2025 - 03 - 01)),
            series_time: Some(time!(09:40:00)),
            acquisition: vec![Some(datetime!(2025-03-01 09:40:00)), Some(datetime!(2025-03-01 09:42:00))],
            ge_scan_datetime: None,
            injection_datetime: Some(datetime!(2025-03-01 08:00:00)),
            injection_time: Some(time!(08:00:00)),
            dose_bq: Some(400e6),
            half_life_s: Some(6000.0),
            weight_kg: Some(80.0),
            height_m: Some(2.0),
            sex: Some(Sex::Male),
            philips_suv_factor: None,
            philips_activity_factor: None,
        }
    }

    fn assert_close(got: f64, want: f64) {
        assert!(((got - want) / want).abs() < 1e-12, "got {got}, want {want}");
    }

    fn missing(h: &PetHeader) -> &'static str {
        match suv_bw_factor(h) {
            Err(CalibrateError::MissingAttribute { name }) => name,
            other => panic!("expected a missing attribute, got {other:?}"),
        }
    }

    #[test]
    fn bqml_start_series_time() {
        // decay 09:40 - 08:00 = 6000 s = 1 half-life: decayed dose 400e6 / 2 = 200e6 Bq;
        // factor 80 kg * 1000 / 200e6 = 4e-4.
        let f = suv_bw_factor(&bqml()).expect("factor");
        assert_close(f.factor, 4e-4);
        assert!(f.rule.contains("BQML") && f.rule.contains("decay START"), "{}", f.rule);
        assert!(f.rule.contains("Series Date/Time"), "{}", f.rule);
    }

    #[test]
    fn bqml_start_non_integer_decay() {
        // decay 09:40 - 08:50 = 3000 s = half a half-life: 400e6 * 2^-0.5 = 282.842712e6 Bq;
        // factor 80000 / 282.842712e6 = 2.828427e-4 (= 2e-4 * sqrt 2).
        let mut h = bqml();
        h.injection_datetime = Some(datetime!(2025-03-01 08:50:00));
        assert_close(suv_bw_factor(&h).expect("factor").factor, 2e-4 * 2f64.sqrt());
    }

    #[test]
    fn admin_decay_uses_dose_as_injected() {
        // ADMIN: no decay; 80000 / 400e6 = 2e-4 (the scan time does not matter).
        let mut h = bqml();
        h.decay_correction = Some(DecayCorrection::Admin);
        h.series_time = None;
        h.acquisition.clear();
        let f = suv_bw_factor(&h).expect("factor");
        assert_close(f.factor, 2e-4);
        assert!(f.rule.contains("ADMIN"), "{}", f.rule);
    }

    #[test]
    fn earliest_acquisition_when_series_time_is_later_and_no_ge_time() {
        // Series 13:00 is after the acquisitions; the earliest acquisition is 11:20 (not the
        // first listed): decay 11:20 - 08:00 = 12000 s = 2 half-lives: 400e6 / 4 = 100e6 Bq;
        // factor 80000 / 100e6 = 8e-4.
        let mut h = bqml();
        h.series_time = Some(time!(13:00:00));
        h.acquisition = vec![
            Some(datetime!(2025-03-01 11:25:00)),
            Some(datetime!(2025-03-01 11:20:00)),
            Some(datetime!(2025-03-01 11:30:00)),
        ];
        let f = suv_bw_factor(&h).expect("factor");
        assert_close(f.factor, 8e-4);
        assert!(f.rule.contains("earliest Acquisition"), "{}", f.rule);
    }

    #[test]
    fn series_time_equal_to_earliest_acquisition_is_used() {
        // "not after": series 11:20 == earliest acquisition 11:20 -> series; 2 half-lives: 8e-4.
        let mut h = bqml();
        h.series_time = Some(time!(11:20:00));
        h.acquisition = vec![Some(datetime!(2025-03-01 11:20:00))];
        h.ge_scan_datetime = Some(datetime!(2025-03-01 13:00:00));
        let f = suv_bw_factor(&h).expect("factor");
        assert_close(f.factor, 8e-4);
        assert!(f.rule.contains("Series Date/Time"), "{}", f.rule);
    }

    #[test]
    fn ge_private_scan_time_when_series_time_is_later() {
        // Series 14:00 after the acquisitions (13:05, 13:10); GE private scan start 13:00:
        // decay 13:00 - 08:00 = 18000 s = 3 half-lives: 400e6 / 8 = 50e6 Bq;
        // factor 80000 / 50e6 = 1.6e-3 (the acquisition 13:05 would give a different value).
        let mut h = bqml();
        h.series_time = Some(time!(14:00:00));
        h.acquisition = vec![Some(datetime!(2025-03-01 13:05:00)), Some(datetime!(2025-03-01 13:10:00))];
        h.ge_scan_datetime = Some(datetime!(2025-03-01 13:00:00));
        let f = suv_bw_factor(&h).expect("factor");
        assert_close(f.factor, 1.6e-3);
        assert!(f.rule.contains("GE private"), "{}", f.rule);
    }

    #[test]
    fn start_time_on_series_date_without_date_time() {
        // No (0018,1078): 08:00 on the Series Date; 1 half-life as in the first test: 4e-4.
        let mut h = bqml();
        h.injection_datetime = None;
        let f = suv_bw_factor(&h).expect("factor");
        assert_close(f.factor, 4e-4);
        assert!(f.rule.contains("Start Time on the Series Date"), "{}", f.rule);
    }

    #[test]
    fn start_date_time_wins_over_start_time() {
        // (0018,1078) 08:00 is used; the contradicting (0018,1072) 06:20 would give 2 half-lives.
        let mut h = bqml();
        h.injection_time = Some(time!(06:20:00));
        assert_close(suv_bw_factor(&h).expect("factor").factor, 4e-4);
    }

    #[test]
    fn start_time_crossing_midnight_is_the_day_before() {
        // Series 2025-03-02 00:40, injection time 23:00 (no date): 23:00 on 03-02 would follow
        // the scan, so it is 2025-03-01 23:00; decay 1 h 40 min = 6000 s = 1 half-life:
        // 80000 / 200e6 = 4e-4.
        let mut h = bqml();
        h.series_date = Some(date!(2025 - 03 - 02));
        h.series_time = Some(time!(00:40:00));
        h.acquisition = vec![Some(datetime!(2025-03-02 00:40:00))];
        h.injection_datetime = None;
        h.injection_time = Some(time!(23:00:00));
        let f = suv_bw_factor(&h).expect("factor");
        assert_close(f.factor, 4e-4);
        assert!(f.rule.contains("midnight"), "{}", f.rule);
    }

    #[test]
    fn injection_date_time_after_scan_is_an_error() {
        let mut h = bqml();
        h.injection_datetime = Some(datetime!(2025-03-01 10:00:00));
        match suv_bw_factor(&h) {
            Err(CalibrateError::InjectionAfterScan { name, .. }) => assert_eq!(name, INJECTION_DATE_TIME),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cnts_with_philips_suv_factor() {
        // The private SUV scale factor is the answer as is: 1.23e-4.
        let mut h = bqml();
        h.units = Some(Units::Cnts);
        h.philips_suv_factor = Some(1.23e-4);
        h.philips_activity_factor = Some(0.05);
        let f = suv_bw_factor(&h).expect("factor");
        assert_close(f.factor, 1.23e-4);
        assert!(f.rule.contains("7053,1000"), "{}", f.rule);
    }

    #[test]
    fn cnts_with_activity_concentration_factor_only() {
        // (7053,1009) 0.05 Bq/mL per count times the BQML factor 4e-4: 2e-5. A zero SUV scale
        // factor counts as absent.
        let mut h = bqml();
        h.units = Some(Units::Cnts);
        h.philips_suv_factor = Some(0.0);
        h.philips_activity_factor = Some(0.05);
        let f = suv_bw_factor(&h).expect("factor");
        assert_close(f.factor, 2e-5);
        assert!(f.rule.contains("7053,1009"), "{}", f.rule);
    }

    #[test]
    fn cnts_without_philips_factors_is_an_error() {
        let mut h = bqml();
        h.units = Some(Units::Cnts);
        assert_eq!(missing(&h), PHILIPS_SUV_OR_ACTIVITY_FACTOR);
    }

    #[test]
    fn gml_is_already_suv() {
        let mut h = bqml();
        h.units = Some(Units::Gml);
        h.dose_bq = None;
        assert_eq!(suv_bw_factor(&h).expect("factor").factor, 1.0);
    }

    #[test]
    fn unsupported_units_and_decay_correction() {
        let mut h = bqml();
        h.units = Some(Units::parse("PROPCNTS"));
        assert_eq!(suv_bw_factor(&h), Err(CalibrateError::UnsupportedUnits { units: "PROPCNTS".into() }));
        let mut h = bqml();
        h.decay_correction = Some(DecayCorrection::parse("NONE"));
        assert_eq!(suv_bw_factor(&h), Err(CalibrateError::UnsupportedDecayCorrection { value: "NONE".into() }));
    }

    #[test]
    fn corrected_image_must_have_attn_and_decy() {
        let mut h = bqml();
        h.corrected_image = Some(vec!["NORM".into(), "DECY".into()]);
        assert_eq!(suv_bw_factor(&h), Err(CalibrateError::CorrectedImageLacks { flag: "ATTN" }));
        h.corrected_image = Some(vec!["ATTN".into(), "SCAT".into()]);
        assert_eq!(suv_bw_factor(&h), Err(CalibrateError::CorrectedImageLacks { flag: "DECY" }));
        h.corrected_image = None;
        assert_eq!(missing(&h), CORRECTED_IMAGE);
    }

    #[test]
    fn each_missing_attribute_is_named() {
        type Edit = fn(&mut PetHeader);
        let cases: [(Edit, &str); 9] = [
            (|h| h.units = None, UNITS),
            (|h| h.decay_correction = None, DECAY_CORRECTION),
            (|h| h.dose_bq = None, TOTAL_DOSE),
            (|h| h.half_life_s = None, HALF_LIFE),
            (|h| h.weight_kg = None, WEIGHT),
            (|h| h.series_date = None, SERIES_DATE),
            (|h| h.series_time = None, SERIES_TIME),
            (|h| h.acquisition.clear(), ACQUISITION_DATE_TIME),
            (
                |h| {
                    h.injection_datetime = None;
                    h.injection_time = None;
                },
                INJECTION_DATE_TIME_OR_TIME,
            ),
        ];
        for (edit, name) in cases {
            let mut h = bqml();
            edit(&mut h);
            assert_eq!(missing(&h), name);
        }
        // One instance without an acquisition time is as bad as none.
        let mut h = bqml();
        h.acquisition.push(None);
        assert_eq!(missing(&h), ACQUISITION_DATE_TIME);
    }

    #[test]
    fn non_positive_values_are_invalid() {
        let mut h = bqml();
        h.weight_kg = Some(0.0);
        assert!(matches!(suv_bw_factor(&h), Err(CalibrateError::InvalidAttribute { name: WEIGHT, .. })));
        let mut h = bqml();
        h.half_life_s = Some(-1.0);
        assert!(matches!(suv_bw_factor(&h), Err(CalibrateError::InvalidAttribute { name: HALF_LIFE, .. })));
    }

    #[test]
    fn sul_janmahasatian() {
        // 80 kg, 2.0 m: BMI 80 / 4 = 20.
        // Male LBM = 9270 * 80 / (6680 + 216 * 20) = 741600 / 11000 = 67.4182 kg;
        // SUL factor = 4e-4 * 67.4182 / 80 = 4e-4 * 9270 / 11000 = 3.370909e-4.
        let h = bqml();
        assert_close(lean_body_mass_kg(80.0, 2.0, &Sex::Male).expect("lbm"), 741_600.0 / 11_000.0);
        assert_close(sul_factor(&h).expect("sul").factor, 4e-4 * 9270.0 / 11_000.0);
        // Female LBM = 9270 * 80 / (8780 + 244 * 20) = 741600 / 13660 = 54.2899 kg;
        // SUL factor = 4e-4 * 9270 / 13660 = 2.714495e-4.
        let mut h = bqml();
        h.sex = Some(Sex::Female);
        assert_close(sul_factor(&h).expect("sul").factor, 4e-4 * 9270.0 / 13_660.0);
    }

    #[test]
    fn sul_needs_sex_and_height() {
        let mut h = bqml();
        h.height_m = None;
        assert_eq!(sul_factor(&h), Err(CalibrateError::MissingAttribute { name: HEIGHT }));
        let mut h = bqml();
        h.sex = None;
        assert_eq!(sul_factor(&h), Err(CalibrateError::MissingAttribute { name: SEX }));
        h.sex = Some(Sex::parse("O"));
        assert_eq!(sul_factor(&h), Err(CalibrateError::UnsupportedSex { value: "O".into() }));
    }

    #[test]
    fn merge_concatenates_acquisitions_and_rejects_mixed_series() {
        let one = |t| PetHeader { acquisition: vec![Some(t)], ..bqml() };
        let merged = merge_series(vec![one(datetime!(2025-03-01 09:44:00)), one(datetime!(2025-03-01 09:40:00))])
            .expect("merge");
        assert_eq!(merged.acquisition.len(), 2);
        assert_close(suv_bw_factor(&merged).expect("factor").factor, 4e-4);
        let mut other = one(datetime!(2025-03-01 09:40:00));
        other.dose_bq = Some(1.0);
        assert_eq!(
            merge_series(vec![bqml(), other]),
            Err(CalibrateError::InconsistentAcrossInstances { name: TOTAL_DOSE })
        );
        assert_eq!(merge_series(vec![]), Err(CalibrateError::NoInstances));
    }
}
