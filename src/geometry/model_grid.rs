//! The grid a model works on (docs/models.md): the CT's box and direction at the model's
//! spacing. Channels go onto it through a Gaussian pre-filter that brings them to the model's
//! resolution (so a 1 mm CT is not aliased onto 4 mm voxels) and trilinear sampling; the
//! model's outputs come back onto the CT grid by trilinear sampling.

use rayon::prelude::*;

use super::{Rigid, blur_and_decimate_map, resample_linear, resample_linear_map};
use crate::volume::{Geometry, Volume};

/// FWHM to sigma of a Gaussian.
const FWHM_PER_SIGMA: f64 = 2.354_820_045_030_949;

/// The model grid over `ct`: `round(extent / spacing)` voxels per axis (at least one), the
/// first voxel's outer corner on the CT's first voxel's outer corner, the CT's direction.
pub fn model_grid(ct: &Geometry, spacing_mm: [f64; 3]) -> Geometry {
    let dims: [usize; 3] =
        std::array::from_fn(|a| ((ct.dims[a] as f64 * ct.spacing_mm[a] / spacing_mm[a]).round() as usize).max(1));
    // Index of the new first centre in CT voxels: the corners coincide at -0.5.
    let first = std::array::from_fn(|a| -0.5 + 0.5 * spacing_mm[a] / ct.spacing_mm[a]);
    Geometry {
        dims,
        spacing_mm,
        origin_mm: ct.index_to_patient(first),
        direction: ct.direction,
        frame_of_reference_uid: ct.frame_of_reference_uid.clone(),
    }
}

/// `volume` on `grid`: along each axis where the grid is coarser, a Gaussian of FWHM
/// `sqrt(grid² − volume²)` spacing (and decimation to at most the grid's spacing, to save the
/// work), then trilinear sampling; `outside` beyond the volume's box.
pub fn to_grid(volume: &Volume<f32>, grid: &Geometry, outside: f32) -> Volume<f32> {
    to_grid_map(volume, |v| v, grid, outside)
}

/// [`to_grid`] of `value(volume)`, without a float copy of the whole volume.
fn to_grid_map<T: Copy + Sync>(
    volume: &Volume<T>,
    value: impl Fn(T) -> f32 + Sync + Copy,
    grid: &Geometry,
    outside: f32,
) -> Volume<f32> {
    let g = volume.geometry();
    let sigma_mm: [f64; 3] = std::array::from_fn(|a| {
        let (fine, coarse) = (g.spacing_mm[a], grid.spacing_mm[a]);
        if coarse > fine { (coarse * coarse - fine * fine).sqrt() / FWHM_PER_SIGMA } else { 0.0 }
    });
    let factor = std::array::from_fn(|a| (grid.spacing_mm[a] / g.spacing_mm[a]).floor().max(1.0) as usize);
    // Decimation keeps every factor-th voxel from the first, so its box may end short of the
    // volume's: one repeated voxel on each side, then the volume's own box decides what is
    // outside.
    let filtered = pad_edges(&blur_and_decimate_map(volume, value, sigma_mm, factor));
    let mut out = resample_linear(&filtered, grid, &Rigid::IDENTITY, outside);
    let [nx, ny, _] = grid.dims;
    let limit = g.dims.map(|n| n as f64 - 0.5);
    out.data_mut().par_chunks_mut(nx * ny).enumerate().for_each(|(k, slice)| {
        for (j, row) in slice.chunks_exact_mut(nx).enumerate() {
            for (i, v) in row.iter_mut().enumerate() {
                let p = g.patient_to_index(grid.index_to_patient([i as f64, j as f64, k as f64]));
                if (0..3).any(|a| p[a] < -0.5 - 1e-9 || p[a] > limit[a] + 1e-9) {
                    *v = outside;
                }
            }
        }
    });
    out
}

