//! A segmentation model's probability on the model grid drawn as a mask on the CT grid. The
//! default cuts the linearly interpolated probability at the threshold. `expected_volume`
//! draws each part of the map with the volume its probabilities add up to: a net trained on a
//! label's fraction (soft targets) predicts that fraction, and a fraction smoothed to the model
//! grid and cut at 0.5 draws a small round lesion small (training/README.md, item 45).

use rayon::prelude::*;

use super::manifest::Draw;
use crate::geometry::model_grid::mask_from_grid;
use crate::geometry::{Rigid, resample_linear, resample_nearest};
use crate::quantify::{Components, Connectivity, Mask, coords};
use crate::segment::dilate_box;
use crate::volume::{Geometry, Volume};

/// Below this probability a model voxel only belongs to a part when it lies within
/// [`REACH_VOXELS`] of one at or above it.
const SUPPORT: f32 = 0.2;
/// How far (model voxels, a box) a part reaches beyond its voxels of at least [`SUPPORT`]: the
/// fringe of a soft prediction carries volume too.
const REACH_VOXELS: usize = 2;

/// `p` (a probability on a model grid) as a mask on the CT grid `ct`, as `draw` says.
pub fn draw(draw: Draw, p: &Volume<f32>, ct: &Geometry, threshold: f32) -> Mask {
    match draw {
        Draw::Threshold => mask_from_grid(p, ct, threshold),
        Draw::ExpectedVolume => expected_volume(p, ct, threshold),
    }
}

/// Each part of `p` (its voxels of at least [`SUPPORT`] and the box of [`REACH_VOXELS`] around
/// them, 18-connected) whose highest probability reaches `threshold` is drawn on `ct` with the
/// CT voxels of highest interpolated probability among those whose nearest model voxel is in the
/// part, as many as the sum of the part's probability makes in volume. Parts that do not reach
/// `threshold` are not drawn, so what is found is what the threshold finds.
fn expected_volume(p: &Volume<f32>, ct: &Geometry, threshold: f32) -> Mask {
    let grid = p.geometry();
    let dims = grid.dims;
    let support = SUPPORT.min(threshold);
    let mut inside: Vec<u8> = p.data().par_iter().map(|&v| u8::from(v >= support)).collect();
    dilate_box(&mut inside, dims, [REACH_VOXELS; 3]);
    let parts = Components::new(&inside, dims, Connectivity::Edges18);
    let mut part_of = vec![0u32; inside.len()];
    parts.paint(&mut part_of, |c| Some(c as u32 + 1));
    let part_of = Volume::new(grid.clone(), part_of).expect("one part id per model voxel");
    let voxel_ratio = grid.spacing_mm.iter().product::<f64>() / ct.spacing_mm.iter().product::<f64>();
    let mut mask = vec![0u8; ct.voxel_count().unwrap_or(0)];
    for (k, list) in parts.voxel_lists().iter().enumerate() {
        let (sum, peak) = list.iter().fold((0f64, 0f32), |(s, m), &i| (s + f64::from(p.data()[i]), m.max(p.data()[i])));
        let count = (sum * voxel_ratio).round() as usize;
        if peak < threshold || count == 0 {
            continue;
        }
        let Some((sub, first)) = ct_box(grid, list, ct) else { continue };
        let value = resample_linear(p, &sub, &Rigid::IDENTITY, 0.0);
        let owner = resample_nearest(&part_of, &sub, &Rigid::IDENTITY, 0);
        let mut candidates: Vec<(f32, usize)> = value
            .data()
            .iter()
            .zip(owner.data())
            .enumerate()
            .filter(|&(_, (&v, &o))| o == k as u32 + 1 && v > 0.0)
            .map(|(i, (&v, _))| (v, i))
            .collect();
        if count < candidates.len() {
            candidates.select_nth_unstable_by(count - 1, |a, b| b.0.total_cmp(&a.0));
            candidates.truncate(count);
        }
        for (_, i) in candidates {
            let [x, y, z] = coords(sub.dims, i);
            mask[((first[2] + z) * ct.dims[1] + first[1] + y) * ct.dims[0] + first[0] + x] = 1;
        }
    }
    Volume::new(ct.clone(), mask).expect("one mask value per CT voxel")
}

