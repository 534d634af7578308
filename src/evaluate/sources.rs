//! The sources of one patient folder and their masks on the patient's evaluation grid.
//!
//! A NIfTI file (`*.nii`, `*.nii.gz`) is one source named by its file stem, foreground = any
//! non-zero voxel. A DICOM Segmentation (BINARY or FRACTIONAL) gives one source per segment,
//! named by its Segment Label; its frames are placed on the grid by their Image Position
//! (Patient), which must fall on a voxel of it (orientation and pixel spacing equal).

use std::path::{Path, PathBuf};

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use rayon::prelude::*;

use super::EvaluateError;
use crate::assemble::text;
use crate::encode::seg::SEGMENTATION_STORAGE;
use crate::volume::Geometry;

/// Largest difference between two affines (mm) for which they are the same grid.
pub const AFFINE_TOLERANCE_MM: f64 = 1e-3;
/// Largest difference between a SEG's direction cosines and the grid's.
pub const ORIENTATION_TOLERANCE: f64 = 1e-4;
/// Largest difference between a SEG's pixel spacing and the grid's (mm).
pub const SPACING_TOLERANCE_MM: f64 = 1e-3;
/// Largest distance (in voxels, along each axis) of a SEG frame's position from a voxel centre.
pub const POSITION_TOLERANCE_VOXELS: f64 = 0.05;

/// One mask of a patient folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub name: String,
    pub path: PathBuf,
    /// The segment number for a SEG source; `None` for a NIfTI file.
    pub segment: Option<u16>,
}

impl Source {
    /// The file, with the segment for a SEG source (for messages).
    pub fn describe(&self) -> String {
        match self.segment {
            Some(n) => format!("{} (segment {n})", self.path.display()),
            None => self.path.display().to_string(),
        }
    }
}

fn nifti_stem(file_name: &str) -> Option<&str> {
    let lower = file_name.to_ascii_lowercase();
    let n = if lower.ends_with(".nii.gz") {
        7
    } else if lower.ends_with(".nii") {
        4
    } else {
        return None;
    };
    Some(&file_name[..file_name.len() - n]).filter(|s| !s.is_empty())
}

/// The sources of a patient folder (not recursive), sorted by file name then segment number.
/// Two with one name are an error naming both.
pub fn scan(patient: &str, dir: &Path) -> Result<Vec<Source>, EvaluateError> {
    let read = |source| EvaluateError::Io { path: dir.to_path_buf(), source };
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(read)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(read)?;
    entries.sort();
    let mut sources = Vec::new();
    for path in entries {
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if path.is_dir() {
            tracing::debug!(path = %path.display(), "ignoring a folder inside a patient folder");
        } else if let Some(stem) = nifti_stem(&file_name) {
            sources.push(Source { name: stem.to_string(), path, segment: None });
        } else {
            sources.extend(seg_sources(patient, &path, &file_name)?);
        }
    }
    for (i, a) in sources.iter().enumerate() {
        if let Some(b) = sources[i + 1..].iter().find(|b| b.name == a.name) {
            return Err(EvaluateError::DuplicateSource {
                patient: patient.to_string(),
                name: a.name.clone(),
                first: a.describe(),
                second: b.describe(),
            });
        }
    }
    Ok(sources)
}

/// The segments of a DICOM Segmentation file; nothing (logged at debug level) for any other
/// file.
fn seg_sources(patient: &str, path: &Path, file_name: &str) -> Result<Vec<Source>, EvaluateError> {
    let obj = match OpenFileOptions::new().read_until(tags::PIXEL_DATA).open_file(path) {
        Ok(obj) => obj,
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "ignoring a file that is neither NIfTI nor DICOM");
            return Ok(Vec::new());
        }
    };
    let sop_class = obj.meta().media_storage_sop_class_uid.trim_end_matches(['\0', ' ']);
    if sop_class != SEGMENTATION_STORAGE {
        tracing::debug!(path = %path.display(), sop_class, "ignoring a DICOM file that is not a Segmentation");
        return Ok(Vec::new());
    }
    let stem = file_name.rsplit_once('.').map_or(file_name, |(s, _)| s);
    let segments = segments(&obj).map_err(|message| seg_error(patient, path, message))?;
    Ok(segments
        .into_iter()
        .map(|(number, label)| Source {
            name: label.unwrap_or_else(|| format!("{stem}:{number}")),
            path: path.to_path_buf(),
            segment: Some(number),
        })
        .collect())
}

