//! A segmentation model's probability on the model grid drawn as a mask on the CT grid. The
//! default cuts the linearly interpolated probability at the threshold. `expected_volume`
//! draws each part of the map with the volume its probabilities add up to: a net trained on a
//! label's fraction (soft targets) predicts that fraction, and a fraction smoothed to the model
//! grid and cut at 0.5 draws a small round lesion small (training/README.md, item 45).
//! `ct_refined` lets each part's CT say where its edge runs: the 4 mm map cannot place it, the
//! CT at its own resolution often can (training/README.md, item 53).

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
/// `ct_refined`: the least spread (HU) granted to a part's CT values, the CT's own noise.
const MIN_SD_HU: f64 = 10.0;
/// `ct_refined`: the least spread as a share of the contrast between lesion and surroundings,
/// so that voxels half in the lesion (partial volume) fall near the decision's middle.
const SD_PER_CONTRAST: f64 = 0.15;
/// `ct_refined`: the most a CT value may move a voxel's log-odds either way: it may add a voxel
/// the model gives at least 0.12 and drop one it gives at most 0.88, so that the CT moves the
/// edge within the model's band of doubt and does not spread a small part over a whole organ
/// of like density (on validation phantoms 8 let false positives grow, item 53).
const MAX_CT_LOG_ODDS: f64 = 2.0;

/// `p` (a probability on a model grid) as a mask on the grid of `ct_hu` (the CT, HU), as
/// `draw` says.
pub fn draw(draw: Draw, p: &Volume<f32>, ct_hu: &Volume<f32>, threshold: f32) -> Mask {
    let ct = ct_hu.geometry();
    match draw {
        Draw::Threshold => mask_from_grid(p, ct, threshold),
        Draw::ExpectedVolume => by_parts(p, ct, threshold, Part::most_probable),
        Draw::CtRefined => by_parts(p, ct, threshold, |part| part.refined(ct_hu)),
    }
}

/// One part of the map on the CT grid.
struct Part {
    /// The CT sub-grid that holds the part, the CT index of its first voxel and the CT's size.
    sub: Geometry,
    first: [usize; 3],
    ct_dims: [usize; 3],
    /// Its CT voxels: (interpolated probability, index in `sub`).
    voxels: Vec<(f32, usize)>,
    /// How many CT voxels its probabilities add up to in volume (at most `voxels.len()`).
    count: usize,
}

impl Part {
    /// The `count` most probable voxels (`expected_volume`).
    fn most_probable(mut self) -> Vec<usize> {
        if self.count < self.voxels.len() {
            self.voxels.select_nth_unstable_by(self.count - 1, |a, b| b.0.total_cmp(&a.0));
            self.voxels.truncate(self.count);
        }
        self.voxels.into_iter().map(|(_, i)| i).collect()
    }

    /// `ct_refined`: each voxel's odds, the model's probability times the likelihood ratio of
    /// its CT value under two normal laws with one spread, fitted to the part itself: the lesion
    /// from the most probable half of `count` (its core), the surroundings from the voxels ranked
    /// beyond 1.5 times `count`. Voxels at even odds or better are drawn where they connect
    /// (18) to the core. Where the CT tells lesion from surroundings (a node in fat, a lung or
    /// bone lesion) the edge follows the CT; where it does not, the ratio stays near 1 and the
    /// model's 0.5 level decides. Too few voxels to fit, or no core voxel drawn:
    /// `expected_volume`.
    fn refined(mut self, ct_hu: &Volume<f32>) -> Vec<usize> {
        self.voxels.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let hu: Vec<f64> = self.voxels.iter().map(|&(_, i)| f64::from(ct_hu.data()[self.ct_index(i)])).collect();
        let core = (self.count / 2).max(1);
        let beyond = (self.count * 3 / 2 + 1).min(hu.len());
        if core < 4 || hu.len() - beyond < 4 {
            return self.most_probable();
        }
        let (lesion, lesion_sd) = median_and_sd(&hu[..core]);
        let (around, around_sd) = median_and_sd(&hu[beyond..]);
        let sd = ((lesion_sd * lesion_sd + around_sd * around_sd) / 2.0)
            .sqrt()
            .max(MIN_SD_HU)
            .max(SD_PER_CONTRAST * (lesion - around).abs());
        let mut chosen = vec![0u8; self.sub.voxel_count().unwrap_or(0)];
        for (&(v, i), &h) in self.voxels.iter().zip(&hu) {
            let v = f64::from(v).clamp(1e-4, 1.0 - 1e-4);
            let ct_odds = ((h - around).powi(2) - (h - lesion).powi(2)) / (2.0 * sd * sd);
            chosen[i] = u8::from((v / (1.0 - v)).ln() + ct_odds.clamp(-MAX_CT_LOG_ODDS, MAX_CT_LOG_ODDS) >= 0.0);
        }
        let mut in_core = vec![0u8; chosen.len()];
        for &(_, i) in &self.voxels[..core] {
            in_core[i] = 1;
        }
        let pieces = Components::new(&chosen, self.sub.dims, Connectivity::Edges18);
        let touches_core = pieces.overlap_counts(&in_core);
        if touches_core.iter().all(|&n| n == 0) {
            // The CT would erase what the model found: what is found stays found.
            return self.most_probable();
        }
        let mut keep = vec![0u8; chosen.len()];
        pieces.paint(&mut keep, |c| (touches_core[c] > 0).then_some(1));
        keep.iter().enumerate().filter(|&(_, &k)| k != 0).map(|(i, _)| i).collect()
    }

