//! Reads the PET header attributes that SUV calibration needs from DICOM instances into a
//! [`PetHeader`] of plain values. This is the only place where `calibrate` inputs touch tags.
//!
//! Private attributes are found through their private creator, as PS3.5 7.8 requires: the
//! block number is wherever the creator string was reserved, not a fixed 0x10.

use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use time::{Date, Month, PrimitiveDateTime, Time};

use crate::calibrate::{self, CalibrateError, DecayCorrection, PetHeader, Sex, Units};

pub const GE_PRIVATE_CREATOR: &str = "GEMS_PETD_01";
pub const PHILIPS_PRIVATE_CREATOR: &str = "Philips PET Private Group";

/// The header of one PET instance (`acquisition` has one entry). Absent attributes are left
/// `None` for `calibrate` to name when a rule needs them; malformed ones are an error here.
pub fn pet_header(obj: &InMemDicomObject) -> Result<PetHeader, CalibrateError> {
    // QIBA and calculate-suv use the first radiopharmaceutical item.
    let rp =
        obj.get(tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE).and_then(|e| e.items()).and_then(|items| items.first());
    let in_rp = |tag| rp.and_then(|item| text(item, tag));
    let acquisition = match (text(obj, tags::ACQUISITION_DATE), text(obj, tags::ACQUISITION_TIME)) {
        (Some(d), Some(t)) => Some(PrimitiveDateTime::new(
            date(&d, "Acquisition Date (0008,0022)")?,
            time(&t, "Acquisition Time (0008,0032)")?,
        )),
        _ => None,
    };
    Ok(PetHeader {
        units: text(obj, tags::UNITS).map(|s| Units::parse(&s)),
        decay_correction: text(obj, tags::DECAY_CORRECTION).map(|s| DecayCorrection::parse(&s)),
        corrected_image: text(obj, tags::CORRECTED_IMAGE)
            .map(|s| s.split('\\').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect()),
        series_date: text(obj, tags::SERIES_DATE).map(|s| date(&s, calibrate::SERIES_DATE)).transpose()?,
        series_time: text(obj, tags::SERIES_TIME).map(|s| time(&s, calibrate::SERIES_TIME)).transpose()?,
        acquisition: vec![acquisition],
        ge_scan_datetime: private_text(obj, 0x0009, GE_PRIVATE_CREATOR, 0x0D)
            .map(|s| datetime(&s, calibrate::GE_SCAN_DATE_TIME))
            .transpose()?,
        injection_datetime: in_rp(tags::RADIOPHARMACEUTICAL_START_DATE_TIME)
            .map(|s| datetime(&s, calibrate::INJECTION_DATE_TIME))
            .transpose()?,
        injection_time: in_rp(tags::RADIOPHARMACEUTICAL_START_TIME)
            .map(|s| time(&s, calibrate::INJECTION_TIME))
            .transpose()?,
        dose_bq: in_rp(tags::RADIONUCLIDE_TOTAL_DOSE).map(|s| number(&s, calibrate::TOTAL_DOSE)).transpose()?,
        half_life_s: in_rp(tags::RADIONUCLIDE_HALF_LIFE).map(|s| number(&s, calibrate::HALF_LIFE)).transpose()?,
        weight_kg: text(obj, tags::PATIENT_WEIGHT).map(|s| number(&s, calibrate::WEIGHT)).transpose()?,
        height_m: text(obj, tags::PATIENT_SIZE).map(|s| number(&s, calibrate::HEIGHT)).transpose()?,
        sex: text(obj, tags::PATIENT_SEX).map(|s| Sex::parse(&s)),
        philips_suv_factor: private_text(obj, 0x7053, PHILIPS_PRIVATE_CREATOR, 0x00)
            .map(|s| number(&s, calibrate::PHILIPS_SUV_FACTOR))
            .transpose()?,
        philips_activity_factor: private_text(obj, 0x7053, PHILIPS_PRIVATE_CREATOR, 0x09)
            .map(|s| number(&s, calibrate::PHILIPS_ACTIVITY_FACTOR))
            .transpose()?,
    })
}

