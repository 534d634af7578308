//! encode: the results as DICOM objects in the study of the input. A BINARY Segmentation on the
//! CT grid ([`seg`]), a Comprehensive 3D SR with a TID 1500 Measurement Report ([`sr`]), and a
//! coronal MIP of the SUV with lesion outlines as a Secondary Capture and a PNG ([`mip`]).
//! Every UID is derived from the input instances and the algorithm version ([`uid`]), and every
//! date and time from the CT series, so a re-run produces the same objects byte for byte and a
//! PACS replaces rather than duplicates them.

pub mod mip;
pub mod seg;
pub mod sr;
pub mod uid;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, InMemDicomObject};

use crate::assemble::{self, Series};
use crate::quantify::{Findings, Mask};
use crate::volume::Volume;

pub use uid::OutputUids;

/// Written as Manufacturer and Manufacturer's Model Name of every object.
pub const MANUFACTURER: &str = "petct-node";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLEMENTATION_VERSION: &str = "PETCT_NODE_01";

/// One segment of the SEG: the lesions found by one method (or read from one annotation).
#[derive(Debug, Clone)]
pub struct Segment {
    /// 1-based; segments are numbered 1, 2, ... in order.
    pub number: u16,
    pub label: String,
    pub algorithm_name: String,
    pub algorithm_version: String,
    /// Free text, e.g. where an annotation came from.
    pub description: Option<String>,
    /// On the CT grid: non-zero inside.
    pub mask: Mask,
}

/// Everything the objects are built from. All volumes are on the CT grid.
pub struct EncodeInput<'a> {
    /// CT headers in slice order, which is the z order of the CT grid.
    pub ct: &'a Series,
    /// PET headers, referenced as evidence of the SUV measurements.
    pub pet: &'a Series,
    /// SUVbw on the CT grid, for the MIP.
    pub suv_on_ct: &'a Volume<f32>,
    /// Lesion labels on the CT grid: 0 is background, otherwise the `label` of a lesion.
    pub labels: &'a Volume<u32>,
    pub segments: &'a [Segment],
    pub findings: &'a Findings,
    /// Node version and model versions: written as Software Versions and part of every UID.
    pub algorithm_version: &'a str,
}

