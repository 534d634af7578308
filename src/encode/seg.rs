//! DICOM Segmentation (PS3.3 A.51), BINARY, on the CT grid: one frame per segment and CT slice
//! holding any of it (segment by segment, slices in CT order), each frame with its Plane
//! Position, Dimension Index Values (segment number, position) and its CT slice as Source
//! Image; orientation and pixel measures shared and copied from the CT. With no foreground at
//! all, one empty frame (segment 1, first slice) keeps the object valid, as highdicom does.

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use rayon::prelude::*;

use super::{Code, Context, EncodeError, EncodeInput, Segment, part10, put, put_seq, series_item};
use crate::phantom::dicom::ds;

pub const SEGMENTATION_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.66.4";
pub const SERIES_NUMBER: &str = "900";

pub const MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code = Code::new("49755003", "SCT", "Morphologically Abnormal Structure");
pub const LESION: Code = Code::new("52988006", "SCT", "Lesion");
/// CID 7162 Surface Processing Algorithm Family.
pub const ARTIFICIAL_INTELLIGENCE: Code = Code::new("123110", "DCM", "Artificial Intelligence");
const SEGMENTATION_DERIVATION: Code = Code::new("113076", "DCM", "Segmentation");
const SOURCE_IMAGE_FOR_PROCESSING: Code = Code::new("121322", "DCM", "Source image for image processing operation");

/// Recommended display colours (CIELab, scaled to 0..65535 as PS3.3 C.10.7.1.1 defines),
/// one per segment in turn: sRGB red, green, azure (0, 128, 255) and yellow, converted with D65.
const CIELAB: [[u16; 3]; 4] =
    [[34886, 53484, 50172], [57498, 10747, 54274], [35860, 37725, 14668], [63660, 27356, 57178]];

/// One frame: a segment on one CT slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub segment: u16,
    pub slice: usize,
}

/// The frames to write: for each segment, the CT slices holding any of it, in slice order.
pub(crate) fn frames(segments: &[Segment]) -> Vec<Frame> {
    let mut frames: Vec<Frame> = segments
        .iter()
        .flat_map(|s| {
            let nz = s.mask.geometry().dims[2];
            let occupied: Vec<usize> =
                (0..nz).into_par_iter().filter(|&k| s.mask.slice(k).iter().any(|&v| v != 0)).collect();
            occupied.into_iter().map(move |slice| Frame { segment: s.number, slice })
        })
        .collect();
    if frames.is_empty() {
        frames.push(Frame { segment: 1, slice: 0 });
    }
    frames
}

/// Packs frames of one byte per pixel (non-zero = 1) into BINARY Pixel Data: one bit per pixel,
/// least significant bit first, frames back to back without padding (PS3.5 8.1.1), so a frame
/// starts mid-byte when its pixel count is not a multiple of 8. Output bytes are independent,
/// so blocks of them are packed in parallel.
pub(crate) fn pack_bits(frames: &[&[u8]], pixels_per_frame: usize) -> Vec<u8> {
    let total_bits = frames.len() * pixels_per_frame;
    // Even length, as every value in a data set.
    let mut out = vec![0u8; total_bits.div_ceil(8).next_multiple_of(2)];
    const BLOCK: usize = 4096;
    out.par_chunks_mut(BLOCK).enumerate().for_each(|(b, block)| {
        let first_bit = b * BLOCK * 8;
        let (mut f, mut p) = (first_bit / pixels_per_frame, first_bit % pixels_per_frame);
        for byte in block.iter_mut() {
            if f >= frames.len() {
                break;
            }
            if p + 8 <= pixels_per_frame {
                // The common case: eight pixels of one frame.
                let px = &frames[f][p..p + 8];
                *byte = px.iter().enumerate().fold(0, |v, (bit, &x)| v | (u8::from(x != 0) << bit));
                p += 8;
            } else {
                // The byte straddles the end of a frame.
                let mut v = 0u8;
                for bit in 0..8 {
                    if f >= frames.len() {
                        break;
                    }
                    v |= u8::from(frames[f][p] != 0) << bit;
                    p += 1;
                    if p == pixels_per_frame {
                        (f, p) = (f + 1, 0);
                    }
                }
                *byte = v;
            }
            if p == pixels_per_frame {
                (f, p) = (f + 1, 0);
            }
        }
    });
    out
}

fn segment_item(s: &Segment) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::SEGMENT_NUMBER, VR::US, s.number);
    put(&mut o, tags::SEGMENT_LABEL, VR::LO, s.label.as_str());
    if let Some(d) = &s.description {
        put(&mut o, tags::SEGMENT_DESCRIPTION, VR::ST, d.as_str());
    }
    put(&mut o, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put(&mut o, tags::SEGMENT_ALGORITHM_NAME, VR::LO, s.algorithm_name.as_str());
    let mut algorithm = InMemDicomObject::new_empty();
    put_seq(&mut algorithm, tags::ALGORITHM_FAMILY_CODE_SEQUENCE, vec![ARTIFICIAL_INTELLIGENCE.item()]);
    put(&mut algorithm, tags::ALGORITHM_NAME, VR::LO, s.algorithm_name.as_str());
    put(&mut algorithm, tags::ALGORITHM_VERSION, VR::LO, s.algorithm_version.as_str());
    put_seq(&mut o, tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE, vec![algorithm]);
    put_seq(&mut o, tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE, vec![MORPHOLOGICALLY_ABNORMAL_STRUCTURE.item()]);
    put_seq(&mut o, tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE, vec![LESION.item()]);
    let lab = CIELAB[(usize::from(s.number) - 1) % CIELAB.len()];
    put(&mut o, tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE, VR::US, PrimitiveValue::from(lab));
    o
}