fn seg_error(patient: &str, path: &Path, message: String) -> EvaluateError {
    EvaluateError::Seg { patient: patient.to_string(), path: path.to_path_buf(), message }
}

/// Segment numbers and labels of the Segment Sequence.
fn segments(obj: &InMemDicomObject) -> Result<Vec<(u16, Option<String>)>, String> {
    let items = obj
        .get(tags::SEGMENT_SEQUENCE)
        .and_then(|e| e.items())
        .filter(|i| !i.is_empty())
        .ok_or("no Segment Sequence (0062,0002)")?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let number = int(item, tags::SEGMENT_NUMBER)
            .and_then(|n| u16::try_from(n).ok())
            .ok_or_else(|| format!("Segment Sequence item {}: no Segment Number (0062,0004)", i + 1))?;
        if out.iter().any(|(n, _)| *n == number) {
            return Err(format!("segment number {number} appears twice in the Segment Sequence"));
        }
        out.push((number, text(item, tags::SEGMENT_LABEL)));
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.to_int::<i64>().ok()
}

fn numbers<const N: usize>(obj: &InMemDicomObject, tag: Tag) -> Option<[f64; N]> {
    let v = obj.get(tag)?.to_multi_float64().ok()?;
    <[f64; N]>::try_from(v).ok().filter(|v| v.iter().all(|x| x.is_finite()))
}

/// An attribute of a functional group: in the frame's item of the Per-frame Functional Groups
/// Sequence, else in the Shared Functional Groups Sequence.
fn functional<'a>(
    frame: Option<&'a InMemDicomObject>,
    shared: Option<&'a InMemDicomObject>,
    group: Tag,
) -> Option<&'a InMemDicomObject> {
    let first = |o: &'a InMemDicomObject| o.get(group).and_then(|e| e.items()).and_then(|i| i.first());
    frame.and_then(first).or_else(|| shared.and_then(first))
}

/// How a frame's pixels are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Encoding {
    /// One bit per pixel, least significant first, frames back to back (PS3.5 8.1.1).
    Binary,
    /// One byte per pixel; foreground above half the Maximum Fractional Value.
    Fractional { max: u8 },
}

/// One frame of a Segmentation: which segment, where, how oriented and sampled.
#[derive(Debug, Clone, PartialEq)]
struct Frame {
    segment: u16,
    position_mm: [f64; 3],
    /// Image Orientation (Patient): row direction then column direction.
    orientation: [f64; 6],
    /// Pixel Spacing: between rows, then between columns (mm).
    pixel_spacing_mm: [f64; 2],
}

/// What of a Segmentation's header is needed to rasterise it.
#[derive(Debug)]
struct SegLayout {
    rows: usize,
    columns: usize,
    encoding: Encoding,
    frames: Vec<Frame>,
}

