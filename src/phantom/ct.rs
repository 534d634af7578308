//! CT: Hounsfield units per tissue, lesion appearance, a slight in-plane blur (the scanner's
//! resolution, so edges are not stair-cased) and noise that grows with the body cross-section.

use rayon::prelude::*;

use super::anatomy::Tissue;
use super::grid::Grid;
use super::lesions::{CtEffect, Lesion};
use super::rng::Stream;

/// Rescale Intercept of the CT series: stored = HU + 1024.
pub const RESCALE_INTERCEPT: f64 = -1024.0;

fn is_bone(t: Tissue) -> bool {
    matches!(t, Tissue::CorticalBone | Tissue::RedMarrow | Tissue::YellowMarrow)
}

/// Noiseless HU of a voxel.
fn hu_of(label: u8, lesion: Option<&Lesion>) -> f32 {
    let t = Tissue::from_u8(label);
    match lesion.map(|l| l.ct_effect) {
        None => t.hu(),
        Some(CtEffect::SoftTissue { hu }) | Some(CtEffect::Lytic { hu }) => hu,
        Some(CtEffect::Sclerotic { hu }) => {
            if is_bone(t) {
                hu
            } else {
                40.0
            }
        }
    }
}

/// CT stored values (int16, HU - RESCALE_INTERCEPT) on `grid`.
pub fn synthesize(seed: u64, grid: &Grid, labels: &[u8], lesion_ids: &[u8], lesions: &[Lesion]) -> Vec<i16> {
    let n = grid.slice_len();
    let (nx, ny) = (grid.nx(), grid.ny());
    let pixel_area_mm2 = grid.spacing_mm[0] * grid.spacing_mm[1];
    let mut out = vec![0i16; grid.len()];
    out.par_chunks_mut(n).zip(labels.par_chunks(n)).zip(lesion_ids.par_chunks(n)).enumerate().for_each(
        |(k, ((out, lab), ids))| {
            let mut hu: Vec<f32> =
                lab.iter().zip(ids).map(|(&l, &id)| hu_of(l, (id != 0).then(|| &lesions[id as usize - 1]))).collect();
            // Separable [1 2 1]/4 in-plane smoothing.
            let mut tmp = hu.clone();
            for j in 0..ny {
                let r = &hu[j * nx..(j + 1) * nx];
                let t = &mut tmp[j * nx..(j + 1) * nx];
                for i in 1..nx.saturating_sub(1) {
                    t[i] = 0.25 * r[i - 1] + 0.5 * r[i] + 0.25 * r[i + 1];
                }
            }
            for j in 1..ny.saturating_sub(1) {
                for i in 0..nx {
                    hu[j * nx + i] =
                        0.25 * tmp[(j - 1) * nx + i] + 0.5 * tmp[j * nx + i] + 0.25 * tmp[(j + 1) * nx + i];
                }
            }
            // Bigger cross-sections attenuate more: noisier slices (shoulders, pelvis).
            let body_mm2 = lab
                .iter()
                .filter(|&&l| !matches!(Tissue::from_u8(l), Tissue::Air | Tissue::Table | Tissue::TableFoam))
                .count() as f64
                * pixel_area_mm2;
            let sd = (9.0 + 14.0 * body_mm2 / 60_000.0) as f32;
            let mut noise = vec![0f32; n];
            Stream::indexed(seed, "ct-noise", k).fill_approx_normal(&mut noise);
            correlate(&mut noise, nx, ny);
            for ((o, &h), &e) in out.iter_mut().zip(&hu).zip(&noise) {
                let v = (h + sd * e).clamp(-1024.0, 3071.0);
                *o = (v.round() as f64 - RESCALE_INTERCEPT) as i16;
            }
        },
    );
    out
}

/// Filtered back-projection gives CT noise a grain of a few pixels: smooth white noise with
/// [1 2 1]/4 in x and y, then rescale to unit variance (the filter keeps 0.375^2 of it).
fn correlate(noise: &mut [f32], nx: usize, ny: usize) {
    let mut tmp = noise.to_vec();
    for j in 0..ny {
        let r = &noise[j * nx..(j + 1) * nx];
        let t = &mut tmp[j * nx..(j + 1) * nx];
        for i in 1..nx.saturating_sub(1) {
            t[i] = 0.25 * r[i - 1] + 0.5 * r[i] + 0.25 * r[i + 1];
        }
    }
    let gain = 1.0 / 0.375f32;
    for j in 1..ny.saturating_sub(1) {
        for i in 0..nx {
            noise[j * nx + i] =
                gain * (0.25 * tmp[(j - 1) * nx + i] + 0.5 * tmp[j * nx + i] + 0.25 * tmp[(j + 1) * nx + i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_are_hu_plus_1024() {
        let g = Grid { dims: [16, 16, 2], spacing_mm: [1.0, 1.0, 1.0], origin_mm: [0.0; 3] };
        let labels = vec![Tissue::Liver as u8; g.len()];
        let ids = vec![0u8; g.len()];
        let ct = synthesize(1, &g, &labels, &ids, &[]);
        let mean = ct.iter().map(|&v| v as f64 + RESCALE_INTERCEPT).sum::<f64>() / ct.len() as f64;
        assert!((mean - Tissue::Liver.hu() as f64).abs() < 4.0, "mean {mean}");
        assert_eq!(ct, synthesize(1, &g, &labels, &ids, &[]));
    }

    #[test]
    fn correlated_noise_keeps_unit_variance() {
        let (nx, ny) = (256, 256);
        let mut v = vec![0f32; nx * ny];
        Stream::new(3, "t").fill_standard_normal(&mut v);
        correlate(&mut v, nx, ny);
        let inner: Vec<f64> =
            (1..ny - 1).flat_map(|j| (1..nx - 1).map(move |i| (i, j))).map(|(i, j)| v[j * nx + i] as f64).collect();
        let var = inner.iter().map(|x| x * x).sum::<f64>() / inner.len() as f64;
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