fn dimension(label: &str, index: dicom_core::Tag, group: dicom_core::Tag, organization: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    put(&mut o, tags::DIMENSION_ORGANIZATION_UID, VR::UI, organization);
    put(&mut o, tags::DIMENSION_INDEX_POINTER, VR::AT, PrimitiveValue::Tags([index][..].into()));
    put(&mut o, tags::FUNCTIONAL_GROUP_POINTER, VR::AT, PrimitiveValue::Tags([group][..].into()));
    put(&mut o, tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label);
    o
}

/// The Segmentation as a Part 10 file.
pub(crate) fn build(input: &EncodeInput, cx: &Context) -> Result<Vec<u8>, EncodeError> {
    let ct = input.ct;
    let first = &ct.headers[0];
    let geometry = ct.volume.geometry();
    let [nx, ny, _] = geometry.dims;
    let (rows, cols) = (u16::try_from(ny), u16::try_from(nx));
    let (Ok(rows), Ok(cols)) = (rows, cols) else {
        return Err(EncodeError::Input(format!("a {nx}x{ny} slice does not fit a DICOM image")));
    };
    let mut o = cx.base(first, SEGMENTATION_STORAGE, &cx.uids.seg_instance);
    put(&mut o, tags::MODALITY, VR::CS, "SEG");
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, cx.uids.seg_series.as_str());
    put(&mut o, tags::SERIES_NUMBER, VR::IS, SERIES_NUMBER);
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, "Lesion segmentation (petct-node)");
    for tag in [tags::FRAME_OF_REFERENCE_UID, tags::POSITION_REFERENCE_INDICATOR] {
        match first.get(tag) {
            Some(e) => o.put(e.clone()),
            None if tag == tags::POSITION_REFERENCE_INDICATOR => {
                o.put(dicom_core::DataElement::new(tag, VR::LO, PrimitiveValue::Empty))
            }
            None => {
                return Err(EncodeError::MissingAttribute {
                    index: 0,
                    attribute: "Frame of Reference UID (0020,0052)",
                });
            }
        };
    }
    put(&mut o, tags::DEVICE_SERIAL_NUMBER, VR::LO, "1");
    // Segmentation Image module.
    put(&mut o, tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY");
    put(&mut o, tags::CONTENT_LABEL, VR::CS, "LESIONS");
    put(&mut o, tags::CONTENT_DESCRIPTION, VR::LO, "PET/CT lesions");
    put(&mut o, tags::CONTENT_CREATOR_NAME, VR::PN, PrimitiveValue::Empty);
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put(&mut o, tags::ROWS, VR::US, rows);
    put(&mut o, tags::COLUMNS, VR::US, cols);
    put(&mut o, tags::BITS_ALLOCATED, VR::US, 1u16);
    put(&mut o, tags::BITS_STORED, VR::US, 1u16);
    put(&mut o, tags::HIGH_BIT, VR::US, 0u16);
    put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    put(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put(&mut o, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put_seq(&mut o, tags::SEGMENT_SEQUENCE, input.segments.iter().map(segment_item).collect());
    // Common Instance Reference: the whole CT series.
    put_seq(
        &mut o,
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![series_item(&cx.ct_series_uid, &cx.ct_refs, tags::REFERENCED_INSTANCE_SEQUENCE)],
    );
    // Multi-frame Dimension module.
    let organization = cx.uids.dimension_organization.as_str();
    let mut org = InMemDicomObject::new_empty();
    put(&mut org, tags::DIMENSION_ORGANIZATION_UID, VR::UI, organization);
    put_seq(&mut o, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![org]);
    put(&mut o, tags::DIMENSION_ORGANIZATION_TYPE, VR::CS, "3D");
    put_seq(
        &mut o,
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension(
                "Segment Number",
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                organization,
            ),
            dimension(
                "Image Position Patient",
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                organization,
            ),
        ],
    );
    // Shared functional groups: the CT's orientation and pixel measures.
    let copy = |from: &dicom_object::DefaultDicomObject, to: &mut InMemDicomObject, tag, attribute| {
        from.get(tag).map(|e| to.put(e.clone())).ok_or(EncodeError::MissingAttribute { index: 0, attribute })
    };
    let mut measures = InMemDicomObject::new_empty();
    copy(first, &mut measures, tags::PIXEL_SPACING, "Pixel Spacing (0028,0030)")?;
    let spacing_z = ds(geometry.spacing_mm[2]);
    match first.get(tags::SLICE_THICKNESS) {
        Some(e) => measures.put(e.clone()),
        None => measures.put(dicom_core::DataElement::new(tags::SLICE_THICKNESS, VR::DS, spacing_z.as_str())),
    };
    put(&mut measures, tags::SPACING_BETWEEN_SLICES, VR::DS, spacing_z);
    let mut orientation = InMemDicomObject::new_empty();
    copy(first, &mut orientation, tags::IMAGE_ORIENTATION_PATIENT, "Image Orientation (Patient) (0020,0037)")?;
    let mut shared = InMemDicomObject::new_empty();
    put_seq(&mut shared, tags::PIXEL_MEASURES_SEQUENCE, vec![measures]);
    put_seq(&mut shared, tags::PLANE_ORIENTATION_SEQUENCE, vec![orientation]);
    put_seq(&mut o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);

    let frames = frames(input.segments);
    // Dimension index of a position: its rank among the slices that have a frame.
    let mut used: Vec<usize> = frames.iter().map(|f| f.slice).collect();
    used.sort_unstable();
    used.dedup();
    let per_frame = frames
        .par_iter()
        .map(|f| per_frame_item(input, cx, f, used.binary_search(&f.slice).unwrap_or(0) + 1))
        .collect::<Result<Vec<_>, _>>()?;
    put(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, frames.len().to_string());
    put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
    let pixels: Vec<&[u8]> =
        frames.iter().map(|f| input.segments[usize::from(f.segment) - 1].mask.slice(f.slice)).collect();
    put(&mut o, tags::PIXEL_DATA, VR::OB, pack_bits(&pixels, nx * ny));
    part10(o, "segmentation")
}

fn per_frame_item(
    input: &EncodeInput,
    cx: &Context,
    f: &Frame,
    position_index: usize,
) -> Result<InMemDicomObject, EncodeError> {
    let ct = &input.ct.headers[f.slice];
    let mut item = InMemDicomObject::new_empty();
    let mut content = InMemDicomObject::new_empty();
    let index_values = [u32::from(f.segment), position_index as u32];
    put(&mut content, tags::DIMENSION_INDEX_VALUES, VR::UL, PrimitiveValue::from(index_values));
    put_seq(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
    let mut position = InMemDicomObject::new_empty();
    position.put(
        ct.get(tags::IMAGE_POSITION_PATIENT)
            .ok_or(EncodeError::MissingAttribute { index: f.slice, attribute: "Image Position (Patient) (0020,0032)" })?
            .clone(),
    );
    put_seq(&mut item, tags::PLANE_POSITION_SEQUENCE, vec![position]);
    let mut source = super::sop_item(&cx.ct_refs[f.slice]);
    put_seq(&mut source, tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, vec![SOURCE_IMAGE_FOR_PROCESSING.item()]);
    // Same grid as the CT slice: readers (highdicom) may then index frames by source image.
    put(&mut source, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
    let mut derivation = InMemDicomObject::new_empty();
    put_seq(&mut derivation, tags::DERIVATION_CODE_SEQUENCE, vec![SEGMENTATION_DERIVATION.item()]);
    put_seq(&mut derivation, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
    put_seq(&mut item, tags::DERIVATION_IMAGE_SEQUENCE, vec![derivation]);
    let mut identification = InMemDicomObject::new_empty();
    put(&mut identification, tags::REFERENCED_SEGMENT_NUMBER, VR::US, f.segment);
    put_seq(&mut item, tags::SEGMENT_IDENTIFICATION_SEQUENCE, vec![identification]);
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads bit `i` of a BINARY pixel stream.
    fn bit(packed: &[u8], i: usize) -> u8 {
        (packed[i / 8] >> (i % 8)) & 1
    }

    #[test]
    fn bits_are_packed_lsb_first_and_frames_are_not_padded() {
        // 3x3 frames: 9 bits each, so the second frame starts at bit 1 of byte 1.
        let a = [1u8, 0, 0, 0, 1, 0, 0, 0, 1];
        let b = [0u8, 1, 1, 1, 0, 0, 0, 0, 7];
        let packed = pack_bits(&[&a, &b], 9);
        assert_eq!(packed.len(), 4, "18 bits -> 3 bytes, padded to an even length");
        assert_eq!(packed[0], 0b0001_0001);
        for (i, v) in a.iter().chain(&b).enumerate() {
            assert_eq!(bit(&packed, i), u8::from(*v != 0), "bit {i}");
        }
        assert_eq!(packed[3], 0);
    }

    #[test]
    fn packing_across_parallel_blocks_matches_a_bit_by_bit_reference() {
        // Frames of 7x13 pixels, enough of them to span several 4096-byte blocks.
        let n = 91;
        let data: Vec<Vec<u8>> =
            (0..1500).map(|f| (0..n).map(|p| u8::from((f * 31 + p * 7) % 5 == 0)).collect()).collect();
        let frames: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
        let packed = pack_bits(&frames, n);
        assert!(packed.len() > 2 * 4096);
        for (f, frame) in data.iter().enumerate() {
            for (p, v) in frame.iter().enumerate() {
                assert_eq!(bit(&packed, f * n + p), *v, "frame {f} pixel {p}");
            }
        }
    }
}
