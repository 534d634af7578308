//! A stored series becomes a [`Volume`]: slices sorted along the slice normal, geometry checked,
//! pixel data decoded in parallel (by dicom-rs, and JPEG-LS and 12-bit JPEG by [`crate::codecs`])
//! with the Modality LUT of each instance applied. Every defect a real series can have is a named
//! error: the result is the right volume or no volume.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use rayon::prelude::*;

use crate::codecs::{self, CodecError, Frame};
use crate::ids::Uid;
use crate::volume::{Geometry, Volume, VolumeError};

#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    #[error("the series has no instances")]
    NoInstances,
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: {attribute} is missing or malformed")]
    MissingAttribute { path: PathBuf, attribute: &'static str },
    #[error("{path}: multi-frame objects ({frames} frames, SOP class {sop_class}) are not supported yet")]
    MultiFrame { path: PathBuf, frames: u32, sop_class: String },
    #[error("{path}: modality {found} differs from the series' {expected}")]
    MixedModality { path: PathBuf, expected: String, found: String },
    #[error("{path}: Image Orientation (Patient) differs from the first slice's")]
    MixedOrientation { path: PathBuf },
    #[error("{path}: Image Orientation (Patient) is not two orthogonal unit vectors")]
    InvalidOrientation { path: PathBuf },
    #[error("{path}: size or pixel spacing differs from the first slice's ({detail})")]
    MixedSize { path: PathBuf, detail: String },
    #[error("{path}: Frame of Reference UID differs from the first slice's")]
    MixedFrameOfReference { path: PathBuf },
    #[error("gantry tilt of {degrees:.2} degrees: slices are not stacked along their normal")]
    GantryTilt { degrees: f64 },
    #[error("two slices share the position {position_mm:.3} mm along the normal ({first} and {second})")]
    DuplicatePosition { position_mm: f64, first: PathBuf, second: PathBuf },
    #[error("the series holds {count} volumes at the same positions (dynamic or gated acquisition)")]
    MultipleVolumes { count: usize },
    #[error("missing slice: a gap of {gap_mm:.3} mm after {after_mm:.3} mm where slices are {spacing_mm:.3} mm apart")]
    MissingSlice { after_mm: f64, gap_mm: f64, spacing_mm: f64 },
    #[error("slice spacing varies from {min_mm:.4} to {max_mm:.4} mm")]
    NonUniformSpacing { min_mm: f64, max_mm: f64 },
    #[error("{path}: no Pixel Data")]
    NoPixelData { path: PathBuf },
    #[error("{path}: decoding pixel data: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// One instance's geometry, read before any pixel data.
struct Slice {
    path: PathBuf,
    header: DefaultDicomObject,
    position: [f64; 3],
    /// Position along the slice normal.
    along_mm: f64,
    temporal: Option<String>,
}

/// A decoded series: the volume in modality units (HU for CT, rescaled PET values) and the
/// headers of its instances in slice order (without pixel data), for calibration and encoding.
pub struct Series {
    pub modality: String,
    pub volume: Volume<f32>,
    pub headers: Vec<DefaultDicomObject>,
    pub paths: Vec<PathBuf>,
}

fn numbers(obj: &DefaultDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.get(tag)?.to_multi_float64().ok()
}

fn required<const N: usize>(
    obj: &DefaultDicomObject,
    tag: Tag,
    path: &Path,
    attribute: &'static str,
) -> Result<[f64; N], AssembleError> {
    numbers(obj, tag)
        .and_then(|v| <[f64; N]>::try_from(v).ok())
        .filter(|v| v.iter().all(|x| x.is_finite()))
        .ok_or_else(|| AssembleError::MissingAttribute { path: path.to_path_buf(), attribute })
}

pub(crate) fn text(obj: &dicom_object::InMemDicomObject, tag: Tag) -> Option<String> {
    let v = obj.get(tag)?.to_str().ok()?;
    let v = v.trim_matches([' ', '\0']);
    (!v.is_empty()).then(|| v.to_string())
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// A series whose headers passed every geometry check: what `inspect` reports without
/// decoding a single pixel.
pub struct SeriesPlan {
    pub modality: String,
    pub geometry: Geometry,
    slices: Vec<Slice>,
}

impl SeriesPlan {
    /// Files in slice order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.slices.iter().map(|s| s.path.clone()).collect()
    }

    /// Headers in slice order (without pixel data).
    pub fn headers(&self) -> impl Iterator<Item = &DefaultDicomObject> {
        self.slices.iter().map(|s| &s.header)
    }

    /// Decodes every slice (in parallel) into the volume.
    pub fn decode(self) -> Result<Series, AssembleError> {
        let n = self.geometry.dims[0] * self.geometry.dims[1];
        let mut data = vec![0f32; n * self.slices.len()];
        data.par_chunks_mut(n).zip(self.slices.par_iter()).try_for_each(|(out, s)| decode_into(&s.path, out))?;
        let volume = Volume::new(self.geometry, data)?;
        let paths = self.slices.iter().map(|s| s.path.clone()).collect();
        let headers = self.slices.into_iter().map(|s| s.header).collect();
        Ok(Series { modality: self.modality, volume, headers, paths })
    }
}

/// Reads every header (in parallel), checks the geometry, then decodes the pixel data.
pub fn assemble(paths: &[PathBuf]) -> Result<Series, AssembleError> {
    plan(paths)?.decode()
}

/// Reads every header (in parallel) and checks the geometry; decodes nothing.
pub fn plan(paths: &[PathBuf]) -> Result<SeriesPlan, AssembleError> {
    if paths.is_empty() {
        return Err(AssembleError::NoInstances);
    }
    let headers: Vec<(PathBuf, DefaultDicomObject)> = paths
        .par_iter()
        .map(|p| {
            OpenFileOptions::new()
                .read_until(tags::PIXEL_DATA)
                .open_file(p)
                .map(|o| (p.clone(), o))
                .map_err(|e| AssembleError::Read { path: p.clone(), message: e.to_string() })
        })
        .collect::<Result<_, _>>()?;

    let (first_path, first) = (&headers[0].0.clone(), &headers[0].1.clone());
    let modality = text(first, tags::MODALITY).ok_or_else(|| AssembleError::MissingAttribute {
        path: first_path.clone(),
        attribute: "Modality (0008,0060)",
    })?;
    let orientation: [f64; 6] =
        required(first, tags::IMAGE_ORIENTATION_PATIENT, first_path, "Image Orientation (Patient) (0020,0037)")?;
    let row = [orientation[0], orientation[1], orientation[2]];
    let col = [orientation[3], orientation[4], orientation[5]];
    if (dot(row, row) - 1.0).abs() > 1e-3 || (dot(col, col) - 1.0).abs() > 1e-3 || dot(row, col).abs() > 1e-3 {
        return Err(AssembleError::InvalidOrientation { path: first_path.clone() });
    }
    let normal = cross(row, col);
    let rows = first.get(tags::ROWS).and_then(|e| e.to_int::<usize>().ok());
    let cols = first.get(tags::COLUMNS).and_then(|e| e.to_int::<usize>().ok());
    let (Some(rows), Some(cols)) = (rows, cols) else {
        return Err(AssembleError::MissingAttribute {
            path: first_path.clone(),
            attribute: "Rows/Columns (0028,0010/0011)",
        });
    };
    let pixel_spacing: [f64; 2] = required(first, tags::PIXEL_SPACING, first_path, "Pixel Spacing (0028,0030)")?;
    let frame = text(first, tags::FRAME_OF_REFERENCE_UID);

    let mut slices = Vec::with_capacity(headers.len());
    for (path, header) in headers {
        let frames = header.get(tags::NUMBER_OF_FRAMES).and_then(|e| e.to_int::<u32>().ok()).unwrap_or(1);
        if frames > 1 {
            let sop_class = text(&header, tags::SOP_CLASS_UID).unwrap_or_default();
            return Err(AssembleError::MultiFrame { path, frames, sop_class });
        }
        let m = text(&header, tags::MODALITY).unwrap_or_default();
        if m != modality {
            return Err(AssembleError::MixedModality { path, expected: modality.clone(), found: m });
        }
        let o: [f64; 6] =
            required(&header, tags::IMAGE_ORIENTATION_PATIENT, &path, "Image Orientation (Patient) (0020,0037)")?;
        if o.iter().zip(orientation).any(|(a, b)| (a - b).abs() > 1e-4) {
            return Err(AssembleError::MixedOrientation { path });
        }
        let r = header.get(tags::ROWS).and_then(|e| e.to_int::<usize>().ok());
        let c = header.get(tags::COLUMNS).and_then(|e| e.to_int::<usize>().ok());
        let s: [f64; 2] = required(&header, tags::PIXEL_SPACING, &path, "Pixel Spacing (0028,0030)")?;
        if r != Some(rows) || c != Some(cols) || s.iter().zip(pixel_spacing).any(|(a, b)| (a - b).abs() > 1e-4) {
            let detail = format!("{r:?}x{c:?} at {s:?} mm vs {rows}x{cols} at {pixel_spacing:?} mm");
            return Err(AssembleError::MixedSize { path, detail });
        }
        if text(&header, tags::FRAME_OF_REFERENCE_UID) != frame {
            return Err(AssembleError::MixedFrameOfReference { path });
        }
        if let Some(tilt) = numbers(&header, tags::GANTRY_DETECTOR_TILT).and_then(|v| v.first().copied()) {
            if tilt.abs() > 0.01 {
                return Err(AssembleError::GantryTilt { degrees: tilt });
            }
        }
        let position: [f64; 3] =
            required(&header, tags::IMAGE_POSITION_PATIENT, &path, "Image Position (Patient) (0020,0032)")?;
        // Distinguishes the volumes of a dynamic or gated series that share positions.
        let temporal = text(&header, tags::TEMPORAL_POSITION_INDEX)
            .or_else(|| text(&header, tags::FRAME_REFERENCE_TIME))
            .or_else(|| text(&header, tags::TRIGGER_TIME));
        slices.push(Slice { along_mm: dot(position, normal), path, header, position, temporal });
    }
    slices.sort_by(|a, b| a.along_mm.total_cmp(&b.along_mm));

    for pair in slices.windows(2) {
        if (pair[1].along_mm - pair[0].along_mm).abs() < 1e-3 {
            let volumes = slices.iter().filter(|s| (s.along_mm - pair[0].along_mm).abs() < 1e-3).count();
            if pair[0].temporal != pair[1].temporal {
                return Err(AssembleError::MultipleVolumes { count: volumes });
            }
            return Err(AssembleError::DuplicatePosition {
                position_mm: pair[0].along_mm,
                first: pair[0].path.clone(),
                second: pair[1].path.clone(),
            });
        }
    }
    let spacing_z = slice_spacing(&slices, first_path)?;
    if let (Some(a), Some(b)) = (slices.first(), slices.last()) {
        let d = [b.position[0] - a.position[0], b.position[1] - a.position[1], b.position[2] - a.position[2]];
        let len = dot(d, d).sqrt();
        if len > 0.0 {
            let degrees = (dot(d, normal).abs() / len).clamp(-1.0, 1.0).acos().to_degrees();
            if degrees > 0.1 {
                return Err(AssembleError::GantryTilt { degrees });
            }
        }
    }

    let geometry = Geometry {
        dims: [cols, rows, slices.len()],
        spacing_mm: [pixel_spacing[1], pixel_spacing[0], spacing_z],
        origin_mm: slices[0].position,
        direction: [row, col, normal],
        frame_of_reference_uid: frame.as_deref().and_then(|f| Uid::parse(f).ok()),
    };
    if geometry.voxel_count().is_none() {
        return Err(VolumeError::Overflow { nx: cols, ny: rows, nz: slices.len() }.into());
    }
    Ok(SeriesPlan { modality, geometry, slices })
}

/// The distance between slices, which must be uniform: a larger step is a missing slice.
fn slice_spacing(slices: &[Slice], first_path: &Path) -> Result<f64, AssembleError> {
    if slices.len() == 1 {
        let h = &slices[0].header;
        return numbers(h, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| numbers(h, tags::SLICE_THICKNESS))
            .and_then(|v| v.first().copied())
            .filter(|v| *v > 0.0)
            .ok_or(AssembleError::MissingAttribute {
                path: first_path.to_path_buf(),
                attribute: "Slice Thickness (0018,0050)",
            });
    }
    let mut steps: Vec<f64> = slices.windows(2).map(|p| p[1].along_mm - p[0].along_mm).collect();
    let mut sorted = steps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let tolerance = (median * 0.005).max(0.01);
    for (i, step) in steps.iter().enumerate() {
        if *step > 1.5 * median {
            return Err(AssembleError::MissingSlice {
                after_mm: slices[i].along_mm,
                gap_mm: *step,
                spacing_mm: median,
            });
        }
    }
    steps.retain(|s| (s - median).abs() > tolerance);
    if !steps.is_empty() {
        return Err(AssembleError::NonUniformSpacing { min_mm: sorted[0], max_mm: sorted[sorted.len() - 1] });
    }
    // The mean step over the whole stack is more precise than any single difference.
    Ok((slices[slices.len() - 1].along_mm - slices[0].along_mm) / (slices.len() - 1) as f64)
}

fn decode_into(path: &Path, out: &mut [f32]) -> Result<(), AssembleError> {
    let decode_err = |message: String| AssembleError::Decode { path: path.to_path_buf(), message };
    let obj = dicom_object::open_file(path)
        .map_err(|e| AssembleError::Read { path: path.to_path_buf(), message: e.to_string() })?;
    let Some(pixels) = obj.get(tags::PIXEL_DATA) else {
        return Err(AssembleError::NoPixelData { path: path.to_path_buf() });
    };
    if let Some(codec) = codec_of(obj.meta().transfer_syntax().trim_end_matches(['\0', ' '])) {
        return encapsulated_into(&obj, pixels.value().fragments(), out, codec).map_err(|e| match e {
            CodecError::Unsupported(what) => AssembleError::Unsupported { path: path.to_path_buf(), what },
            CodecError::Malformed(message) => decode_err(message),
        });
    }
    if native_into(&obj, pixels.value().primitive(), out) {
        return Ok(());
    }
    let decoded = obj.decode_pixel_data().map_err(|e| decode_err(e.to_string()))?;
    let values: Vec<f32> = decoded.to_vec().map_err(|e| decode_err(e.to_string()))?;
    if values.len() != out.len() {
        return Err(decode_err(format!("{} values for a {}-pixel slice", values.len(), out.len())));
    }
    out.copy_from_slice(&values);
    Ok(())
}

/// The Modality LUT as Rescale Slope and Intercept (identity when absent).
fn rescale(obj: &DefaultDicomObject) -> (f64, f64) {
    let float = |tag| obj.get(tag).and_then(|e| e.to_float64().ok());
    (float(tags::RESCALE_SLOPE).unwrap_or(1.0), float(tags::RESCALE_INTERCEPT).unwrap_or(0.0))
}

/// Applies the Modality LUT to stored values, straight into the volume.
fn rescale_into(out: &mut [f32], stored: impl Iterator<Item = i32>, (slope, intercept): (f64, f64)) {
    for (o, v) in out.iter_mut().zip(stored) {
        *o = (f64::from(v) * slope + intercept) as f32;
    }
}

/// The common case without a codec: 16-bit grayscale stored natively. Applies the Modality LUT
/// (Rescale Slope/Intercept) straight into the volume; returns false for anything else, which
/// then goes through dicom-pixeldata.
fn native_into(obj: &DefaultDicomObject, pixels: Option<&dicom_core::PrimitiveValue>, out: &mut [f32]) -> bool {
    use dicom_core::PrimitiveValue;
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<u32>().ok());
    let samples = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let (Some(16), Some(stored), Some(representation)) =
        (int(tags::BITS_ALLOCATED), int(tags::BITS_STORED), int(tags::PIXEL_REPRESENTATION))
    else {
        return false;
    };
    // A Modality LUT sequence, or bits above Bits Stored that would need masking, take the
    // general path.
    if samples != 1 || stored != 16 || obj.get(tags::MODALITY_LUT_SEQUENCE).is_some() {
        return false;
    }
    let words: &[u16] = match pixels {
        Some(PrimitiveValue::U16(v)) if v.len() == out.len() => v,
        _ => return false,
    };
    if representation == 1 {
        rescale_into(out, words.iter().map(|w| i32::from(*w as i16)), rescale(obj));
    } else {
        rescale_into(out, words.iter().map(|w| i32::from(*w)), rescale(obj));
    }
    true
}