/// `v` with its first and last voxel repeated once along every axis.
fn pad_edges(v: &Volume<f32>) -> Volume<f32> {
    let g = v.geometry();
    let [nx, ny, nz] = g.dims;
    let (px, py, pz) = (nx + 2, ny + 2, nz + 2);
    let src = v.data();
    let clamp = |i: usize, n: usize| i.saturating_sub(1).min(n - 1);
    let mut data = vec![0f32; px * py * pz];
    data.par_chunks_mut(px * py).enumerate().for_each(|(k, slice)| {
        let sk = clamp(k, nz);
        for (j, row) in slice.chunks_exact_mut(px).enumerate() {
            let line = &src[(sk * ny + clamp(j, ny)) * nx..][..nx];
            row[1..=nx].copy_from_slice(line);
            row[0] = line[0];
            row[px - 1] = line[nx - 1];
        }
    });
    let geometry = Geometry { dims: [px, py, pz], origin_mm: g.index_to_patient([-1.0; 3]), ..g.clone() };
    // dims grew by two along each axis, as the data did.
    Volume::new(geometry, data).expect("padded data matches its geometry")
}

/// A 0/1 mask on `grid`: the filtered fraction of foreground, at least one half.
pub fn mask_to_grid(mask: &Volume<u8>, grid: &Geometry) -> Volume<u8> {
    let on_grid = to_grid_map(mask, |v| f32::from(u8::from(v != 0)), grid, 0.0);
    let data = on_grid.data().par_iter().map(|&f| u8::from(f >= 0.5)).collect();
    Volume::new(grid.clone(), data).expect("same geometry as the grid")
}

/// A model-grid map (probabilities) back on the CT grid, 0 outside the model grid.
pub fn from_grid(map: &Volume<f32>, ct: &Geometry) -> Volume<f32> {
    resample_linear(map, ct, &Rigid::IDENTITY, 0.0)
}