fn layout(obj: &InMemDicomObject) -> Result<SegLayout, String> {
    let dimension = |tag, name: &str| {
        int(obj, tag).and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0).ok_or(format!("no {name}"))
    };
    let rows = dimension(tags::ROWS, "Rows (0028,0010)")?;
    let columns = dimension(tags::COLUMNS, "Columns (0028,0011)")?;
    let count = dimension(tags::NUMBER_OF_FRAMES, "Number of Frames (0028,0008)")?;
    let bits = int(obj, tags::BITS_ALLOCATED);
    let encoding = match (text(obj, tags::SEGMENTATION_TYPE).as_deref(), bits) {
        (Some("BINARY"), Some(1)) => Encoding::Binary,
        (Some("FRACTIONAL"), Some(8)) => {
            let max = int(obj, tags::MAXIMUM_FRACTIONAL_VALUE)
                .and_then(|m| u8::try_from(m).ok())
                .filter(|&m| m > 0)
                .ok_or("a FRACTIONAL segmentation without Maximum Fractional Value (0062,000E)")?;
            Encoding::Fractional { max }
        }
        (Some(t @ ("BINARY" | "FRACTIONAL")), b) => {
            return Err(format!("Segmentation Type {t} with Bits Allocated {b:?}"));
        }
        (t, _) => return Err(format!("Segmentation Type {t:?} is not supported (BINARY and FRACTIONAL are)")),
    };
    let shared = obj.get(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|e| e.items()).and_then(|i| i.first());
    let per_frame = obj.get(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|e| e.items()).unwrap_or(&[]);
    if per_frame.len() != count {
        return Err(format!(
            "{} items in the Per-frame Functional Groups Sequence for {count} frames",
            per_frame.len()
        ));
    }
    let frames = per_frame
        .iter()
        .enumerate()
        .map(|(f, item)| {
            let at = |group, tag, name: &str| {
                functional(Some(item), shared, group)
                    .ok_or_else(|| format!("frame {}: no {name}", f + 1))
                    .map(|g| (g, tag))
            };
            let (g, tag) = at(
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                tags::REFERENCED_SEGMENT_NUMBER,
                "Segment Identification Sequence",
            )?;
            let segment = int(g, tag)
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("frame {}: no Referenced Segment Number (0062,000B)", f + 1))?;
            let (g, tag) = at(tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT, "Plane Position Sequence")?;
            let position_mm =
                numbers(g, tag).ok_or_else(|| format!("frame {}: no Image Position (Patient) (0020,0032)", f + 1))?;
            let (g, tag) =
                at(tags::PLANE_ORIENTATION_SEQUENCE, tags::IMAGE_ORIENTATION_PATIENT, "Plane Orientation Sequence")?;
            let orientation = numbers(g, tag)
                .ok_or_else(|| format!("frame {}: no Image Orientation (Patient) (0020,0037)", f + 1))?;
            let (g, tag) = at(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING, "Pixel Measures Sequence")?;
            let pixel_spacing_mm =
                numbers(g, tag).ok_or_else(|| format!("frame {}: no Pixel Spacing (0028,0030)", f + 1))?;
            Ok(Frame { segment, position_mm, orientation, pixel_spacing_mm })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(SegLayout { rows, columns, encoding, frames })
}

/// Where a frame goes on the grid: its first pixel's column and row, and its slice.
fn place(frame: &Frame, rows: usize, columns: usize, grid: &Geometry) -> Result<[usize; 3], String> {
    let [nx, ny, nz] = grid.dims;
    let o = frame.orientation;
    let off = (0..3)
        .map(|c| (o[c] - grid.direction[0][c]).abs().max((o[3 + c] - grid.direction[1][c]).abs()))
        .fold(0.0, f64::max);
    if off > ORIENTATION_TOLERANCE {
        return Err(format!(
            "Image Orientation (Patient) {o:?} differs from the grid's ({:?}, {:?}) by {off:.2e}",
            grid.direction[0], grid.direction[1]
        ));
    }
    // Pixel Spacing is (between rows, between columns): the grid's (y, x) spacing.
    let [dy, dx] = frame.pixel_spacing_mm;
    if (dx - grid.spacing_mm[0]).abs() > SPACING_TOLERANCE_MM || (dy - grid.spacing_mm[1]).abs() > SPACING_TOLERANCE_MM
    {
        return Err(format!(
            "Pixel Spacing [{dy}, {dx}] mm differs from the grid's [{}, {}] mm",
            grid.spacing_mm[1], grid.spacing_mm[0]
        ));
    }
    let index = grid.patient_to_index(frame.position_mm);
    let rounded = index.map(f64::round);
    let miss = (0..3).map(|a| (index[a] - rounded[a]).abs()).fold(0.0, f64::max);
    if miss > POSITION_TOLERANCE_VOXELS {
        return Err(format!(
            "Image Position (Patient) {:?} falls {miss:.3} voxel from the nearest voxel of the grid \
             (index {:.3}, {:.3}, {:.3})",
            frame.position_mm, index[0], index[1], index[2]
        ));
    }
    let [i, j, k] = rounded;
    if i < 0.0 || j < 0.0 || k < 0.0 || i as usize + columns > nx || j as usize + rows > ny || k as usize >= nz {
        return Err(format!("a {columns}x{rows} frame at voxel ({i}, {j}, {k}) does not fit the {nx}x{ny}x{nz} grid"));
    }
    Ok([i as usize, j as usize, k as usize])
}

