//! Preview PNGs (8-bit grayscale): a coronal maximum-intensity projection of the PET (inverted,
//! as PET is read) and CT slices in a soft-tissue window. Pixels are resampled to square so
//! the anatomy is not stretched.

use std::path::Path;

use super::grid::Grid;
use super::{Phantom, PhantomError};

fn write_png(path: &Path, width: usize, height: usize, data: &[u8]) -> Result<(), PhantomError> {
    let err = |e: &dyn std::fmt::Display| PhantomError::Png { path: path.to_path_buf(), message: e.to_string() };
    let file = std::fs::File::create(path).map_err(PhantomError::io("creating", path))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width as u32, height as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| err(&e))?;
    w.write_image_data(data).map_err(|e| err(&e))?;
    w.finish().map_err(|e| err(&e))
}

/// Resample a coronal image given as rows over z (row 0 = most superior) to square pixels.
fn square_rows(img: &[u8], width: usize, rows: usize, row_mm: f64, col_mm: f64) -> (Vec<u8>, usize) {
    let height = ((rows as f64 * row_mm / col_mm).round() as usize).max(1);
    let mut out = vec![0u8; width * height];
    for r in 0..height {
        let src = (((r as f64 + 0.5) * col_mm / row_mm) as usize).min(rows - 1);
        out[r * width..(r + 1) * width].copy_from_slice(&img[src * width..(src + 1) * width]);
    }
    (out, height)
}

/// Coronal MIP of SUV, inverted gray (SUV 0 white, >= `suv_max` black), cropped to `x_range_mm`.
pub fn pet_mip(pet: &Grid, suv: &[f32], suv_max: f32, x_range_mm: (f64, f64)) -> (Vec<u8>, usize, usize) {
    let cols = pet.index_range(0, x_range_mm.0, x_range_mm.1);
    let width = cols.len();
    let rows = pet.nz();
    let mut img = vec![0u8; width * rows];
    for r in 0..rows {
        let k = pet.nz() - 1 - r;
        for (c, i) in cols.clone().enumerate() {
            let m = (0..pet.ny()).map(|j| suv[pet.index(i, j, k)]).fold(0f32, f32::max);
            img[r * width + c] = 255 - (255.0 * (m / suv_max).clamp(0.0, 1.0)).round() as u8;
        }
    }
    let (out, height) = square_rows(&img, width, rows, pet.spacing_mm[2], pet.spacing_mm[0]);
    (out, width, height)
}

/// Nearest-neighbour 2x enlargement (PET pixels are 4 mm; the MIP is otherwise tiny).
fn upscale2(img: &[u8], w: usize, h: usize) -> (Vec<u8>, usize, usize) {
    let mut out = vec![0u8; 4 * w * h];
    for r in 0..2 * h {
        for c in 0..2 * w {
            out[r * 2 * w + c] = img[(r / 2) * w + c / 2];
        }
    }
    (out, 2 * w, 2 * h)
}

fn window(hu: f64, centre: f64, width: f64) -> u8 {
    (255.0 * ((hu - centre + width / 2.0) / width).clamp(0.0, 1.0)).round() as u8
}

pub fn write_previews(ph: &Phantom, dir: &Path) -> Result<(), PhantomError> {
    std::fs::create_dir_all(dir).map_err(PhantomError::io("creating directory", dir))?;
    let ct = &ph.ct_grid;
    let fov = (ct.x_mm(0), ct.x_mm(ct.nx() - 1));
    let (mip, w, h) = pet_mip(&ph.pet_grid, &ph.pet_suv, 8.0, fov);
    let (mip, w, h) = upscale2(&mip, w, h);
    write_png(&dir.join("phantom_pet_mip.png"), w, h, &mip)?;
    let hu = |idx: usize| ph.ct_stored[idx] as f64 + super::ct::RESCALE_INTERCEPT;
    // Axial slice through the liver dome region (or the middle slice if out of range).
    let liver_z = ph.model_liver_z.unwrap_or(ct.centre_mm()[2]);
    let k = (((liver_z - ct.origin_mm[2]) / ct.spacing_mm[2]).round().max(0.0) as usize).min(ct.nz() - 1);
    let axial: Vec<u8> = (0..ct.slice_len()).map(|p| window(hu(k * ct.slice_len() + p), 40.0, 400.0)).collect();
    write_png(&dir.join("phantom_ct_axial.png"), ct.nx(), ct.ny(), &axial)?;
    // Coronal slice through the vertebral bodies' front (shows lungs, liver, kidneys, spine).
    let j = ((ph.coronal_y_mm - ct.origin_mm[1]) / ct.spacing_mm[1]).round().clamp(0.0, ct.ny() as f64 - 1.0) as usize;
    let mut cor = vec![0u8; ct.nx() * ct.nz()];
    for r in 0..ct.nz() {
        let k = ct.nz() - 1 - r;
        for i in 0..ct.nx() {
            cor[r * ct.nx() + i] = window(hu(ct.index(i, j, k)), 40.0, 500.0);
        }
    }
    let (cor, ch) = square_rows(&cor, ct.nx(), ct.nz(), ct.spacing_mm[2], ct.spacing_mm[0]);
    write_png(&dir.join("phantom_ct_coronal.png"), ct.nx(), ch, &cor)
}
