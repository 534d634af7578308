//! Comprehensive 3D SR (PS3.3 A.35.13) holding a TID 1500 Measurement Report: language,
//! observation context (the node as device observer), procedure reported, an Image Library of
//! the CT and PET, one TID 1411 volumetric group per lesion (tracking identifier and UID,
//! finding, its SEG segment, SUVbw max/mean/peak, volume, TLG) and one TID 1501 group with the
//! study totals. Numbers are written as DS (at most 16 characters) and as Floating Point Value
//! (FD), as highdicom does, so a reader gets back exactly the `f64` of the findings.
//! A lesion's Referenced Segment is the first of `Lesion::segments`: the segment of the method
//! that found it, which holds that method's other lesions too (one segment per source, as
//! DESIGN.md asks); the Tracking Identifier "Lesion N" names the label N of the lesion volume.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use rayon::prelude::*;

use super::seg::{LESION, SEGMENTATION_STORAGE};
use super::{Code, Context, EncodeError, EncodeInput, MANUFACTURER, OutputUids, SopRef, part10, put, put_seq};
use crate::phantom::dicom::ds;
use crate::quantify::Lesion;

pub const COMPREHENSIVE_3D_SR_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.88.34";
pub const SERIES_NUMBER: &str = "901";

pub const IMAGING_MEASUREMENT_REPORT: Code = Code::new("126000", "DCM", "Imaging Measurement Report");
const LANGUAGE: Code = Code::new("121049", "DCM", "Language of Content Item and Descendants");
const ENGLISH_US: Code = Code::new("en-US", "RFC5646", "English (United States)");
const OBSERVER_TYPE: Code = Code::new("121005", "DCM", "Observer Type");
const DEVICE: Code = Code::new("121007", "DCM", "Device");
const DEVICE_OBSERVER_UID: Code = Code::new("121012", "DCM", "Device Observer UID");
const DEVICE_OBSERVER_NAME: Code = Code::new("121013", "DCM", "Device Observer Name");
const DEVICE_OBSERVER_MANUFACTURER: Code = Code::new("121014", "DCM", "Device Observer Manufacturer");
const PROCEDURE_REPORTED: Code = Code::new("121058", "DCM", "Procedure reported");
/// CID 100 Quantitative Diagnostic Imaging Procedures.
const PET_CT_FDG_WHOLE_BODY: Code = Code::new("443271005", "SCT", "PET/CT FDG imaging of whole body");
const IMAGE_LIBRARY: Code = Code::new("111028", "DCM", "Image Library");
const IMAGE_LIBRARY_GROUP: Code = Code::new("126200", "DCM", "Image Library Group");
const MODALITY: Code = Code::new("121139", "DCM", "Modality");
const SOURCE: Code = Code::new("260753009", "SCT", "Source");
const IMAGING_MEASUREMENTS: Code = Code::new("126010", "DCM", "Imaging Measurements");
const MEASUREMENT_GROUP: Code = Code::new("125007", "DCM", "Measurement Group");
pub const TRACKING_IDENTIFIER: Code = Code::new("112039", "DCM", "Tracking Identifier");
pub const TRACKING_UID: Code = Code::new("112040", "DCM", "Tracking Unique Identifier");
const FINDING: Code = Code::new("121071", "DCM", "Finding");
pub const REFERENCED_SEGMENT: Code = Code::new("121191", "DCM", "Referenced Segment");
const SOURCE_SERIES_FOR_SEGMENTATION: Code = Code::new("121232", "DCM", "Source series for segmentation");
const DERIVATION: Code = Code::new("121401", "DCM", "Derivation");
pub const SUV_BW: Code = Code::new("126401", "DCM", "SUVbw");
pub const MAXIMUM: Code = Code::new("56851009", "SCT", "Maximum");
pub const MEAN: Code = Code::new("373098007", "SCT", "Mean");
pub const PEAK: Code = Code::new("126031", "DCM", "Peak Value Within ROI");
pub const VOLUME: Code = Code::new("118565006", "SCT", "Volume");
pub const METABOLIC_VOLUME: Code = Code::new("126032", "DCM", "Metabolic Volume");
pub const TOTAL_LESION_GLYCOLYSIS: Code = Code::new("126033", "DCM", "Total Lesion Glycolysis");
pub const NUMBER_OF_LESIONS: Code = Code::new("246206008", "SCT", "Number of lesions");
/// No standard concept exists for a study-level anomaly score: a private coding scheme,
/// declared in the Coding Scheme Identification Sequence.
pub const ANOMALY_SCORE: Code = Code::new("ANOMALY-SCORE", PRIVATE_SCHEME, "Study anomaly score");
/// A lesion's qualitative evaluation: the methods (models, classical) whose masks found it.
pub const DETECTED_BY: Code = Code::new("DETECTED-BY", PRIVATE_SCHEME, "Detected by");
const PRIVATE_SCHEME: &str = "99PETCT";
const SUV_BW_UNIT: Code = Code::new("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight");
const ML: Code = Code::new("ml", "UCUM", "milliliter");
const GRAM: Code = Code::new("g", "UCUM", "gram");
const NO_UNITS: Code = Code::new("1", "UCUM", "no units");