/// The masks (0/1 on `grid`, `(z, y, x)`) of the given segments of one Segmentation file, in
/// the order asked. Frames of one segment on one slice are combined (union).
pub fn read_seg(
    patient: &str,
    path: &Path,
    segments: &[u16],
    grid: &Geometry,
    grid_file: &Path,
) -> Result<Vec<Vec<u8>>, EvaluateError> {
    let err = |message: String| seg_error(patient, path, message);
    let obj: DefaultDicomObject =
        OpenFileOptions::new().open_file(path).map_err(|e| err(format!("reading the Segmentation: {e}")))?;
    let layout = layout(&obj).map_err(err)?;
    let (rows, columns) = (layout.rows, layout.columns);
    let pixels = obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| err("no Pixel Data".into()))?
        .to_bytes()
        .map_err(|_| err("encapsulated (compressed) Pixel Data is not supported".into()))?;
    let per_frame = rows * columns;
    let needed = match layout.encoding {
        Encoding::Binary => (layout.frames.len() * per_frame).div_ceil(8),
        Encoding::Fractional { .. } => layout.frames.len() * per_frame,
    };
    if pixels.len() < needed {
        return Err(err(format!(
            "Pixel Data holds {} bytes, {} frames need {needed}",
            pixels.len(),
            layout.frames.len()
        )));
    }
    let known = self::segments(&obj).map_err(err)?;
    if let Some(f) = layout.frames.iter().position(|f| !known.iter().any(|(n, _)| *n == f.segment)) {
        return Err(err(format!(
            "frame {} refers to segment {}, not in the Segment Sequence",
            f + 1,
            layout.frames[f].segment
        )));
    }
    let placed = layout
        .frames
        .iter()
        .enumerate()
        .map(|(f, frame)| {
            place(frame, rows, columns, grid).map_err(|m| {
                err(format!(
                    "frame {} (segment {}) is not on the grid of {}: {m}",
                    f + 1,
                    frame.segment,
                    grid_file.display()
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let [nx, ny, nz] = grid.dims;
    let pixels: &[u8] = &pixels;
    let encoding = layout.encoding;
    let masks = segments
        .iter()
        .map(|&segment| {
            // Frames of this segment, by slice.
            let mut by_slice: Vec<Vec<usize>> = vec![Vec::new(); nz];
            for (f, frame) in layout.frames.iter().enumerate() {
                if frame.segment == segment {
                    by_slice[placed[f][2]].push(f);
                }
            }
            let mut mask = vec![0u8; nx * ny * nz];
            mask.par_chunks_exact_mut(nx * ny).zip(&by_slice).for_each(|(slice, frames)| {
                for &f in frames {
                    let [i0, j0, _] = placed[f];
                    for r in 0..rows {
                        let out = &mut slice[(j0 + r) * nx + i0..][..columns];
                        let first = f * per_frame + r * columns;
                        match encoding {
                            Encoding::Binary => {
                                for (c, v) in out.iter_mut().enumerate() {
                                    let bit = first + c;
                                    *v |= (pixels[bit / 8] >> (bit % 8)) & 1;
                                }
                            }
                            Encoding::Fractional { max } => {
                                for (v, &p) in out.iter_mut().zip(&pixels[first..first + columns]) {
                                    // Above half the maximum: 2p > max, in integers.
                                    *v |= u8::from(2 * u16::from(p) > u16::from(max));
                                }
                            }
                        }
                    }
                }
            });
            mask
        })
        .collect();
    Ok(masks)
}

/// The largest difference (mm) between the affines of two grids of the same size; `None` when
/// the sizes differ.
pub fn affine_difference_mm(a: &Geometry, b: &Geometry) -> Option<f64> {
    if a.dims != b.dims {
        return None;
    }
    let (fa, fb) = (crate::nifti::ras_affine(a), crate::nifti::ras_affine(b));
    Some(fa.iter().flatten().zip(fb.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::seg::pack_bits;
    use crate::encode::{part10, put, put_seq};
    use dicom_core::{PrimitiveValue, VR};

    /// A 7x5x4 grid, 2 x 1.5 x 3 mm, axial LPS, origin (10, -20, 30).
    fn grid() -> Geometry {
        Geometry {
            dims: [7, 5, 4],
            spacing_mm: [2.0, 1.5, 3.0],
            origin_mm: [10.0, -20.0, 30.0],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    struct TestFrame {
        segment: u16,
        position: [f64; 3],
        pixels: Vec<u8>,
    }

    fn item(build: impl FnOnce(&mut InMemDicomObject)) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        build(&mut o);
        o
    }

    fn ds(v: &[f64]) -> String {
        v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("\\")
    }

    /// Writes a Segmentation of `rows` x `columns` frames; `fractional` stores one byte a
    /// pixel (maximum 200) instead of one bit.
    fn write_seg(
        path: &Path,
        (rows, columns): (u16, u16),
        labels: &[(u16, Option<&str>)],
        frames: &[TestFrame],
        fractional: bool,
        orientation: &[f64; 6],
        pixel_spacing: &[f64; 2],
    ) {
        let mut o = InMemDicomObject::new_empty();
        put(&mut o, tags::SOP_CLASS_UID, VR::UI, SEGMENTATION_STORAGE);
        put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, "2.25.1234");
        put(&mut o, tags::MODALITY, VR::CS, "SEG");
        put(&mut o, tags::ROWS, VR::US, rows);
        put(&mut o, tags::COLUMNS, VR::US, columns);
        put(&mut o, tags::NUMBER_OF_FRAMES, VR::IS, frames.len().to_string());
        put(&mut o, tags::BITS_ALLOCATED, VR::US, if fractional { 8u16 } else { 1 });
        put(&mut o, tags::SEGMENTATION_TYPE, VR::CS, if fractional { "FRACTIONAL" } else { "BINARY" });
        if fractional {
            put(&mut o, tags::MAXIMUM_FRACTIONAL_VALUE, VR::US, 200u16);
        }
        let segments = labels
            .iter()
            .map(|(n, label)| {
                item(|s| {
                    put(s, tags::SEGMENT_NUMBER, VR::US, *n);
                    if let Some(l) = label {
                        put(s, tags::SEGMENT_LABEL, VR::LO, *l);
                    }
                })
            })
            .collect();
        put_seq(&mut o, tags::SEGMENT_SEQUENCE, segments);
        let shared = item(|s| {
            put_seq(
                s,
                tags::PLANE_ORIENTATION_SEQUENCE,
                vec![item(|g| put(g, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(orientation)))],
            );
            put_seq(
                s,
                tags::PIXEL_MEASURES_SEQUENCE,
                vec![item(|g| put(g, tags::PIXEL_SPACING, VR::DS, ds(pixel_spacing)))],
            );
        });
        put_seq(&mut o, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]);
        let per_frame = frames
            .iter()
            .map(|f| {
                item(|s| {
                    put_seq(
                        s,
                        tags::PLANE_POSITION_SEQUENCE,
                        vec![item(|g| put(g, tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&f.position)))],
                    );
                    put_seq(
                        s,
                        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                        vec![item(|g| put(g, tags::REFERENCED_SEGMENT_NUMBER, VR::US, f.segment))],
                    );
                })
            })
            .collect();
        put_seq(&mut o, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame);
        let pixels = if fractional {
            let mut bytes: Vec<u8> = frames.iter().flat_map(|f| f.pixels.iter().copied()).collect();
            bytes.resize(bytes.len().next_multiple_of(2), 0);
            bytes
        } else {
            let views: Vec<&[u8]> = frames.iter().map(|f| f.pixels.as_slice()).collect();
            pack_bits(&views, usize::from(rows) * usize::from(columns))
        };
        put(&mut o, tags::PIXEL_DATA, VR::OB, PrimitiveValue::from(pixels));
        std::fs::write(path, part10(o, "test segmentation").expect("encode")).expect("write");
    }

    const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    /// Pixel Spacing of the grid: between rows (y) 1.5, between columns (x) 2.
    const SPACING: [f64; 2] = [1.5, 2.0];

    /// Patient position of voxel (i, j, k) of [`grid`].
    fn at(i: f64, j: f64, k: f64) -> [f64; 3] {
        grid().index_to_patient([i, j, k])
    }

    /// 5x3 frames (15 pixels: every frame after the first starts mid-byte).
    fn frame(segment: u16, position: [f64; 3], on: &[usize]) -> TestFrame {
        let mut pixels = vec![0u8; 15];
        for &p in on {
            pixels[p] = 1;
        }
        TestFrame { segment, position, pixels }
    }

    fn voxel(i: usize, j: usize, k: usize) -> usize {
        (k * 5 + j) * 7 + i
    }

    #[test]
    fn binary_frames_land_on_their_slices_with_their_in_plane_offset() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("seg.dcm");
        let frames = [
            // Segment 2 first, out of slice order, one frame shifted by (2, 1) voxels.
            frame(2, at(2.0, 1.0, 3.0), &[0, 14]),
            frame(1, at(0.0, 0.0, 1.0), &[1, 5, 13]),
            frame(1, at(0.0, 0.0, 0.0), &[4]),
            // Two frames of one segment on one slice are combined.
            frame(1, at(0.0, 0.0, 1.0), &[2]),
        ];
        write_seg(&path, (3, 5), &[(1, Some("a")), (2, None)], &frames, false, &AXIAL, &SPACING);
        let masks = read_seg("p", &path, &[1, 2], &grid(), Path::new("grid.nii.gz")).expect("read");
        let ones = |m: &[u8]| m.iter().enumerate().filter(|(_, v)| **v != 0).map(|(i, _)| i).collect::<Vec<_>>();
        // Frame pixel p is column p % 5, row p / 5.
        let mut one = vec![voxel(4, 0, 0), voxel(1, 0, 1), voxel(2, 0, 1), voxel(0, 1, 1), voxel(3, 2, 1)];
        one.sort();
        assert_eq!(ones(&masks[0]), one);
        assert_eq!(ones(&masks[1]), vec![voxel(2, 1, 3), voxel(6, 3, 3)]);
        assert!(masks.iter().all(|m| m.iter().all(|&v| v <= 1)));
    }

    #[test]
    fn fractional_frames_are_foreground_above_half_the_maximum() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("seg.dcm");
        let mut f = frame(1, at(1.0, 2.0, 2.0), &[]);
        f.pixels[..5].copy_from_slice(&[0, 100, 101, 200, 255]);
        write_seg(&path, (3, 5), &[(1, Some("soft"))], &[f], true, &AXIAL, &SPACING);
        let m = read_seg("p", &path, &[1], &grid(), Path::new("g")).expect("read").remove(0);
        let on: Vec<usize> = (0..5).filter(|&c| m[voxel(1 + c, 2, 2)] != 0).collect();
        assert_eq!(on, [2, 3, 4]);
        assert_eq!(m.iter().filter(|&&v| v != 0).count(), 3);
    }

    #[test]
    fn frames_off_the_grid_are_errors_that_say_why() {
        let dir = tempfile::tempdir().expect("dir");
        type Case = (&'static str, [f64; 3], [f64; 6], [f64; 2], &'static str);
        let cases: [Case; 5] = [
            ("between", at(0.3, 0.0, 1.0), AXIAL, SPACING, "0.300 voxel"),
            ("oblique", at(0.0, 0.0, 1.0), [1.0, 0.001, 0.0, 0.0, 1.0, 0.0], SPACING, "Image Orientation"),
            ("spacing", at(0.0, 0.0, 1.0), AXIAL, [1.5, 2.01], "Pixel Spacing"),
            ("outside", at(3.0, 0.0, 1.0), AXIAL, SPACING, "does not fit"),
            ("below", at(0.0, 0.0, -1.0), AXIAL, SPACING, "does not fit"),
        ];
        for (name, position, orientation, spacing, expected) in cases {
            let path = dir.path().join(format!("{name}.dcm"));
            write_seg(&path, (3, 5), &[(1, None)], &[frame(1, position, &[0])], false, &orientation, &spacing);
            let e = read_seg("p7", &path, &[1], &grid(), Path::new("ref/p7/truth.nii.gz")).expect_err(name);
            let e = e.to_string();
            assert!(e.contains(expected) && e.contains("truth.nii.gz") && e.contains("p7"), "{name}: {e}");
        }
    }

    #[test]
    fn scanning_names_sources_and_refuses_two_of_one_name() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        write_seg(&d.join("model.dcm"), (3, 5), &[(1, Some("tumour")), (2, None)], &[], false, &AXIAL, &SPACING);
        std::fs::write(d.join("lesions.nii.gz"), b"not read while scanning").expect("write");
        std::fs::write(d.join("notes.txt"), b"ignored").expect("write");
        std::fs::create_dir(d.join("sub")).expect("dir");
        let names: Vec<(String, Option<u16>)> =
            scan("p", d).expect("scan").into_iter().map(|s| (s.name, s.segment)).collect();
        assert_eq!(
            names,
            [("lesions".to_string(), None), ("tumour".to_string(), Some(1)), ("model:2".to_string(), Some(2))]
        );
        std::fs::write(d.join("tumour.nii"), b"").expect("write");
        let e = scan("p3", d).expect_err("duplicate").to_string();
        assert!(e.contains("p3") && e.contains("\"tumour\"") && e.contains("model.dcm (segment 1)"), "{e}");
        assert!(e.contains("tumour.nii"), "{e}");
    }
}
