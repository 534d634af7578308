//! A coronal maximum-intensity projection of the SUV, as nuclear medicine readers look at it:
//! projected along the anterior-posterior axis of the CT grid, head up, patient's right on the
//! viewer's left, rows resampled so that pixels are square, grey scale inverted and windowed
//! to 0..[`WINDOW_SUV`]; each lesion's projection outlined in colour. Written as a Secondary
//! Capture (RGB) in a new series of the study, and as PNG.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use rayon::prelude::*;

use super::{Context, EncodeError, EncodeInput, part10, put};
use crate::phantom::dicom::ds;
use crate::volume::{Geometry, Volume};

pub const SECONDARY_CAPTURE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.7";
pub const SERIES_NUMBER: &str = "902";
/// SUV shown black; 0 is white.
pub const WINDOW_SUV: f32 = 10.0;
/// Outline colours, lesion by lesion in turn.
const PALETTE: [[u8; 3]; 6] =
    [[230, 25, 25], [0, 150, 255], [0, 180, 60], [255, 140, 0], [190, 40, 220], [0, 190, 190]];

/// How output pixels map to the grid: column `c` shows voxel column `source_i(c)`, row `r`
/// the (continuous) slice `source_k(r)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    nx: usize,
    nz: usize,
    pub width: usize,
    pub height: usize,
    /// The x index runs toward the patient's right: mirror it.
    flip_x: bool,
    /// The slice index runs toward the head: the last slice goes on top.
    flip_z: bool,
    /// Distance between rows and between columns of the picture (mm).
    pub row_spacing_mm: f64,
    pub column_spacing_mm: f64,
}

impl Projection {
    pub fn new(g: &Geometry) -> Result<Self, EncodeError> {
        let [nx, _, nz] = g.dims;
        let d = g.direction;
        // Axial slices: rows run anterior-posterior, slices head-feet.
        if d[1][1].abs() < 0.7 || d[2][2].abs() < 0.7 {
            return Err(EncodeError::NotAxial { normal: d[2] });
        }
        let [sx, _, sz] = g.spacing_mm;
        let extent_mm = (nz - 1) as f64 * sz;
        let height = (extent_mm / sx).round() as usize + 1;
        let row_spacing_mm = if height > 1 { extent_mm / (height - 1) as f64 } else { sz };
        Ok(Self {
            nx,
            nz,
            width: nx,
            height,
            flip_x: d[0][0] < 0.0,
            flip_z: d[2][2] > 0.0,
            row_spacing_mm,
            column_spacing_mm: sx,
        })
    }

    pub fn source_i(&self, c: usize) -> usize {
        if self.flip_x { self.nx - 1 - c } else { c }
    }

    pub fn source_k(&self, r: usize) -> f64 {
        let from_top = if self.height > 1 { r as f64 * (self.nz - 1) as f64 / (self.height - 1) as f64 } else { 0.0 };
        if self.flip_z { (self.nz - 1) as f64 - from_top } else { from_top }
    }

    fn nearest_k(&self, r: usize) -> usize {
        (self.source_k(r).round() as usize).min(self.nz - 1)
    }
}

/// The maximum along y of every (z, x): `nz` rows of `nx`.
fn coronal_max(suv: &Volume<f32>) -> Vec<f32> {
    let nx = suv.geometry().dims[0];
    let mut out = vec![f32::NEG_INFINITY; suv.geometry().dims[2] * nx];
    out.par_chunks_mut(nx).enumerate().for_each(|(k, o)| {
        for row in suv.slice(k).chunks_exact(nx) {
            for (m, v) in o.iter_mut().zip(row) {
                *m = m.max(*v);
            }
        }
    });
    out
}