fn modality_code(modality: &str) -> Code {
    match modality {
        "CT" => Code::new("CT", "DCM", "Computed Tomography"),
        _ => Code::new("PT", "DCM", "Positron emission tomography"),
    }
}

/// A content item without its value.
fn node(relationship: &str, value_type: &str, name: Code) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put(&mut o, tags::VALUE_TYPE, VR::CS, value_type);
    put_seq(&mut o, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![name.item()]);
    o
}

fn template(o: &mut InMemDicomObject, id: &str) {
    let mut t = InMemDicomObject::new_empty();
    put(&mut t, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put(&mut t, tags::TEMPLATE_IDENTIFIER, VR::CS, id);
    put_seq(o, tags::CONTENT_TEMPLATE_SEQUENCE, vec![t]);
}

fn container(name: Code, template_id: Option<&str>, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    let mut o = node("CONTAINS", "CONTAINER", name);
    put(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    if let Some(id) = template_id {
        template(&mut o, id);
    }
    put_seq(&mut o, tags::CONTENT_SEQUENCE, children);
    o
}

fn code(relationship: &str, name: Code, value: Code) -> InMemDicomObject {
    let mut o = node(relationship, "CODE", name);
    put_seq(&mut o, tags::CONCEPT_CODE_SEQUENCE, vec![value.item()]);
    o
}

fn text(relationship: &str, name: Code, value: &str) -> InMemDicomObject {
    let mut o = node(relationship, "TEXT", name);
    put(&mut o, tags::TEXT_VALUE, VR::UT, value);
    o
}

fn uidref(relationship: &str, name: Code, value: &str) -> InMemDicomObject {
    let mut o = node(relationship, "UIDREF", name);
    put(&mut o, tags::UID, VR::UI, value);
    o
}

fn image(name: Code, sop: &SopRef, segment: Option<u16>) -> InMemDicomObject {
    let mut o = node("CONTAINS", "IMAGE", name);
    let mut r = super::sop_item(sop);
    if let Some(n) = segment {
        put(&mut r, tags::REFERENCED_SEGMENT_NUMBER, VR::US, n);
    }
    put_seq(&mut o, tags::REFERENCED_SOP_SEQUENCE, vec![r]);
    o
}

/// How a number is written.
#[derive(Clone, Copy)]
enum Number {
    /// DS and FD: the reader gets the exact `f64`.
    Real(f64),
    Count(usize),
}

fn num(name: Code, value: Number, unit: Code, derivation: Option<Code>) -> Result<InMemDicomObject, EncodeError> {
    let mut o = node("CONTAINS", "NUM", name);
    let mut measured = InMemDicomObject::new_empty();
    put_seq(&mut measured, tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![unit.item()]);
    match value {
        Number::Real(v) if !v.is_finite() => {
            return Err(EncodeError::Input(format!("{} is {v}", name.meaning)));
        }
        Number::Real(v) => {
            put(&mut measured, tags::NUMERIC_VALUE, VR::DS, ds(v));
            put(&mut measured, tags::FLOATING_POINT_VALUE, VR::FD, v);
        }
        Number::Count(n) => put(&mut measured, tags::NUMERIC_VALUE, VR::DS, n.to_string()),
    }
    put_seq(&mut o, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
    if let Some(d) = derivation {
        put_seq(&mut o, tags::CONTENT_SEQUENCE, vec![code("HAS CONCEPT MOD", DERIVATION, d)]);
    }
    Ok(o)
}

/// The TID 1411 group of one lesion.
fn lesion_group(lesion: &Lesion, cx: &Context, seg: &SopRef) -> Result<InMemDicomObject, EncodeError> {
    let segment = lesion.segments.first().copied();
    let suv = |v, d| num(SUV_BW, Number::Real(v), SUV_BW_UNIT, Some(d));
    let mut children = vec![
        text("CONTAINS", TRACKING_IDENTIFIER, &format!("Lesion {}", lesion.label)),
        uidref("CONTAINS", TRACKING_UID, &cx.uids.tracking_uid(lesion.label)),
        code("CONTAINS", FINDING, LESION),
        image(REFERENCED_SEGMENT, seg, segment),
        uidref("CONTAINS", SOURCE_SERIES_FOR_SEGMENTATION, &cx.ct_series_uid),
        suv(lesion.suv_max, MAXIMUM)?,
        suv(lesion.suv_mean, MEAN)?,
        suv(lesion.suv_peak, PEAK)?,
        num(VOLUME, Number::Real(lesion.volume_ml), ML, None)?,
        num(TOTAL_LESION_GLYCOLYSIS, Number::Real(lesion.tlg), GRAM, None)?,
    ];
    if !lesion.detected_by.is_empty() {
        children.push(text("CONTAINS", DETECTED_BY, &lesion.detected_by.join(", ")));
    }
    Ok(container(MEASUREMENT_GROUP, Some("1411"), children))
}

/// The TID 1501 group with the study totals.
fn study_group(input: &EncodeInput, uids: &OutputUids) -> Result<InMemDicomObject, EncodeError> {
    let f = input.findings;
    let mut children = vec![
        text("CONTAINS", TRACKING_IDENTIFIER, "Study totals"),
        uidref("CONTAINS", TRACKING_UID, &uids.tracking_uid(0)),
        num(NUMBER_OF_LESIONS, Number::Count(f.lesion_count), NO_UNITS, None)?,
        num(METABOLIC_VOLUME, Number::Real(f.total_mtv_ml), ML, None)?,
        num(TOTAL_LESION_GLYCOLYSIS, Number::Real(f.total_tlg), GRAM, None)?,
    ];
    if let Some(score) = f.anomaly_score {
        children.push(num(ANOMALY_SCORE, Number::Real(score), NO_UNITS, None)?);
    }
    Ok(container(MEASUREMENT_GROUP, Some("1501"), children))
}

fn library_group(modality: &str, refs: &[SopRef]) -> InMemDicomObject {
    let mut children = vec![code("HAS ACQ CONTEXT", MODALITY, modality_code(modality))];
    children.extend(refs.iter().map(|r| image(SOURCE, r, None)));
    container(IMAGE_LIBRARY_GROUP, None, children)
}

/// The SR as a Part 10 file.
pub(crate) fn build(input: &EncodeInput, cx: &Context) -> Result<Vec<u8>, EncodeError> {
    let seg = SopRef { class: SEGMENTATION_STORAGE.into(), instance: cx.uids.seg_instance.clone() };
    let mut o = cx.base(&input.ct.headers[0], COMPREHENSIVE_3D_SR_STORAGE, &cx.uids.sr_instance);
    put(&mut o, tags::MODALITY, VR::CS, "SR");
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, cx.uids.sr_series.as_str());
    put(&mut o, tags::SERIES_NUMBER, VR::IS, SERIES_NUMBER);
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, "Lesion measurements (petct-node)");
    put_seq(&mut o, tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]);
    put(&mut o, tags::COMPLETION_FLAG, VR::CS, "COMPLETE");
    put(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_seq(&mut o, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    let mut study = InMemDicomObject::new_empty();
    put(&mut study, tags::STUDY_INSTANCE_UID, VR::UI, cx.study_uid.as_str());
    let series = [
        (cx.ct_series_uid.as_str(), cx.ct_refs.as_slice()),
        (cx.pet_series_uid.as_str(), cx.pet_refs.as_slice()),
        (cx.uids.seg_series.as_str(), std::slice::from_ref(&seg)),
    ];
    put_seq(
        &mut study,
        tags::REFERENCED_SERIES_SEQUENCE,
        series.iter().map(|(uid, refs)| super::series_item(uid, refs, tags::REFERENCED_SOP_SEQUENCE)).collect(),
    );
    put_seq(&mut o, tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE, vec![study]);
    if input.findings.anomaly_score.is_some() || input.findings.lesions.iter().any(|l| !l.detected_by.is_empty()) {
        let mut scheme = InMemDicomObject::new_empty();
        put(&mut scheme, tags::CODING_SCHEME_DESIGNATOR, VR::SH, PRIVATE_SCHEME);
        put(&mut scheme, tags::CODING_SCHEME_NAME, VR::ST, "petct-node private concepts");
        put(&mut scheme, tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION, VR::ST, MANUFACTURER);
        put_seq(&mut o, tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE, vec![scheme]);
    }

    // Document content: the root container and TID 1500.
    put(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(&mut o, tags::CONCEPT_NAME_CODE_SEQUENCE, vec![IMAGING_MEASUREMENT_REPORT.item()]);
    put(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    template(&mut o, "1500");
    let mut groups =
        input.findings.lesions.par_iter().map(|l| lesion_group(l, cx, &seg)).collect::<Result<Vec<_>, _>>()?;
    groups.push(study_group(input, cx.uids)?);
    let content = vec![
        code("HAS CONCEPT MOD", LANGUAGE, ENGLISH_US),
        code("HAS OBS CONTEXT", OBSERVER_TYPE, DEVICE),
        uidref("HAS OBS CONTEXT", DEVICE_OBSERVER_UID, &OutputUids::device_observer(input.algorithm_version)),
        text("HAS OBS CONTEXT", DEVICE_OBSERVER_NAME, MANUFACTURER),
        text("HAS OBS CONTEXT", DEVICE_OBSERVER_MANUFACTURER, MANUFACTURER),
        code("HAS CONCEPT MOD", PROCEDURE_REPORTED, PET_CT_FDG_WHOLE_BODY),
        container(
            IMAGE_LIBRARY,
            None,
            vec![library_group("CT", &cx.ct_refs), library_group(&input.pet.modality, &cx.pet_refs)],
        ),
        container(IMAGING_MEASUREMENTS, None, groups),
    ];
    put_seq(&mut o, tags::CONTENT_SEQUENCE, content);
    part10(o, "structured report")
}