/// The encapsulated transfer syntaxes decoded by [`crate::codecs`]: JPEG-LS Lossless and
/// Near-Lossless, and JPEG Extended (whose 12-bit form dicom-pixeldata does not decode).
fn codec_of(syntax: &str) -> Option<Codec> {
    match syntax {
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some(Codec::JpegLs),
        "1.2.840.10008.1.2.4.51" => Some(Codec::JpegExtended),
        _ => None,
    }
}

#[derive(Clone, Copy)]
enum Codec {
    JpegLs,
    JpegExtended,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::JpegLs => "JPEG-LS",
            Codec::JpegExtended => "JPEG Extended",
        }
    }

    fn decode(self, stream: &[u8], size: (usize, usize)) -> Result<Frame, CodecError> {
        match self {
            Codec::JpegLs => codecs::jpeg_ls(stream, size),
            Codec::JpegExtended => codecs::jpeg_extended(stream, size),
        }
    }

    /// JPEG-LS codes exactly Bits Stored bits; a DCT process codes 8 or 12, at least Bits Stored.
    fn precision_fits(self, precision: u32, stored: u32) -> bool {
        match self {
            Codec::JpegLs => precision == stored,
            Codec::JpegExtended => precision >= stored,
        }
    }
}

/// A single-frame, single-component stream of `codec`, 8 or 16 bits allocated, signed or
/// unsigned: the instance's attributes are checked, the frame's fragments decoded (the frame
/// header must match Rows, Columns and Bits Stored) and the Modality LUT applied as
/// [`native_into`] does.
fn encapsulated_into(
    obj: &DefaultDicomObject,
    fragments: Option<&[Vec<u8>]>,
    out: &mut [f32],
    codec: Codec,
) -> Result<(), CodecError> {
    use CodecError::{Malformed, Unsupported};
    let name = codec.name();
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<u32>().ok());
    let samples = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let photometric = text(obj, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
    if samples != 1 || !matches!(photometric.as_str(), "MONOCHROME1" | "MONOCHROME2") {
        return Err(Unsupported(format!("{name} {photometric} with {samples} samples per pixel")));
    }
    let (Some(allocated @ (8 | 16)), Some(stored), Some(representation @ (0 | 1))) =
        (int(tags::BITS_ALLOCATED), int(tags::BITS_STORED), int(tags::PIXEL_REPRESENTATION))
    else {
        return Err(Unsupported(format!("{name} other than 8 or 16 bits allocated, signed or unsigned")));
    };
    if !(2..=allocated).contains(&stored) {
        return Err(Malformed(format!("Bits Stored {stored} with Bits Allocated {allocated}")));
    }
    if obj.get(tags::MODALITY_LUT_SEQUENCE).is_some() {
        return Err(Unsupported(format!("{name} with a Modality LUT Sequence")));
    }
    let (rows, cols) = (int(tags::ROWS).unwrap_or(0) as usize, int(tags::COLUMNS).unwrap_or(0) as usize);
    if rows * cols != out.len() {
        return Err(Malformed(format!("Rows {rows} and Columns {cols} for a {}-pixel slice", out.len())));
    }
    let stream = match fragments {
        Some([one]) => Cow::Borrowed(one.as_slice()),
        Some(many) if !many.is_empty() => Cow::Owned(many.concat()),
        _ => return Err(Malformed(format!("{name} transfer syntax without encapsulated pixel data"))),
    };
    let frame = codec.decode(&stream, (rows, cols))?;
    if !codec.precision_fits(frame.precision, stored) {
        return Err(Malformed(format!("the {name} frame has {} bits, Bits Stored is {stored}", frame.precision)));
    }
    if representation == 1 {
        // Two's complement in Bits Stored bits: sign-extend from the high bit.
        let shift = 32 - stored;
        rescale_into(out, frame.samples.iter().map(|v| (i32::from(*v) << shift) >> shift), rescale(obj));
    } else {
        rescale_into(out, frame.samples.iter().map(|v| i32::from(*v)), rescale(obj));
    }
    Ok(())
}