/// The projected footprint of each lesion on the (z, x) plane, as sorted `(label, k, i)`.
fn footprints(labels: &Volume<u32>) -> Vec<(u32, u32, u32)> {
    let nx = labels.geometry().dims[0];
    let per_slice: Vec<Vec<(u32, u32, u32)>> = (0..labels.geometry().dims[2])
        .into_par_iter()
        .map(|k| {
            // The label last recorded in each column: rows of one lesion repeat it.
            let mut last = vec![0u32; nx];
            let mut v: Vec<(u32, u32, u32)> = Vec::new();
            // Most rows hold no lesion: a vectorised test skips them.
            for row in labels.slice(k).chunks_exact(nx).filter(|row| row.iter().fold(0, |a, &l| a | l) != 0) {
                for (i, (&l, seen)) in row.iter().zip(last.iter_mut()).enumerate() {
                    if l != 0 && l != *seen {
                        *seen = l;
                        v.push((l, k as u32, i as u32));
                    }
                }
            }
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    let mut all: Vec<_> = per_slice.into_iter().flatten().collect();
    all.par_sort_unstable();
    all
}

/// The picture: RGB, row by row.
pub struct Picture {
    pub projection: Projection,
    pub rgb: Vec<u8>,
}

/// Renders the MIP of `suv` with the outlines of the lesions `lesion_labels` (in colour order).
pub fn render(suv: &Volume<f32>, labels: &Volume<u32>, lesion_labels: &[u32]) -> Result<Picture, EncodeError> {
    let p = Projection::new(suv.geometry())?;
    let mip = coronal_max(suv);
    let (w, nx) = (p.width, p.nx);
    let mut rgb = vec![0u8; p.width * p.height * 3];
    rgb.par_chunks_mut(w * 3).enumerate().for_each(|(r, out)| {
        let kf = p.source_k(r);
        let k0 = (kf.floor() as usize).min(p.nz - 1);
        let k1 = (k0 + 1).min(p.nz - 1);
        let t = (kf - k0 as f64) as f32;
        for (c, px) in out.chunks_exact_mut(3).enumerate() {
            let i = p.source_i(c);
            let v = mip[k0 * nx + i] * (1.0 - t) + mip[k1 * nx + i] * t;
            let grey = 255 - (v / WINDOW_SUV * 255.0).clamp(0.0, 255.0).round() as u8;
            px.fill(grey);
        }
    });
    let all = footprints(labels);
    for (n, label) in lesion_labels.iter().enumerate() {
        let start = all.partition_point(|f| f.0 < *label);
        let end = all.partition_point(|f| f.0 <= *label);
        outline(&p, &all[start..end], PALETTE[n % PALETTE.len()], &mut rgb);
    }
    Ok(Picture { projection: p, rgb })
}

/// Colours the boundary of one lesion's footprint (4-neighbourhood, in picture space).
fn outline(p: &Projection, footprint: &[(u32, u32, u32)], colour: [u8; 3], rgb: &mut [u8]) {
    let Some(k_min) = footprint.iter().map(|f| f.1 as usize).min() else { return };
    let k_max = footprint.iter().map(|f| f.1 as usize).max().unwrap_or(k_min);
    let i_min = footprint.iter().map(|f| f.2 as usize).min().unwrap_or(0);
    let i_max = footprint.iter().map(|f| f.2 as usize).max().unwrap_or(i_min);
    let (dk, di) = (k_max - k_min + 1, i_max - i_min + 1);
    let mut grid = vec![false; dk * di];
    for f in footprint {
        grid[(f.1 as usize - k_min) * di + (f.2 as usize - i_min)] = true;
    }
    let inside = |r: isize, c: isize| {
        if r < 0 || c < 0 || r as usize >= p.height || c as usize >= p.width {
            return false;
        }
        let (k, i) = (p.nearest_k(r as usize), p.source_i(c as usize));
        (k_min..=k_max).contains(&k) && (i_min..=i_max).contains(&i) && grid[(k - k_min) * di + (i - i_min)]
    };
    for r in 0..p.height as isize {
        if !(k_min..=k_max).contains(&p.nearest_k(r as usize)) {
            continue;
        }
        // The columns showing voxel columns i_min..=i_max.
        let (c0, c1) = if p.flip_x { (p.nx - 1 - i_max, p.nx - 1 - i_min) } else { (i_min, i_max) };
        for c in c0 as isize..=c1 as isize {
            if inside(r, c) && !(inside(r - 1, c) && inside(r + 1, c) && inside(r, c - 1) && inside(r, c + 1)) {
                let at = (r as usize * p.width + c as usize) * 3;
                rgb[at..at + 3].copy_from_slice(&colour);
            }
        }
    }
}

fn png(picture: &Picture) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    let p = &picture.projection;
    let (w, h) = (u32::try_from(p.width), u32::try_from(p.height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(EncodeError::Png(format!("{}x{} pixels", p.width, p.height)));
    };
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // The balanced default takes 80 ms on a whole-body MIP, for a few percent of size.
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(|e| EncodeError::Png(e.to_string()))?;
    writer.write_image_data(&picture.rgb).map_err(|e| EncodeError::Png(e.to_string()))?;
    writer.finish().map_err(|e| EncodeError::Png(e.to_string()))?;
    Ok(out)
}

/// The Secondary Capture and the PNG.
pub(crate) fn build(input: &EncodeInput, cx: &Context) -> Result<(Vec<u8>, Vec<u8>), EncodeError> {
    let lesion_labels: Vec<u32> = input.findings.lesions.iter().map(|l| l.label).collect();
    let picture = render(input.suv_on_ct, input.labels, &lesion_labels)?;
    let p = &picture.projection;
    let (Ok(rows), Ok(cols)) = (u16::try_from(p.height), u16::try_from(p.width)) else {
        return Err(EncodeError::Input(format!("a {}x{} MIP does not fit a DICOM image", p.width, p.height)));
    };
    let mut o = cx.base(&input.ct.headers[0], SECONDARY_CAPTURE_STORAGE, &cx.uids.mip_instance);
    put(&mut o, tags::MODALITY, VR::CS, "OT");
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, cx.uids.mip_series.as_str());
    put(&mut o, tags::SERIES_NUMBER, VR::IS, SERIES_NUMBER);
    put(&mut o, tags::SERIES_DESCRIPTION, VR::LO, "SUV MIP with lesions (petct-node)");
    // An unpaired body part: Laterality (2C) then stays absent.
    put(&mut o, tags::BODY_PART_EXAMINED, VR::CS, "WHOLEBODY");
    put(&mut o, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put(&mut o, tags::IMAGE_TYPE, VR::CS, "DERIVED\\SECONDARY\\MIP");
    // Rows run toward the patient's left, columns toward the feet.
    put(&mut o, tags::PATIENT_ORIENTATION, VR::CS, "L\\F");
    put(
        &mut o,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        format!("Coronal maximum intensity projection of SUVbw, inverted, window 0-{WINDOW_SUV}; lesion outlines"),
    );
    put(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    put(&mut o, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put(&mut o, tags::SAMPLES_PER_PIXEL, VR::US, 3u16);
    put(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put(&mut o, tags::PLANAR_CONFIGURATION, VR::US, 0u16);
    put(&mut o, tags::ROWS, VR::US, rows);
    put(&mut o, tags::COLUMNS, VR::US, cols);
    put(&mut o, tags::PIXEL_SPACING, VR::DS, format!("{}\\{}", ds(p.row_spacing_mm), ds(p.column_spacing_mm)));
    put(&mut o, tags::BITS_ALLOCATED, VR::US, 8u16);
    put(&mut o, tags::BITS_STORED, VR::US, 8u16);
    put(&mut o, tags::HIGH_BIT, VR::US, 7u16);
    put(&mut o, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    let png = png(&picture)?;
    let mut pixels = picture.rgb;
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    put(&mut o, tags::PIXEL_DATA, VR::OB, pixels);
    Ok((part10(o, "MIP secondary capture")?, png))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axial(dims: [usize; 3], spacing_mm: [f64; 3], x_sign: f64) -> Geometry {
        Geometry {
            dims,
            spacing_mm,
            origin_mm: [0.0; 3],
            direction: [[x_sign, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    fn pixel(p: &Picture, r: usize, c: usize) -> [u8; 3] {
        let at = (r * p.projection.width + c) * 3;
        [p.rgb[at], p.rgb[at + 1], p.rgb[at + 2]]
    }

    #[test]
    fn projection_keeps_the_aspect_ratio_and_puts_the_head_on_top() {
        // 2 mm pixels, 4 mm slices, 3 slices: 8 mm of extent make 5 rows of 2 mm.
        let g = axial([4, 3, 3], [2.0, 2.0, 4.0], 1.0);
        let p = Projection::new(&g).unwrap();
        assert_eq!((p.width, p.height), (4, 5));
        assert!((p.row_spacing_mm - 2.0).abs() < 1e-12);
        // Slice index runs toward the head (+z): the last slice is the top row.
        assert_eq!(p.source_k(0), 2.0);
        assert_eq!(p.source_k(4), 0.0);
        assert_eq!(p.source_k(2), 1.0);
        assert_eq!((p.source_i(0), p.source_i(3)), (0, 3));
        // An x axis toward the patient's right is mirrored.
        let mirrored = Projection::new(&axial([4, 3, 3], [2.0, 2.0, 4.0], -1.0)).unwrap();
        assert_eq!((mirrored.source_i(0), mirrored.source_i(3)), (3, 0));
        let mut sagittal = g.clone();
        sagittal.direction = [[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]];
        assert!(matches!(Projection::new(&sagittal), Err(EncodeError::NotAxial { .. })));
    }

    #[test]
    fn a_hot_voxel_lands_where_the_geometry_says_and_lesions_are_outlined() {
        let g = axial([8, 6, 5], [2.0, 2.0, 4.0], 1.0);
        let n = 8 * 6 * 5;
        let mut suv = vec![1.0f32; n];
        // Hot voxel at i=6, j=4, k=1: slice 1 of 5 (toward the feet), shown at row
        // (4 - 1) * 2 = 6 of 9.
        suv[48 + 4 * 8 + 6] = 20.0;
        let suv = Volume::new(g.clone(), suv).unwrap();
        let mut labels = vec![0u32; n];
        // Lesion 7: a 3x3 block in x (1..=3) and z (2..=4), at j = 2.
        for k in 2..=4 {
            for i in 1..=3 {
                labels[k * 48 + 2 * 8 + i] = 7;
            }
        }
        let labels = Volume::new(g, labels).unwrap();
        let p = render(&suv, &labels, &[7]).unwrap();
        assert_eq!((p.projection.width, p.projection.height), (8, 9));
        assert_eq!(pixel(&p, 6, 6), [0, 0, 0], "SUV above the window is black");
        // SUV 1 everywhere else: 255 - 25.5.
        assert_eq!(pixel(&p, 8, 7), [229, 229, 229]);
        // Slices 2..=4 are rows 0..=5 (row 5 shows slice 1.5, which rounds to 2).
        let red = PALETTE[0];
        assert_eq!(pixel(&p, 0, 1), red);
        assert_eq!(pixel(&p, 0, 3), red);
        assert_eq!(pixel(&p, 2, 1), red);
        assert_eq!(pixel(&p, 2, 2), [229, 229, 229], "the inside stays grey");
        assert_eq!(pixel(&p, 2, 4), [229, 229, 229], "outside the footprint");
        assert_eq!(pixel(&p, 8, 2), [229, 229, 229]);
    }
}