/// The produced objects, as Part 10 files.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub seg: Vec<u8>,
    pub sr: Vec<u8>,
    pub mip: Vec<u8>,
    /// The MIP picture again, as PNG.
    pub mip_png: Vec<u8>,
    pub uids: OutputUids,
}

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("encoding the results: {0}")]
    Input(String),
    #[error("CT slice {index}: {attribute} is missing or malformed")]
    MissingAttribute { index: usize, attribute: &'static str },
    #[error("building the {object}: {message}")]
    Dicom { object: &'static str, message: String },
    #[error("the CT is not axial (slice normal {normal:?}): the coronal MIP needs axial slices")]
    NotAxial { normal: [f64; 3] },
    #[error("writing the MIP as PNG: {0}")]
    Png(String),
}

impl EncodeError {
    /// Nothing here depends on the network or the disk: the same input fails the same way.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Builds the SEG, the SR and the MIP of one study.
pub fn encode(input: &EncodeInput) -> Result<Encoded, EncodeError> {
    check(input)?;
    let uids = OutputUids::derive(input.ct, input.pet, input.algorithm_version)?;
    let context = Context::new(input, &uids)?;
    let ((seg, sr), mip) = rayon::join(
        || rayon::join(|| seg::build(input, &context), || sr::build(input, &context)),
        || mip::build(input, &context),
    );
    let (mip, mip_png) = mip?;
    Ok(Encoded { seg: seg?, sr: sr?, mip, mip_png, uids })
}

/// Sizes and numbering checked once, so that the builders can index freely.
fn check(input: &EncodeInput) -> Result<(), EncodeError> {
    let dims = input.ct.volume.geometry().dims;
    if input.ct.headers.len() != dims[2] {
        return Err(EncodeError::Input(format!("{} CT headers for {} CT slices", input.ct.headers.len(), dims[2])));
    }
    if input.pet.headers.is_empty() {
        return Err(EncodeError::Input("the PET series has no headers".into()));
    }
    let grid = |what: &str, d: [usize; 3]| {
        if d == dims {
            Ok(())
        } else {
            Err(EncodeError::Input(format!("{what} is {d:?} voxels, the CT grid {dims:?}")))
        }
    };
    grid("the SUV volume", input.suv_on_ct.geometry().dims)?;
    grid("the label volume", input.labels.geometry().dims)?;
    if input.segments.is_empty() {
        return Err(EncodeError::Input("a segmentation needs at least one segment".into()));
    }
    for (i, s) in input.segments.iter().enumerate() {
        if usize::from(s.number) != i + 1 {
            return Err(EncodeError::Input(format!("segment {} is number {}, expected {}", s.label, s.number, i + 1)));
        }
        grid(&format!("the mask of segment {}", s.number), s.mask.geometry().dims)?;
    }
    for lesion in &input.findings.lesions {
        let Some(&n) = lesion.segments.first() else {
            return Err(EncodeError::Input(format!("lesion {} belongs to no segment", lesion.label)));
        };
        if n == 0 || usize::from(n) > input.segments.len() {
            return Err(EncodeError::Input(format!(
                "lesion {} refers to segment {n}, which does not exist",
                lesion.label
            )));
        }
    }
    Ok(())
}

/// A referenced instance: SOP Class and SOP Instance UIDs.
#[derive(Debug, Clone)]
pub(crate) struct SopRef {
    pub class: String,
    pub instance: String,
}

/// What the three builders share: the references to the inputs, the UIDs, the date and time.
pub(crate) struct Context<'a> {
    pub uids: &'a OutputUids,
    pub study_uid: String,
    pub ct_series_uid: String,
    pub pet_series_uid: String,
    pub ct_refs: Vec<SopRef>,
    pub pet_refs: Vec<SopRef>,
    /// Content Date and Time: the CT's, so that a re-run writes the same bytes.
    pub date: String,
    pub time: String,
    /// Software Versions (LO, at most 64 characters).
    pub software_version: String,
}

impl<'a> Context<'a> {
    fn new(input: &EncodeInput, uids: &'a OutputUids) -> Result<Self, EncodeError> {
        let first = &input.ct.headers[0];
        let required = |obj: &DefaultDicomObject, index: usize, tag: Tag, attribute: &'static str| {
            assemble::text(obj, tag).ok_or(EncodeError::MissingAttribute { index, attribute })
        };
        let refs = |series: &Series| -> Result<Vec<SopRef>, EncodeError> {
            series
                .headers
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    Ok(SopRef {
                        class: required(h, i, tags::SOP_CLASS_UID, "SOP Class UID (0008,0016)")?,
                        instance: required(h, i, tags::SOP_INSTANCE_UID, "SOP Instance UID (0008,0018)")?,
                    })
                })
                .collect()
        };
        let pet_series_uid = assemble::text(&input.pet.headers[0], tags::SERIES_INSTANCE_UID)
            .ok_or_else(|| EncodeError::Input("the PET has no Series Instance UID".into()))?;
        let first_of = |candidates: &[Tag]| candidates.iter().find_map(|t| assemble::text(first, *t));
        Ok(Self {
            uids,
            study_uid: required(first, 0, tags::STUDY_INSTANCE_UID, "Study Instance UID (0020,000D)")?,
            ct_series_uid: required(first, 0, tags::SERIES_INSTANCE_UID, "Series Instance UID (0020,000E)")?,
            pet_series_uid,
            ct_refs: refs(input.ct)?,
            pet_refs: refs(input.pet)?,
            // The CT's own date and time (an anonymised CT may lack them: then a fixed one).
            date: first_of(&[tags::SERIES_DATE, tags::STUDY_DATE, tags::CONTENT_DATE])
                .unwrap_or_else(|| "19000101".into()),
            time: first_of(&[tags::SERIES_TIME, tags::STUDY_TIME, tags::CONTENT_TIME])
                .unwrap_or_else(|| "000000".into()),
            software_version: truncate(input.algorithm_version, 64),
        })
    }

    /// Patient, study, equipment and SOP common attributes of a new object in the CT's study.
    pub fn base(&self, ct: &DefaultDicomObject, sop_class: &str, sop_instance: &str) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        // Patient and study modules are copied as they are, in the CT's character set.
        for tag in [tags::SPECIFIC_CHARACTER_SET, tags::PATIENT_AGE, tags::PATIENT_SIZE, tags::PATIENT_WEIGHT] {
            if let Some(e) = ct.get(tag) {
                o.put(e.clone());
            }
        }
        for (tag, vr) in [
            (tags::PATIENT_NAME, VR::PN),
            (tags::PATIENT_ID, VR::LO),
            (tags::PATIENT_BIRTH_DATE, VR::DA),
            (tags::PATIENT_SEX, VR::CS),
            (tags::STUDY_DATE, VR::DA),
            (tags::STUDY_TIME, VR::TM),
            (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
            (tags::STUDY_ID, VR::SH),
            (tags::ACCESSION_NUMBER, VR::SH),
        ] {
            // Type 2: present even when the CT lacks it.
            match ct.get(tag) {
                Some(e) => o.put(e.clone()),
                None => o.put(DataElement::new(tag, vr, PrimitiveValue::Empty)),
            };
        }
        for tag in [tags::STUDY_DESCRIPTION, tags::ISSUER_OF_PATIENT_ID] {
            if let Some(e) = ct.get(tag) {
                o.put(e.clone());
            }
        }
        put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, self.study_uid.as_str());
        put(&mut o, tags::SOP_CLASS_UID, VR::UI, sop_class);
        put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, sop_instance);
        put(&mut o, tags::INSTANCE_CREATION_DATE, VR::DA, self.date.as_str());
        put(&mut o, tags::INSTANCE_CREATION_TIME, VR::TM, self.time.as_str());
        put(&mut o, tags::CONTENT_DATE, VR::DA, self.date.as_str());
        put(&mut o, tags::CONTENT_TIME, VR::TM, self.time.as_str());
        put(&mut o, tags::SERIES_DATE, VR::DA, self.date.as_str());
        put(&mut o, tags::SERIES_TIME, VR::TM, self.time.as_str());
        put(&mut o, tags::MANUFACTURER, VR::LO, MANUFACTURER);
        put(&mut o, tags::MANUFACTURER_MODEL_NAME, VR::LO, MANUFACTURER);
        put(&mut o, tags::SOFTWARE_VERSIONS, VR::LO, self.software_version.as_str());
        put(&mut o, tags::INSTANCE_NUMBER, VR::IS, "1");
        o
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