/// The header of a whole series: per-instance headers merged by [`calibrate::merge_series`]
/// (series-level values must agree; every Acquisition Date/Time is kept for the QIBA rule).
pub fn series_pet_header<'a>(
    objs: impl IntoIterator<Item = &'a InMemDicomObject>,
) -> Result<PetHeader, CalibrateError> {
    let headers = objs.into_iter().map(pet_header).collect::<Result<Vec<_>, _>>()?;
    calibrate::merge_series(headers)
}

/// A non-empty trimmed string value. Values read as UN (private tags in implicit VR files)
/// are taken as their bytes, since their text is the encoded string.
fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    // `get`, not `element`: a missing tag must not build an error (dicom-rs captures a
    // backtrace in it), and the private-creator search probes hundreds of absent tags.
    let e = obj.get(tag)?;
    let s = if e.vr() == VR::UN {
        String::from_utf8_lossy(&e.to_bytes().ok()?).into_owned()
    } else {
        e.to_str().ok()?.into_owned()
    };
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

/// A private attribute: find the block the creator reserved in (gggg,0010-00FF), then the
/// element `low` in it.
fn private_text(obj: &InMemDicomObject, group: u16, creator: &str, low: u8) -> Option<String> {
    (0x10u16..=0xFF)
        .find(|&block| text(obj, Tag(group, block)).as_deref() == Some(creator))
        .and_then(|block| text(obj, Tag(group, (block << 8) | u16::from(low))))
}

fn invalid(name: &'static str, value: &str, reason: &'static str) -> CalibrateError {
    CalibrateError::InvalidAttribute { name, value: value.to_string(), reason }
}

fn number(s: &str, name: &'static str) -> Result<f64, CalibrateError> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| invalid(name, s, "not a decimal number"))
}

fn date(s: &str, name: &'static str) -> Result<Date, CalibrateError> {
    parse_da(s).ok_or_else(|| invalid(name, s, "not a DICOM date (YYYYMMDD)"))
}

fn time(s: &str, name: &'static str) -> Result<Time, CalibrateError> {
    parse_tm(s).ok_or_else(|| invalid(name, s, "not a DICOM time (HHMMSS.FFFFFF)"))
}

fn datetime(s: &str, name: &'static str) -> Result<PrimitiveDateTime, CalibrateError> {
    parse_dt(s).ok_or_else(|| invalid(name, s, "not a DICOM date-time (YYYYMMDDHHMMSS.FFFFFF)"))
}

fn digits(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

/// DA: `YYYYMMDD`, or the ACR-NEMA `YYYY.MM.DD` still found in old files.
pub fn parse_da(s: &str) -> Option<Date> {
    let s = s.trim();
    let compact: String;
    let s = if s.len() == 10 && s.as_bytes()[4] == b'.' && s.as_bytes()[7] == b'.' {
        compact = s.replace('.', "");
        compact.as_str()
    } else {
        s
    };
    if s.len() != 8 {
        return None;
    }
    let year = i32::try_from(digits(&s[0..4])?).ok()?;
    let month = Month::try_from(u8::try_from(digits(&s[4..6])?).ok()?).ok()?;
    Date::from_calendar_date(year, month, u8::try_from(digits(&s[6..8])?).ok()?).ok()
}

/// TM: `HH`, `HHMM`, `HHMMSS` or `HHMMSS.F` to `.FFFFFF`; also the ACR-NEMA `HH:MM:SS`.
pub fn parse_tm(s: &str) -> Option<Time> {
    let s = s.trim().replace(':', "");
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s.as_str(), None),
    };
    if !matches!(whole.len(), 2 | 4 | 6) || (frac.is_some() && whole.len() != 6) {
        return None;
    }
    let field = |i: usize| if whole.len() > i { digits(&whole[i..i + 2]) } else { Some(0) };
    let micro = match frac {
        Some(f) if (1..=6).contains(&f.len()) => digits(f)? * 10u32.pow(6 - f.len() as u32),
        Some(_) => return None,
        None => 0,
    };
    let [h, m, sec] = [field(0)?, field(2)?, field(4)?].map(|v| u8::try_from(v).unwrap_or(u8::MAX));
    Time::from_hms_micro(h, m, sec, micro).ok()
}