/// [`from_grid`] as a mask: 1 where the map reaches `threshold`, with no float volume on the CT
/// grid in between.
pub fn mask_from_grid(map: &Volume<f32>, ct: &Geometry, threshold: f32) -> Volume<u8> {
    resample_linear_map(map, ct, &Rigid::IDENTITY, 0.0, |v| u8::from(v >= threshold))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ct_geometry() -> Geometry {
        let (c, s) = (0.6f64.cos(), 0.6f64.sin());
        Geometry {
            dims: [60, 50, 30],
            spacing_mm: [0.977, 0.977, 3.0],
            origin_mm: [-30.0, 12.0, -400.0],
            direction: [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    #[test]
    fn the_grid_covers_the_ct_box_corner_to_corner() {
        let ct = ct_geometry();
        let g = model_grid(&ct, [4.0, 4.0, 4.0]);
        assert_eq!(g.dims, [15, 12, 23]); // 58.6 / 4, 48.9 / 4, 90 / 4 rounded
        assert_eq!(g.direction, ct.direction);
        // The outer corners of the first voxels coincide.
        let corner = |geo: &Geometry| geo.index_to_patient([-0.5, -0.5, -0.5]);
        let (a, b) = (corner(&ct), corner(&g));
        for axis in 0..3 {
            assert!((a[axis] - b[axis]).abs() < 1e-9, "{a:?} {b:?}");
        }
    }

    #[test]
    fn a_mask_from_the_grid_is_the_thresholded_map() {
        let ct = ct_geometry();
        let g = model_grid(&ct, [4.0, 4.0, 4.0]);
        let n = g.voxel_count().unwrap();
        let map = Volume::new(g, (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect()).unwrap();
        let mask = mask_from_grid(&map, &ct, 0.5);
        let want: Vec<u8> = from_grid(&map, &ct).data().iter().map(|&v| u8::from(v >= 0.5)).collect();
        assert_eq!(mask.geometry(), &ct);
        assert_eq!(mask.data(), &want[..]);
        assert!(want.contains(&0) && want.contains(&1));
    }

    #[test]
    fn constants_stay_constant_and_outside_is_air() {
        let ct = ct_geometry();
        let n = ct.voxel_count().unwrap();
        let v = Volume::new(ct.clone(), vec![7.5f32; n]).unwrap();
        let g = model_grid(&ct, [4.0, 4.0, 4.0]);
        let out = to_grid(&v, &g, -1000.0);
        // Every model voxel centre lies inside the CT box (round() may drop a partial voxel).
        assert!(out.data().iter().all(|&x| (x - 7.5).abs() < 1e-4), "{:?}", &out.data()[..8]);
        let mut bigger = g.clone();
        bigger.dims[2] += 3;
        let out = to_grid(&v, &bigger, -1000.0);
        assert!(out.slice(bigger.dims[2] - 1).iter().all(|&x| x == -1000.0));
    }

    #[test]
    fn a_ramp_is_kept_and_a_fine_checkerboard_is_not_aliased() {
        let ct = ct_geometry();
        let [nx, ny, nz] = ct.dims;
        let mut ramp = Vec::with_capacity(nx * ny * nz);
        let mut checker = Vec::with_capacity(nx * ny * nz);
        for _ in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    ramp.push(i as f32 * 0.977);
                    checker.push(if (i + j) % 2 == 0 { 1.0 } else { -1.0 });
                }
            }
        }
        let g = model_grid(&ct, [4.0, 4.0, 4.0]);
        // A linear function of position survives any symmetric filter and linear sampling,
        // except within the filter's reach of the edges (repeated edge voxels).
        let out = to_grid(&Volume::new(ct.clone(), ramp).unwrap(), &g, 0.0);
        for i in 2..g.dims[0] - 2 {
            let p = g.index_to_patient([i as f64, 5.0, 10.0]);
            let want = ct.patient_to_index(p)[0] * 0.977;
            let got = out.data()[(10 * g.dims[1] + 5) * g.dims[0] + i] as f64;
            assert!((got - want).abs() < 1e-3, "i {i}: {got} vs {want}");
        }
        // Plain trilinear sampling would keep about ±1 on a 1-voxel checkerboard.
        let out = to_grid(&Volume::new(ct.clone(), checker).unwrap(), &g, 0.0);
        let inner: Vec<f32> = (2..g.dims[1] - 2)
            .flat_map(|j| (2..g.dims[0] - 2).map(move |i| (j, i)))
            .map(|(j, i)| out.data()[(10 * g.dims[1] + j) * g.dims[0] + i])
            .collect();
        assert!(inner.iter().all(|v| v.abs() < 0.05), "{inner:?}");
    }

    #[test]
    fn masks_keep_their_volume_and_maps_come_back() {
        let ct = ct_geometry();
        let [nx, ny, nz] = ct.dims;
        let mut m = vec![0u8; nx * ny * nz];
        for k in 8..20 {
            for j in 10..40 {
                for i in 10..50 {
                    m[(k * ny + j) * nx + i] = 1;
                }
            }
        }
        let ml = |v: &Volume<u8>| {
            v.data().iter().filter(|&&x| x != 0).count() as f64 * v.geometry().spacing_mm.iter().product::<f64>() / 1e3
        };
        let mask = Volume::new(ct.clone(), m).unwrap();
        let g = model_grid(&ct, [4.0, 4.0, 4.0]);
        let small = mask_to_grid(&mask, &g);
        assert!((ml(&small) / ml(&mask) - 1.0).abs() < 0.15, "{} vs {}", ml(&small), ml(&mask));
        let p: Vec<f32> = small.data().iter().map(|&v| f32::from(v)).collect();
        let back = from_grid(&Volume::new(g, p).unwrap(), &ct);
        let again: Vec<u8> = back.data().iter().map(|&v| u8::from(v >= 0.5)).collect();
        let again = Volume::new(ct, again).unwrap();
        assert!((ml(&again) / ml(&mask) - 1.0).abs() < 0.2, "{} vs {}", ml(&again), ml(&mask));
    }
}