    /// The CT index of voxel `i` of `sub`.
    fn ct_index(&self, i: usize) -> usize {
        ct_index(self.sub.dims, self.first, self.ct_dims, i)
    }
}

/// The CT index of voxel `i` of a sub-grid of size `dims` whose first voxel is CT voxel `first`.
fn ct_index(dims: [usize; 3], first: [usize; 3], ct_dims: [usize; 3], i: usize) -> usize {
    let [x, y, z] = coords(dims, i);
    ((first[2] + z) * ct_dims[1] + first[1] + y) * ct_dims[0] + first[0] + x
}

/// The median of `values` and their spread as a normal law's standard deviation estimated
/// from the median absolute deviation (robust to a few voxels of another tissue).
fn median_and_sd(values: &[f64]) -> (f64, f64) {
    let median = |v: &mut Vec<f64>| {
        v.sort_unstable_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) }
    };
    let m = median(&mut values.to_vec());
    (m, 1.4826 * median(&mut values.iter().map(|v| (v - m).abs()).collect()))
}

/// `p` split into parts (its voxels of at least [`SUPPORT`] and the box of [`REACH_VOXELS`]
/// around them, 18-connected); each part whose highest probability reaches `threshold` is
/// drawn on `ct` with the voxels `choose` picks among the CT voxels whose nearest model voxel
/// is in the part, given as many as its probabilities add up to in volume. Parts that do not
/// reach `threshold` are not drawn, so what is found is what the threshold finds.
fn by_parts(p: &Volume<f32>, ct: &Geometry, threshold: f32, choose: impl Fn(Part) -> Vec<usize>) -> Mask {
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
        let voxels: Vec<(f32, usize)> = value
            .data()
            .iter()
            .zip(owner.data())
            .enumerate()
            .filter(|&(_, (&v, &o))| o == k as u32 + 1 && v > 0.0)
            .map(|(i, (&v, _))| (v, i))
            .collect();
        if voxels.is_empty() {
            continue;
        }
        let sub_dims = sub.dims;
        for i in choose(Part { count: count.min(voxels.len()), sub, first, ct_dims: ct.dims, voxels }) {
            mask[ct_index(sub_dims, first, ct.dims, i)] = 1;
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

    /// A CT of one value everywhere.
    fn flat(ct: &Geometry, hu: f32) -> Volume<f32> {
        Volume::new(ct.clone(), vec![hu; ct.voxel_count().unwrap()]).unwrap()
    }

    /// A CT of fat with `balls` (0/1 on the CT grid) at soft tissue's HU.
    fn fat_with(ct: &Geometry, balls: &[&[u8]]) -> Volume<f32> {
        let hu = (0..ct.voxel_count().unwrap()).map(|i| if balls.iter().any(|b| b[i] != 0) { 40.0 } else { -100.0 });
        Volume::new(ct.clone(), hu.collect()).unwrap()
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
        let expected = draw(Draw::ExpectedVolume, &p, &flat(&ct, 40.0), 0.5);
        let cut = draw(Draw::Threshold, &p, &flat(&ct, 40.0), 0.5);
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
        let drawn = draw(Draw::ExpectedVolume, &p, &flat(&ct, 40.0), 0.5);
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
        let drawn = draw(Draw::ExpectedVolume, &p, &flat(&ct, 40.0), 0.5);
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
        assert_eq!(count(&draw(Draw::ExpectedVolume, &p, &flat(&ct, 40.0), 0.5)), 0);
    }

    #[test]
    fn ct_refined_follows_the_cts_edge_where_the_map_draws_the_lesion_small() {
        let (ct, grid) = grids(48);
        let (truth, _) = ball(&ct, &grid, [23.5, 20.0, 25.0], 7.0);
        // The model saw a smaller ball than the CT shows.
        let (_, p) = ball(&ct, &grid, [23.5, 20.0, 25.0], 6.0);
        let hu = fat_with(&ct, &[&truth]);
        let (refined, expected) = (draw(Draw::CtRefined, &p, &hu, 0.5), draw(Draw::ExpectedVolume, &p, &hu, 0.5));
        let (dr, de) = (dice(refined.data(), &truth), dice(expected.data(), &truth));
        assert!(dr > 0.95 && de < 0.8, "ct_refined {dr:.3}, expected volume {de:.3}");
    }

    #[test]
    fn ct_refined_draws_the_models_half_level_where_the_ct_shows_nothing() {
        let (ct, grid) = grids(48);
        let (_, p) = ball(&ct, &grid, [23.5, 20.0, 25.0], 6.0);
        let refined = draw(Draw::CtRefined, &p, &flat(&ct, 40.0), 0.5);
        assert!(count(&refined) > 0);
        assert_eq!(refined.data(), mask_from_grid(&p, &ct, 0.5).data());
    }

    #[test]
    fn ct_refined_leaves_out_lesion_like_ct_that_does_not_touch_the_core() {
        let (ct, grid) = grids(48);
        let (a, pa) = ball(&ct, &grid, [20.0, 20.0, 24.0], 5.0);
        // A second soft-tissue ball inside the part's reach, the map low there (0.15: the CT's
        // odds alone would draw it) but under the part's support.
        let (b, _) = ball(&ct, &grid, [31.0, 20.0, 24.0], 3.0);
        let map = pa.data().iter().enumerate().map(|(i, &v)| {
            let m = coords(grid.dims, i);
            if (6..=9).contains(&m[0]) && (4..=6).contains(&m[1]) && (5..=7).contains(&m[2]) { v.max(0.15) } else { v }
        });
        let p = Volume::new(grid.clone(), map.collect()).unwrap();
        let refined = draw(Draw::CtRefined, &p, &fat_with(&ct, &[&a, &b]), 0.5);
        let inside = |t: &[u8]| refined.data().iter().zip(t).filter(|&(&d, &v)| d != 0 && v != 0).count();
        assert_eq!(inside(&b), 0);
        assert!(dice(refined.data(), &a) > 0.95, "{:.3}", dice(refined.data(), &a));
    }

    #[test]
    fn ct_refined_adds_no_voxel_the_model_gives_under_an_eighth_however_lesion_like_its_ct() {
        let (ct, grid) = grids(48);
        let (_, p) = ball(&ct, &grid, [23.5, 20.0, 25.0], 5.0);
        // A thin slab of soft tissue runs through the ball in fat: the CT alone would draw the
        // slab as far as the part reaches.
        let slab: Vec<u8> =
            (0..ct.voxel_count().unwrap()).map(|i| u8::from((23..28).contains(&coords(ct.dims, i)[2]))).collect();
        let refined = draw(Draw::CtRefined, &p, &fat_with(&ct, &[&slab]), 0.5);
        let on_ct = from_grid(&p, &ct);
        let lowest =
            refined.data().iter().zip(on_ct.data()).filter(|(d, _)| **d != 0).map(|(_, v)| *v).fold(1.0, f32::min);
        assert!(count(&refined) > 0 && lowest >= 0.119, "lowest drawn probability {lowest}");
    }
}