pub(crate) fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, v: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, v.into()));
}

pub(crate) fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// A coded concept (Code Sequence item).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub value: &'static str,
    pub scheme: &'static str,
    pub meaning: &'static str,
}

impl Code {
    pub const fn new(value: &'static str, scheme: &'static str, meaning: &'static str) -> Self {
        Self { value, scheme, meaning }
    }

    pub(crate) fn item(&self) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        put(&mut o, tags::CODE_VALUE, VR::SH, self.value);
        put(&mut o, tags::CODING_SCHEME_DESIGNATOR, VR::SH, self.scheme);
        put(&mut o, tags::CODE_MEANING, VR::LO, self.meaning);
        o
    }
}

/// `(ReferencedSOPClassUID, ReferencedSOPInstanceUID)` item.
pub(crate) fn sop_item(r: &SopRef) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::REFERENCED_SOP_CLASS_UID, VR::UI, r.class.as_str());
    put(&mut o, tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, r.instance.as_str());
    o
}

/// A series and its instances, as in Referenced Series Sequence items.
pub(crate) fn series_item(series_uid: &str, refs: &[SopRef], sequence: Tag) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    put_seq(&mut o, sequence, refs.iter().map(sop_item).collect());
    o
}

/// The object as a Part 10 file, Explicit VR Little Endian.
pub(crate) fn part10(obj: InMemDicomObject, object: &'static str) -> Result<Vec<u8>, EncodeError> {
    let err = |message: String| EncodeError::Dicom { object, message };
    let file = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(EXPLICIT_VR_LE)
                .implementation_class_uid(uid::implementation_class_uid())
                .implementation_version_name(IMPLEMENTATION_VERSION),
        )
        .map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    file.write_all(&mut out).map_err(|e| err(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    fn geometry(nz: usize) -> Geometry {
        Geometry {
            dims: [2, 2, nz],
            spacing_mm: [1.0; 3],
            origin_mm: [0.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    fn series_with(nz: usize, headers: usize, series_uid: &str, first_instance_uid: &str) -> Series {
        let header = |instance: &str| {
            let mut o = InMemDicomObject::new_empty();
            put(&mut o, tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.2");
            put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, instance);
            put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
            o.with_meta(FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_VR_LE)).unwrap()
        };
        let mut all = vec![header(first_instance_uid)];
        all.extend((1..headers).map(|i| header(&format!("1.2.3.{i}"))));
        Series {
            modality: "CT".into(),
            volume: Volume::new(geometry(nz), vec![0.0; 4 * nz]).unwrap(),
            headers: all,
            paths: vec![],
        }
    }

    fn series(nz: usize, headers: usize) -> Series {
        series_with(nz, headers, "1.2.3", "1.2.3.0")
    }

    #[test]
    fn uids_follow_every_input_instance_and_the_version() {
        let (ct, pet) = (series(3, 3), series_with(3, 3, "1.2.4", "1.2.4.0"));
        let a = OutputUids::derive(&ct, &pet, "v1").unwrap();
        assert_eq!(a, OutputUids::derive(&ct, &pet, "v1").unwrap());
        assert_ne!(a.seg_instance, OutputUids::derive(&ct, &pet, "v2").unwrap().seg_instance);
        let other_slice = series_with(3, 3, "1.2.3", "1.2.3.99");
        assert_ne!(a.sr_instance, OutputUids::derive(&other_slice, &pet, "v1").unwrap().sr_instance);
        let other_series = series_with(3, 3, "1.2.5", "1.2.4.0");
        assert_ne!(a.mip_series, OutputUids::derive(&ct, &other_series, "v1").unwrap().mip_series);
        // One slice fewer is another input.
        assert_ne!(a.seg_series, OutputUids::derive(&series(2, 2), &pet, "v1").unwrap().seg_series);
    }

    fn segment(number: u16, nz: usize) -> Segment {
        Segment {
            number,
            label: "s".into(),
            algorithm_name: "a".into(),
            algorithm_version: "1".into(),
            description: None,
            mask: Volume::new(geometry(nz), vec![0; 4 * nz]).unwrap(),
        }
    }

    fn lesion(segments: Vec<u16>) -> crate::quantify::Lesion {
        crate::quantify::Lesion {
            label: 1,
            voxels: 1,
            volume_ml: 0.001,
            suv_max: 5.0,
            suv_mean: 5.0,
            suv_peak: 5.0,
            tlg: 0.005,
            centroid_mm: [0.0; 3],
            bbox: [[0; 3]; 2],
            segments,
            detected_by: vec![],
        }
    }

    /// Runs `check` on a 2x2x3 study with the given segments and lesions.
    fn checked(
        ct_headers: usize,
        segments: &[Segment],
        lesions: Vec<crate::quantify::Lesion>,
    ) -> Result<(), EncodeError> {
        let (ct, pet) = (series(3, ct_headers), series(3, 3));
        let suv = Volume::new(geometry(3), vec![0.0; 12]).unwrap();
        let labels = Volume::new(geometry(3), vec![0u32; 12]).unwrap();
        let findings =
            Findings { lesion_count: lesions.len(), total_mtv_ml: 0.0, total_tlg: 0.0, anomaly_score: None, lesions };
        check(&EncodeInput {
            ct: &ct,
            pet: &pet,
            suv_on_ct: &suv,
            labels: &labels,
            segments,
            findings: &findings,
            algorithm_version: "test",
        })
    }

    #[test]
    fn inputs_that_cannot_make_valid_objects_are_refused() {
        assert!(checked(3, &[segment(1, 3), segment(2, 3)], vec![lesion(vec![2])]).is_ok());
        let refused = |r: Result<(), EncodeError>, why: &str| {
            let message = r.expect_err(why).to_string();
            assert!(message.contains(why), "{message}");
        };
        refused(checked(2, &[segment(1, 3)], vec![]), "2 CT headers for 3 CT slices");
        refused(checked(3, &[], vec![]), "at least one segment");
        refused(checked(3, &[segment(2, 3)], vec![]), "expected 1");
        refused(checked(3, &[segment(1, 2)], vec![]), "the mask of segment 1");
        refused(checked(3, &[segment(1, 3)], vec![lesion(vec![])]), "belongs to no segment");
        refused(checked(3, &[segment(1, 3)], vec![lesion(vec![2])]), "segment 2, which does not exist");
    }
}