/// DT: `YYYYMMDDHH[MM[SS[.F]]]` with an optional `&ZZXX` UTC offset, which is ignored: the
/// other times in the rule (Series, Acquisition) are local times without an offset.
pub fn parse_dt(s: &str) -> Option<PrimitiveDateTime> {
    let s = s.trim();
    let s = match s.get(8..).and_then(|rest| rest.find(['+', '-'])) {
        Some(i) => &s[..8 + i],
        None => s,
    };
    if s.len() < 10 {
        return None;
    }
    Some(PrimitiveDateTime::new(parse_da(s.get(0..8)?)?, parse_tm(s.get(8..)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, value::DataSetSequence};
    use time::macros::{date, datetime, time};

    fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: &str) {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }

    fn instance() -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        put(&mut o, tags::UNITS, VR::CS, "BQML");
        put(&mut o, tags::DECAY_CORRECTION, VR::CS, "START");
        put(&mut o, tags::CORRECTED_IMAGE, VR::CS, "NORM\\ATTN\\DECY");
        put(&mut o, tags::SERIES_DATE, VR::DA, "20250301");
        put(&mut o, tags::SERIES_TIME, VR::TM, "094000");
        put(&mut o, tags::ACQUISITION_DATE, VR::DA, "20250301");
        put(&mut o, tags::ACQUISITION_TIME, VR::TM, "094000.000000");
        put(&mut o, tags::PATIENT_WEIGHT, VR::DS, "80");
        put(&mut o, tags::PATIENT_SIZE, VR::DS, "1.75 ");
        put(&mut o, tags::PATIENT_SEX, VR::CS, "F");
        let mut rp = InMemDicomObject::new_empty();
        put(&mut rp, tags::RADIOPHARMACEUTICAL_START_TIME, VR::TM, "080000");
        put(&mut rp, tags::RADIOPHARMACEUTICAL_START_DATE_TIME, VR::DT, "20250301080000.000000+0100");
        put(&mut rp, tags::RADIONUCLIDE_TOTAL_DOSE, VR::DS, "4.0e8");
        put(&mut rp, tags::RADIONUCLIDE_HALF_LIFE, VR::DS, "6000");
        o.put(DataElement::new(
            tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![rp]),
        ));
        o
    }

    #[test]
    fn reads_standard_attributes() {
        let h = pet_header(&instance()).expect("header");
        assert_eq!(h.units, Some(Units::Bqml));
        assert_eq!(h.decay_correction, Some(DecayCorrection::Start));
        assert_eq!(h.corrected_image, Some(vec!["NORM".into(), "ATTN".into(), "DECY".into()]));
        assert_eq!(h.series_date, Some(date!(2025 - 03 - 01)));
        assert_eq!(h.series_time, Some(time!(09:40:00)));
        assert_eq!(h.acquisition, vec![Some(datetime!(2025-03-01 09:40:00))]);
        assert_eq!(h.injection_datetime, Some(datetime!(2025-03-01 08:00:00)));
        assert_eq!(h.injection_time, Some(time!(08:00:00)));
        assert_eq!(
            (h.dose_bq, h.half_life_s, h.weight_kg, h.height_m),
            (Some(4e8), Some(6000.0), Some(80.0), Some(1.75))
        );
        assert_eq!(h.sex, Some(Sex::Female));
        assert_eq!((h.ge_scan_datetime, h.philips_suv_factor, h.philips_activity_factor), (None, None, None));
        // 1 half-life of decay: 80000 / 200e6.
        let f = calibrate::suv_bw_factor(&h).expect("factor").factor;
        assert!((f - 4e-4).abs() < 1e-15, "{f}");
    }

    #[test]
    fn private_attributes_are_found_through_their_creator() {
        let mut o = instance();
        // Another creator holds block 0x10 with a decoy at (0009,100D); GE's block is 0x11.
        put(&mut o, Tag(0x0009, 0x0010), VR::LO, "SOME OTHER CREATOR");
        put(&mut o, Tag(0x0009, 0x100D), VR::DT, "19990101000000");
        put(&mut o, Tag(0x0009, 0x0011), VR::LO, "GEMS_PETD_01 ");
        put(&mut o, Tag(0x0009, 0x110D), VR::DT, "20250301093000.00");
        // Philips in block 0x12, its SUV factor written as UN (as implicit VR files read).
        put(&mut o, Tag(0x7053, 0x0012), VR::LO, PHILIPS_PRIVATE_CREATOR);
        o.put(DataElement::new(Tag(0x7053, 0x1200), VR::UN, PrimitiveValue::from(b"0.000123".to_vec())));
        put(&mut o, Tag(0x7053, 0x1209), VR::DS, "0.05");
        let h = pet_header(&o).expect("header");
        assert_eq!(h.ge_scan_datetime, Some(datetime!(2025-03-01 09:30:00)));
        assert_eq!(h.philips_suv_factor, Some(0.000123));
        assert_eq!(h.philips_activity_factor, Some(0.05));
        // Without a creator the element is not read, whatever sits at xx0D.
        let mut o = instance();
        put(&mut o, Tag(0x0009, 0x100D), VR::DT, "20250301093000");
        assert_eq!(pet_header(&o).expect("header").ge_scan_datetime, None);
    }

    #[test]
    fn missing_sequence_leaves_dose_absent_for_calibrate_to_name() {
        let mut o = instance();
        o.remove_element(tags::RADIOPHARMACEUTICAL_INFORMATION_SEQUENCE);
        let h = pet_header(&o).expect("header");
        assert_eq!(calibrate::suv_bw_factor(&h), Err(CalibrateError::MissingAttribute { name: calibrate::TOTAL_DOSE }));
    }

    #[test]
    fn malformed_values_are_named() {
        let mut o = instance();
        put(&mut o, tags::SERIES_TIME, VR::TM, "25xx00");
        assert!(matches!(pet_header(&o), Err(CalibrateError::InvalidAttribute { name: calibrate::SERIES_TIME, .. })));
        let mut o = instance();
        put(&mut o, tags::PATIENT_WEIGHT, VR::DS, "eighty");
        assert!(matches!(pet_header(&o), Err(CalibrateError::InvalidAttribute { name: calibrate::WEIGHT, .. })));
    }

    #[test]
    fn series_merge_checks_consistency() {
        let a = instance();
        let mut b = instance();
        put(&mut b, tags::ACQUISITION_TIME, VR::TM, "093000");
        let h = series_pet_header([&a, &b]).expect("series");
        assert_eq!(h.acquisition.len(), 2);
        put(&mut b, tags::UNITS, VR::CS, "CNTS");
        assert_eq!(
            series_pet_header([&a, &b]),
            Err(CalibrateError::InconsistentAcrossInstances { name: calibrate::UNITS })
        );
    }

    #[test]
    fn dicom_date_and_time_forms() {
        assert_eq!(parse_da("20250301"), Some(date!(2025 - 03 - 01)));
        assert_eq!(parse_da("2025.03.01"), Some(date!(2025 - 03 - 01)));
        assert_eq!(parse_da("20250230"), None);
        assert_eq!(parse_da("2025031"), None);
        assert_eq!(parse_tm("09"), Some(time!(09:00:00)));
        assert_eq!(parse_tm("0940"), Some(time!(09:40:00)));
        assert_eq!(parse_tm("094005.5"), Some(time!(09:40:05.5)));
        assert_eq!(parse_tm("094005.123456"), Some(time!(09:40:05.123456)));
        assert_eq!(parse_tm("09:40:05"), Some(time!(09:40:05)));
        assert_eq!(parse_tm("240000"), None);
        assert_eq!(parse_tm("0940.5"), None);
        assert_eq!(parse_tm("094005.1234567"), None);
        assert_eq!(parse_dt("20250301094005.25-0500"), Some(datetime!(2025-03-01 09:40:05.25)));
        assert_eq!(parse_dt("2025030109"), Some(datetime!(2025-03-01 09:00:00)));
        assert_eq!(parse_dt("20250301"), None);
    }
}