/// The sub-grid of `ct` that holds the model voxels `list` of `grid` and one voxel around
/// them, with the CT index of its first voxel; `None` when it misses `ct`.
fn ct_box(grid: &Geometry, list: &[usize], ct: &Geometry) -> Option<(Geometry, [usize; 3])> {
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for &i in list {
        let c = coords(grid.dims, i);
        lo = std::array::from_fn(|a| lo[a].min(c[a]));
        hi = std::array::from_fn(|a| hi[a].max(c[a]));
    }
    let (mut first, mut last) = ([f64::INFINITY; 3], [f64::NEG_INFINITY; 3]);
    for corner in 0..8 {
        let at: [f64; 3] =
            std::array::from_fn(|a| if corner >> a & 1 == 0 { lo[a] as f64 - 1.0 } else { hi[a] as f64 + 1.0 });
        let c = ct.patient_to_index(grid.index_to_patient(at));
        first = std::array::from_fn(|a| first[a].min(c[a]));
        last = std::array::from_fn(|a| last[a].max(c[a]));
    }
    let first: [f64; 3] = std::array::from_fn(|a| first[a].floor().max(0.0));
    let last: [f64; 3] = std::array::from_fn(|a| last[a].ceil().min(ct.dims[a] as f64 - 1.0));
    if (0..3).any(|a| last[a] < first[a]) {
        return None;
    }
    let sub = Geometry {
        dims: std::array::from_fn(|a| (last[a] - first[a]) as usize + 1),
        origin_mm: ct.index_to_patient(first),
        ..ct.clone()
    };
    Some((sub, first.map(|v| v as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::model_grid::{from_grid, model_grid};

    /// A 1 mm CT grid of `n`³ voxels and its 4 mm model grid (corners aligned).
    fn grids(n: usize) -> (Geometry, Geometry) {
        let ct = Geometry {
            dims: [n; 3],
            spacing_mm: [1.0; 3],
            origin_mm: [-20.0, 5.0, 100.0],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        };
        let grid = model_grid(&ct, [4.0; 3]);
        (ct, grid)
    }

    fn count(mask: &Mask) -> usize {
        mask.data().iter().filter(|&&v| v != 0).count()
    }

    /// A ball of `radius` CT voxels at `centre` (CT index) and its fraction on the model grid
    /// (the mean over the 4x4x4 CT voxels of each model voxel).
    fn ball(ct: &Geometry, grid: &Geometry, centre: [f64; 3], radius: f64) -> (Vec<u8>, Volume<f32>) {
        let truth: Vec<u8> = (0..ct.voxel_count().unwrap())
            .map(|i| {
                let c = coords(ct.dims, i);
                u8::from((0..3).map(|a| (c[a] as f64 - centre[a]).powi(2)).sum::<f64>() <= radius * radius)
            })
            .collect();
        let fraction = (0..grid.voxel_count().unwrap())
            .map(|i| {
                let m = coords(grid.dims, i);
                let mut n = 0;
                for dz in 0..4 {
                    for dy in 0..4 {
                        for dx in 0..4 {
                            let [x, y, z] = [m[0] * 4 + dx, m[1] * 4 + dy, m[2] * 4 + dz];
                            n += usize::from(truth[(z * ct.dims[1] + y) * ct.dims[0] + x]);
                        }
                    }
                }
                n as f32 / 64.0
            })
            .collect();
        (truth, Volume::new(grid.clone(), fraction).unwrap())
    }

    fn dice(a: &[u8], b: &[u8]) -> f64 {
        let both = a.iter().zip(b).filter(|&(&x, &y)| x != 0 && y != 0).count();
        2.0 * both as f64 / (a.iter().filter(|&&x| x != 0).count() + b.iter().filter(|&&y| y != 0).count()) as f64
    }

    #[test]
    fn a_balls_fraction_is_drawn_with_the_balls_volume_where_the_threshold_draws_it_small() {
        let (ct, grid) = grids(48);
        let (truth, p) = ball(&ct, &grid, [23.5, 20.0, 25.0], 6.0);
        let volume = truth.iter().filter(|&&v| v != 0).count();
        let expected = draw(Draw::ExpectedVolume, &p, &ct, 0.5);
        let cut = draw(Draw::Threshold, &p, &ct, 0.5);
        // The fraction sums to the ball's volume in model voxels: drawn exactly that large.
        assert_eq!(count(&expected), volume);
        assert!(count(&cut) < volume * 9 / 10, "{} of {volume}", count(&cut));
        let (de, dc) = (dice(expected.data(), &truth), dice(cut.data(), &truth));
        assert!(de > 0.9 && de > dc, "expected volume {de:.3}, threshold {dc:.3}");
        assert_eq!(cut.data(), mask_from_grid(&p, &ct, 0.5).data());
    }

    #[test]
    fn each_part_gets_its_own_volume_and_parts_below_the_threshold_none() {
        let (ct, grid) = grids(80);
        let (a, pa) = ball(&ct, &grid, [12.0, 12.0, 12.0], 5.0);
        let (b, pb) = ball(&ct, &grid, [60.0, 60.0, 60.0], 8.0);
        let (_, pc) = ball(&ct, &grid, [12.0, 64.0, 12.0], 6.0);
        // The third part is faint (at most 0.4) and as far from the others as a part reaches.
        let map: Vec<f32> = (0..pa.data().len()).map(|i| pa.data()[i] + pb.data()[i] + 0.4 * pc.data()[i]).collect();
        let p = Volume::new(grid, map).unwrap();
        let drawn = draw(Draw::ExpectedVolume, &p, &ct, 0.5);
        let inside = |t: &[u8]| drawn.data().iter().zip(t).filter(|&(&d, &v)| d != 0 && v != 0).count();
        let (va, vb) = (a.iter().filter(|&&v| v != 0).count(), b.iter().filter(|&&v| v != 0).count());
        assert_eq!(count(&drawn), va + vb);
        assert!(inside(&a) > va * 8 / 10 && inside(&b) > vb * 9 / 10, "{} of {va}, {} of {vb}", inside(&a), inside(&b));
    }

    #[test]
    fn a_rotated_anisotropic_ct_gets_the_parts_volume_where_the_map_is() {
        let (c, s) = (0.6f64.cos(), 0.6f64.sin());
        let ct = Geometry {
            dims: [80, 70, 30],
            spacing_mm: [0.977, 0.977, 3.0],
            origin_mm: [-30.0, 12.0, -400.0],
            direction: [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        };
        let grid = model_grid(&ct, [4.0; 3]);
        let centre = [9.0, 8.0, 11.0];
        let map: Vec<f32> = (0..grid.voxel_count().unwrap())
            .map(|i| {
                let m = coords(grid.dims, i);
                let r2: f64 = (0..3).map(|a| (m[a] as f64 - centre[a]).powi(2)).sum();
                // Cut off where every voxel left is within the part's reach of one >= 0.2.
                if r2 <= 12.0 { (0.9 * (-r2 / 3.0).exp()) as f32 } else { 0.0 }
            })
            .collect();
        let sum: f64 = map.iter().map(|&v| f64::from(v)).sum();
        let p = Volume::new(grid, map).unwrap();
        let drawn = draw(Draw::ExpectedVolume, &p, &ct, 0.5);
        let want = (sum * 64.0 / (0.977 * 0.977 * 3.0)).round() as usize;
        assert_eq!(count(&drawn), want);
        // Every drawn voxel lies where the interpolated map is higher than anywhere left out.
        let on_ct = from_grid(&p, &ct);
        let lowest_in =
            drawn.data().iter().zip(on_ct.data()).filter(|(d, _)| **d != 0).map(|(_, v)| *v).fold(1.0, f32::min);
        let highest_out =
            drawn.data().iter().zip(on_ct.data()).filter(|(d, _)| **d == 0).map(|(_, v)| *v).fold(0.0, f32::max);
        assert!(lowest_in >= highest_out, "{lowest_in} < {highest_out}");
    }

    #[test]
    fn an_empty_map_draws_nothing() {
        let (ct, grid) = grids(16);
        let n = grid.voxel_count().unwrap();
        let p = Volume::new(grid, vec![0.0; n]).unwrap();
        assert_eq!(count(&draw(Draw::ExpectedVolume, &p, &ct, 0.5)), 0);
    }
}
