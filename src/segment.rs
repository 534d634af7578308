//! segment: the classical lesion segmentation, always available and the baseline every model
//! is compared with.
//!
//! 1. Body mask from the CT: voxels above `body_hu_threshold`, the largest 3D component
//!    (6-connected), holes filled slice by slice (lungs, airways, bowel gas). Air and anything
//!    not touching the patient are out; a table touching the skin may stay in, which is
//!    harmless since it holds no activity.
//! 2. Candidates: voxels inside the body with SUV >= `suv_threshold` (2.5), split into
//!    components (`connectivity`, 18 by default as in the autoPET evaluation). They are not
//!    filtered by size: a small lesion blurred by the PET keeps few voxels above 2.5.
//! 3. Each candidate is refined around its own hot spots (see `refine`): the body voxels
//!    within `growth_mm` of it (along each axis) are flooded from the hottest down; a hot spot
//!    keeps a basin of its own when it stands `min_prominence` above every path to a hotter one,
//!    and each basin keeps its voxels >= `relative_threshold` (41 %) of its own maximum that are
//!    connected to it. A faint lesion's 41 % contour may thus reach below 2.5, but never more
//!    than `growth_mm` beyond its candidate, and a lesion beside the bladder or heart is not
//!    swallowed by the organ's contour.
//! 4. Regions that overlap or touch are separated by a one-voxel gap (the hotter keeps shared
//!    voxels) so that they stay separate lesions in the binary mask; the union is split into
//!    components again and those smaller than `min_volume_ml` are dropped.
//!
//! FDG is physiologically high in the brain, heart, kidneys, ureters and bladder (and
//! sometimes bowel, muscle or a liver above 2.5): this baseline segments those too. That is
//! expected of a threshold method and is left visible rather than hidden by anatomy rules;
//! the learned models are the ones meant to tell them apart. A lesion that is no local maximum
//! of SUV (on the slope of the bladder) cannot be told from the organ by thresholds at all.

use std::collections::{HashMap, VecDeque};

use rayon::prelude::*;
use serde::Deserialize;

use crate::quantify::{Components, Connectivity, Mask, coords, find};
use crate::volume::{Volume, VolumeError};

/// Settings of [`classical`] (`[segmentation]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegmentOptions {
    /// Fixed SUVbw a voxel needs to be a candidate.
    pub suv_threshold: f32,
    /// Fraction of each candidate's own SUVmax that its final region keeps (0.41: the 41 %
    /// isocontour of the EANM guideline).
    pub relative_threshold: f32,
    /// Neighbourhood of connected components: 6, 18 or 26.
    pub connectivity: Connectivity,
    /// Final regions smaller than this (mL) are dropped.
    pub min_volume_ml: f64,
    /// How far (mm, along each axis) a refined region may extend beyond its candidate.
    pub growth_mm: f64,
    /// A hot spot inside a candidate is a lesion of its own, with its own 41 % contour, when
    /// the lowest point on every path to a hotter spot lies at least this fraction of its
    /// SUVmax below it; otherwise it is part of the hotter one (noise, a bump on an organ).
    pub min_prominence: f32,
    /// CT voxels above this (HU) form the body mask.
    pub body_hu_threshold: f32,
    /// When the classical method runs beside the learned models.
    pub classical: ClassicalUse,
}

/// When the classical segmentation runs (`[segmentation] classical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassicalUse {
    /// Only when no segmentation model is configured.
    #[default]
    Auto,
    /// Always, as one more segment after the models' (the baseline beside them).
    Always,
    /// Never; then at least one segmentation model must be configured.
    Never,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            suv_threshold: 2.5,
            relative_threshold: 0.41,
            connectivity: Connectivity::Edges18,
            min_volume_ml: 0.1,
            growth_mm: 8.0,
            min_prominence: 0.2,
            body_hu_threshold: -500.0,
            classical: ClassicalUse::Auto,
        }
    }
}

impl SegmentOptions {
    /// Every setting in one line: the SEG's segment description and part of the output UIDs.
    pub fn describe(&self) -> String {
        format!(
            "SUV >= {} in body (CT > {} HU), {:.0} % of local SUVmax, growth {} mm, prominence {}, \
             {}-connected, >= {} mL",
            self.suv_threshold,
            self.body_hu_threshold,
            100.0 * self.relative_threshold,
            self.growth_mm,
            self.min_prominence,
            u8::from(self.connectivity),
            self.min_volume_ml
        )
    }

    /// Values types alone cannot check, as `(key, problem)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(self.suv_threshold.is_finite() && self.suv_threshold > 0.0) {
            p.push(("suv_threshold", format!("must be a positive SUV, got {}", self.suv_threshold)));
        }
        if !(self.relative_threshold > 0.0 && self.relative_threshold <= 1.0) {
            p.push(("relative_threshold", format!("must be in (0, 1], got {}", self.relative_threshold)));
        }
        if !(self.min_volume_ml.is_finite() && self.min_volume_ml >= 0.0) {
            p.push(("min_volume_ml", format!("must be 0 or more, got {}", self.min_volume_ml)));
        }
        if !(self.growth_mm.is_finite() && (0.0..=100.0).contains(&self.growth_mm)) {
            p.push(("growth_mm", format!("must be within 0..=100 mm, got {}", self.growth_mm)));
        }
        if !(0.0..1.0).contains(&self.min_prominence) {
            p.push(("min_prominence", format!("must be in [0, 1), got {}", self.min_prominence)));
        }
        if !self.body_hu_threshold.is_finite() {
            p.push(("body_hu_threshold", format!("must be a number of HU, got {}", self.body_hu_threshold)));
        }
        p
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("SUV grid {suv:?} differs from CT grid {ct:?}: resample the PET onto the CT first")]
    GridMismatch { suv: [usize; 3], ct: [usize; 3] },
    #[error("building the mask: {0}")]
    Volume(#[from] VolumeError),
}

impl SegmentError {
    /// Input errors: the same volumes fail the same way.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// The body: CT above `hu_threshold`, largest 6-connected component, holes filled per slice.
pub fn body_mask(ct_hu: &Volume<f32>, hu_threshold: f32) -> Result<Mask, SegmentError> {
    let geometry = ct_hu.geometry().clone();
    let dims = geometry.dims;
    let above: Vec<u8> = ct_hu.data().par_iter().map(|&v| u8::from(v > hu_threshold)).collect();
    let components = Components::new(&above, dims, Connectivity::Faces6);
    let sizes = components.sizes();
    let largest = sizes.iter().enumerate().max_by_key(|&(c, &n)| (n, std::cmp::Reverse(c))).map(|(c, _)| c);
    let mut body = vec![0u8; above.len()];
    if let Some(largest) = largest {
        components.paint(&mut body, |c| (c == largest).then_some(1));
    }
    let (nx, ny) = (dims[0], dims[1]);
    body.par_chunks_exact_mut(nx * ny).for_each(|slice| fill_holes(slice, nx, ny));
    Ok(Volume::new(geometry, body)?)
}

/// Sets every background pixel that the slice border cannot reach (4-connected) to 1.
fn fill_holes(slice: &mut [u8], nx: usize, ny: usize) {
    const OUTSIDE: u8 = 2;
    let mut stack: Vec<usize> = (0..nx).chain((ny - 1) * nx..ny * nx).collect();
    stack.extend((0..ny).flat_map(|j| [j * nx, j * nx + nx - 1]));
    while let Some(p) = stack.pop() {
        if slice[p] != 0 {
            continue;
        }
        slice[p] = OUTSIDE;
        let (i, j) = (p % nx, p / nx);
        if i > 0 {
            stack.push(p - 1);
        }
        if i + 1 < nx {
            stack.push(p + 1);
        }
        if j > 0 {
            stack.push(p - nx);
        }
        if j + 1 < ny {
            stack.push(p + nx);
        }
    }
    for v in slice.iter_mut() {
        *v = u8::from(*v != OUTSIDE);
    }
}

/// The classical segmentation of `suv_on_ct` (SUVbw on the CT grid) with the body taken from
/// `ct_hu`; see the module documentation for the steps.
pub fn classical(suv_on_ct: &Volume<f32>, ct_hu: &Volume<f32>, opts: &SegmentOptions) -> Result<Mask, SegmentError> {
    if suv_on_ct.geometry().dims != ct_hu.geometry().dims {
        return Err(SegmentError::GridMismatch { suv: suv_on_ct.geometry().dims, ct: ct_hu.geometry().dims });
    }
    classical_in_body(suv_on_ct, &body_mask(ct_hu, opts.body_hu_threshold)?, opts)
}

/// `classical` with the body mask already made (`body_mask` of the CT).
pub fn classical_in_body(suv_on_ct: &Volume<f32>, body: &Mask, opts: &SegmentOptions) -> Result<Mask, SegmentError> {
    let geometry = body.geometry();
    let dims = geometry.dims;
    if suv_on_ct.geometry().dims != dims {
        return Err(SegmentError::GridMismatch { suv: suv_on_ct.geometry().dims, ct: dims });
    }
    let suv = suv_on_ct.data();
    let candidates: Vec<u8> = suv
        .par_iter()
        .zip(body.data().par_iter())
        .map(|(&s, &b)| u8::from(b != 0 && s >= opts.suv_threshold))
        .collect();
    let voxel_ml = geometry.spacing_mm.iter().product::<f64>() / 1000.0;
    let min_voxels = ((opts.min_volume_ml / voxel_ml) - 1e-9).ceil().max(1.0) as usize;
    // Candidates are not filtered by size: a small lesion blurred by the PET keeps only a few
    // voxels above the fixed threshold, while its 41 % region is larger.
    let lists: Vec<Vec<usize>> = Components::new(&candidates, dims, opts.connectivity).voxel_lists();
    let margin = geometry.spacing_mm.map(|s| (opts.growth_mm / s).floor() as usize);
    let mut regions: Vec<Region> =
        lists.par_iter().flat_map_iter(|list| refine(list, suv, body.data(), dims, margin, opts)).collect();
    // Regions that overlap or touch would merge into one lesion in a binary mask: the hotter
    // region keeps a shared voxel, and each gives up the voxels touching another, leaving a gap.
    regions.sort_by(|a, b| b.peak.total_cmp(&a.peak).then(a.voxels.first().cmp(&b.voxels.first())));
    let mut owner: HashMap<usize, usize> = HashMap::new();
    for (r, region) in regions.iter().enumerate() {
        for &idx in &region.voxels {
            owner.entry(idx).or_insert(r);
        }
    }
    let offsets = opts.connectivity.offsets();
    let kept: Vec<Vec<usize>> = regions
        .par_iter()
        .enumerate()
        .map(|(r, region)| {
            region
                .voxels
                .iter()
                .copied()
                .filter(|&idx| {
                    owner.get(&idx) == Some(&r)
                        && neighbours(idx, dims, &offsets).all(|n| owner.get(&n).is_none_or(|&o| o == r))
                })
                .collect()
        })
        .collect();
    let mut grown = vec![0u8; suv.len()];
    for idx in kept.into_iter().flatten() {
        grown[idx] = 1;
    }
    let components = Components::new(&grown, dims, opts.connectivity);
    // The gaps between touching regions can split off a cooler fringe of a region: a lesion
    // must still reach the fixed threshold itself.
    let keep: Vec<bool> = components
        .voxel_lists()
        .par_iter()
        .map(|list| list.len() >= min_voxels && list.iter().any(|&idx| suv[idx] >= opts.suv_threshold))
        .collect();
    let mut mask = vec![0u8; suv.len()];
    components.paint(&mut mask, |c| keep[c].then_some(1));
    Ok(Volume::new(geometry.clone(), mask)?)
}

/// A box of voxels `lo..=hi` cut from the volume, with its own contiguous indexing.
struct SubBox {
    lo: [usize; 3],
    dims: [usize; 3],
    volume_dims: [usize; 3],
}

impl SubBox {
    /// The bounding box of `list` grown by `margin` voxels per axis, clipped to the volume.
    fn around(list: &[usize], volume_dims: [usize; 3], margin: [usize; 3]) -> Self {
        let mut lo = [usize::MAX; 3];
        let mut hi = [0usize; 3];
        for &idx in list {
            let c = coords(volume_dims, idx);
            for a in 0..3 {
                lo[a] = lo[a].min(c[a]);
                hi[a] = hi[a].max(c[a]);
            }
        }
        let lo: [usize; 3] = std::array::from_fn(|a| lo[a].saturating_sub(margin[a]));
        let dims = std::array::from_fn(|a| (hi[a] + margin[a]).min(volume_dims[a] - 1) - lo[a] + 1);
        SubBox { lo, dims, volume_dims }
    }

    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    fn local(&self, global: usize) -> usize {
        let c = coords(self.volume_dims, global);
        ((c[2] - self.lo[2]) * self.dims[1] + (c[1] - self.lo[1])) * self.dims[0] + (c[0] - self.lo[0])
    }

    fn global(&self, local: usize) -> usize {
        let c = coords(self.dims, local);
        let d = self.volume_dims;
        ((c[2] + self.lo[2]) * d[1] + (c[1] + self.lo[1])) * d[0] + (c[0] + self.lo[0])
    }
}

/// Linear indices of the neighbours of voxel `idx` inside the volume.
fn neighbours(idx: usize, dims: [usize; 3], offsets: &[[i64; 3]]) -> impl Iterator<Item = usize> + '_ {
    let c = coords(dims, idx);
    offsets.iter().filter_map(move |o| {
        let n: [i64; 3] = std::array::from_fn(|a| c[a] as i64 + o[a]);
        (0..3)
            .all(|a| n[a] >= 0 && n[a] < dims[a] as i64)
            .then(|| (n[2] as usize * dims[1] + n[1] as usize) * dims[0] + n[0] as usize)
    })
}

/// The 41 % region of one hot spot.
struct Region {
    peak: f32,
    /// Global voxel indices.
    voxels: Vec<usize>,
}

/// The final regions of one candidate (`list`, global indices).
///
/// The body voxels within `margin` of the candidate are flooded from the hottest down
/// (watershed by persistence): a voxel with no flooded neighbour at or above `suv_threshold`
/// starts a basin, others join their hottest neighbouring basin, and where basins meet the
/// cooler one is absorbed unless the meeting voxel lies `min_prominence` x its peak below it. A
/// lesion beside the bladder or heart thus keeps its own basin instead of being swallowed by
/// the hotter organ's 41 % contour. Each basin peaking in this candidate yields its voxels
/// >= `relative_threshold` x its peak that are connected to the peak.
fn refine(
    list: &[usize],
    suv: &[f32],
    body: &[u8],
    dims: [usize; 3],
    margin: [usize; 3],
    opts: &SegmentOptions,
) -> Vec<Region> {
    const NONE: u32 = u32::MAX;
    let sub = SubBox::around(list, dims, margin);
    let mut own = vec![false; sub.len()];
    let mut domain = vec![0u8; sub.len()];
    for &idx in list {
        own[sub.local(idx)] = true;
        domain[sub.local(idx)] = 1;
    }
    dilate_box(&mut domain, sub.dims, margin);
    let value: Vec<f32> = (0..sub.len()).map(|l| suv[sub.global(l)]).collect();
    let mut order: Vec<usize> = (0..sub.len()).filter(|&l| domain[l] != 0 && body[sub.global(l)] != 0).collect();
    order.sort_unstable_by(|&a, &b| value[b].total_cmp(&value[a]).then(a.cmp(&b)));

    let offsets = opts.connectivity.offsets();
    let mut basin = vec![NONE; sub.len()];
    let mut parent: Vec<usize> = Vec::new();
    let mut peak: Vec<f32> = Vec::new();
    let mut seed: Vec<usize> = Vec::new();
    let mut roots: Vec<usize> = Vec::with_capacity(offsets.len());
    for &l in &order {
        let v = value[l];
        roots.clear();
        for n in neighbours(l, sub.dims, &offsets) {
            if basin[n] != NONE {
                let r = find(&mut parent, basin[n] as usize);
                if !roots.contains(&r) {
                    roots.push(r);
                }
            }
        }
        roots.sort_unstable_by(|&a, &b| peak[b].total_cmp(&peak[a]).then(a.cmp(&b)));
        match roots.split_first() {
            None if v >= opts.suv_threshold => {
                basin[l] = parent.len() as u32;
                parent.push(parent.len());
                peak.push(v);
                seed.push(l);
            }
            None => {}
            Some((&top, rest)) => {
                for &r in rest {
                    if peak[r] - v < opts.min_prominence * peak[r] {
                        parent[r] = top;
                    }
                }
                basin[l] = top as u32;
            }
        }
    }
    let root: Vec<u32> =
        basin.iter().map(|&b| if b == NONE { NONE } else { find(&mut parent, b as usize) as u32 }).collect();

    let mut region_of = vec![NONE; sub.len()];
    for b in 0..parent.len() {
        if parent[b] != b {
            continue;
        }
        // Breadth-first from the peak over this basin's voxels above its cut.
        let cut = opts.relative_threshold * peak[b];
        let mut queue = VecDeque::from([seed[b]]);
        region_of[seed[b]] = b as u32;
        while let Some(l) = queue.pop_front() {
            for n in neighbours(l, sub.dims, &offsets) {
                if region_of[n] == NONE && root[n] == b as u32 && value[n] >= cut {
                    region_of[n] = b as u32;
                    queue.push_back(n);
                }
            }
        }
    }
    let mut regions: Vec<Region> = Vec::new();
    let mut index_of = vec![usize::MAX; parent.len()];
    for (l, &b) in region_of.iter().enumerate() {
        if b != NONE && own[seed[b as usize]] {
            if index_of[b as usize] == usize::MAX {
                index_of[b as usize] = regions.len();
                regions.push(Region { peak: peak[b as usize], voxels: Vec::new() });
            }
            regions[index_of[b as usize]].voxels.push(sub.global(l));
        }
    }
    regions
}

/// Binary dilation by a box of half-widths `r` (voxels), one separable pass per axis.
pub(crate) fn dilate_box(data: &mut [u8], dims: [usize; 3], r: [usize; 3]) {
    let strides = [1, dims[0], dims[0] * dims[1]];
    for axis in 0..3 {
        if r[axis] == 0 {
            continue;
        }
        let (n, stride) = (dims[axis], strides[axis]);
        let src = data.to_vec();
        // Lines along `axis` start at every voxel whose coordinate on `axis` is 0.
        let starts = (0..data.len() / (n * stride)).flat_map(|outer| (0..stride).map(move |i| outer * n * stride + i));
        for start in starts {
            // Position of the last foreground voxel seen, forwards then backwards.
            let mut last: Option<usize> = None;
            for t in 0..n {
                if src[start + t * stride] != 0 {
                    last = Some(t);
                }
                if last.is_some_and(|l| t - l <= r[axis]) {
                    data[start + t * stride] = 1;
                }
            }
            last = None;
            for t in (0..n).rev() {
                if src[start + t * stride] != 0 {
                    last = Some(t);
                }
                if last.is_some_and(|l| l - t <= r[axis]) {
                    data[start + t * stride] = 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantify::tests::volume;
    use crate::quantify::{MaskSource, quantify};

    const DIMS: [usize; 3] = [48, 40, 12];
    const SPACING: [f64; 3] = [2.0, 2.0, 3.0];

    /// A CT slab: an elliptic body (soft tissue) with a lung inside, air around it, and a table
    /// (250 HU shell) below the body, not touching it.
    fn ct() -> Volume<f32> {
        volume(DIMS, SPACING, |[i, j, _]| {
            let (x, y) = (i as f64 - 24.0, j as f64 - 16.0);
            if (x / 20.0).powi(2) + (y / 12.0).powi(2) <= 1.0 {
                if (x - 8.0).powi(2) + y * y <= 16.0 { -850.0 } else { 40.0 }
            } else if (32..=34).contains(&j) && (4..44).contains(&i) {
                250.0
            } else {
                -1000.0
            }
        })
    }

    fn sphere(centre: [f64; 3], r_vox: f64, peak: f32) -> impl Fn([usize; 3]) -> Option<f32> {
        move |c: [usize; 3]| {
            let d2: f64 = (0..3).map(|a| ((c[a] as f64 - centre[a]) * SPACING[a] / SPACING[0]).powi(2)).sum();
            (d2 <= r_vox * r_vox).then(|| peak * (1.0 - 0.5 * (d2 / (r_vox * r_vox)) as f32))
        }
    }

    #[test]
    fn body_mask_keeps_the_patient_and_fills_the_lung() {
        let body = body_mask(&ct(), -500.0).unwrap();
        let at = |i: usize, j: usize| body.data()[(6 * DIMS[1] + j) * DIMS[0] + i];
        assert_eq!(at(24, 16), 1, "soft tissue");
        assert_eq!(at(32, 16), 1, "lung, a hole in the slice");
        assert_eq!(at(24, 33), 0, "table");
        assert_eq!(at(1, 1), 0, "air");
        let inside = body.data().iter().filter(|&&v| v == 1).count();
        let expected = (0..body.data().len())
            .filter(|&idx| {
                let [i, j, _] = coords(DIMS, idx);
                ((i as f64 - 24.0) / 20.0).powi(2) + ((j as f64 - 16.0) / 12.0).powi(2) <= 1.0
            })
            .count();
        assert_eq!(inside, expected);
    }

    #[test]
    fn a_lesion_is_its_41_percent_region_and_nothing_outside_the_body_is_found() {
        let lesion = sphere([16.0, 16.0, 6.0], 4.0, 10.0);
        // A hot spot in the air beside the patient (e.g. a contaminated pad on the table).
        let outside = sphere([24.0, 38.0, 6.0], 2.0, 20.0);
        let suv = volume(DIMS, SPACING, |c| lesion(c).or(outside(c)).unwrap_or(0.8));
        let opts = SegmentOptions { min_volume_ml: 0.0, ..SegmentOptions::default() };
        let mask = classical(&suv, &ct(), &opts).unwrap();
        let expected: Vec<usize> =
            (0..suv.data().len()).filter(|&idx| lesion(coords(DIMS, idx)).is_some_and(|v| v >= 4.1)).collect();
        let got: Vec<usize> = (0..mask.data().len()).filter(|&idx| mask.data()[idx] == 1).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_faint_lesion_grows_past_the_fixed_threshold_when_growth_allows() {
        // SUVmax 4: the 41 % contour (1.64) lies beyond the 2.5 threshold.
        let lesion = sphere([16.0, 16.0, 6.0], 6.0, 4.0);
        let suv = volume(DIMS, SPACING, |c| lesion(c).unwrap_or(0.8));
        let count =
            |opts: &SegmentOptions| classical(&suv, &ct(), opts).unwrap().data().iter().filter(|&&v| v == 1).count();
        let voxels_at_least = |t: f32| suv.data().iter().filter(|&&v| v >= t).count();
        let bounded = SegmentOptions { growth_mm: 0.0, ..SegmentOptions::default() };
        assert_eq!(count(&bounded), voxels_at_least(2.5));
        assert_eq!(count(&SegmentOptions::default()), voxels_at_least(0.41 * 4.0));
    }

    #[test]
    fn a_lesion_beside_a_hotter_organ_keeps_its_own_region() {
        // A "bladder" of SUV 30 and a lesion of SUV 8 whose edges overlap (the sum is taken).
        let organ = sphere([14.0, 16.0, 6.0], 6.0, 30.0);
        let lesion = sphere([25.0, 16.0, 6.0], 5.0, 8.0);
        let suv = volume(DIMS, SPACING, |c| 0.8 + organ(c).unwrap_or(0.0) + lesion(c).unwrap_or(0.0));
        let mask = classical(&suv, &ct(), &SegmentOptions::default()).unwrap();
        let source = MaskSource { segment: 1, method: "classical" };
        let (labels, f) = quantify(&mask, &suv, Connectivity::Edges18, source).unwrap();
        assert_eq!(f.lesion_count, 2, "{f:?}");
        assert!((f.lesions[1].suv_max - 8.8).abs() < 0.5, "{:?}", f.lesions[1]);
        let at = |c: [usize; 3]| labels.data()[(c[2] * DIMS[1] + c[1]) * DIMS[0] + c[0]];
        assert_eq!((at([14, 16, 6]), at([25, 16, 6])), (1, 2));
        // Without the prominence split the lesion disappears under the organ's 41 % contour.
        let merged = SegmentOptions { min_prominence: 0.99, ..SegmentOptions::default() };
        let mask = classical(&suv, &ct(), &merged).unwrap();
        assert_eq!(quantify(&mask, &suv, Connectivity::Edges18, source).unwrap().1.lesion_count, 1);
    }

    #[test]
    fn regions_below_the_minimum_volume_are_dropped() {
        // 1 voxel is 0.012 mL; the small spot keeps a handful, the large one hundreds.
        let small = sphere([12.0, 16.0, 6.0], 1.0, 6.0);
        let large = sphere([30.0, 16.0, 6.0], 5.0, 6.0);
        let suv = volume(DIMS, SPACING, |c| small(c).or(large(c)).unwrap_or(0.8));
        let count = |min_volume_ml: f64| {
            let opts = SegmentOptions { min_volume_ml, ..SegmentOptions::default() };
            let mask = classical(&suv, &ct(), &opts).unwrap();
            quantify(&mask, &suv, Connectivity::Edges18, MaskSource { segment: 1, method: "c" }).unwrap().1.lesion_count
        };
        assert_eq!(count(0.0), 2);
        assert_eq!(count(0.5), 1);
        assert_eq!(count(100.0), 0);
    }

    #[test]
    fn box_dilation_reaches_r_voxels_per_axis() {
        let dims = [7, 6, 5];
        let mut data = vec![0u8; 7 * 6 * 5];
        data[(2 * 6 + 3) * 7 + 3] = 1;
        dilate_box(&mut data, dims, [2, 1, 0]);
        let expected: Vec<u8> = (0..data.len())
            .map(|idx| {
                let [i, j, k] = coords(dims, idx);
                u8::from(k == 2 && (1..=5).contains(&i) && (2..=4).contains(&j))
            })
            .collect();
        assert_eq!(data, expected);
    }

    #[test]
    fn options_are_checked_and_grids_must_match() {
        assert!(SegmentOptions::default().problems().is_empty());
        let bad = SegmentOptions {
            suv_threshold: 0.0,
            relative_threshold: 1.2,
            min_volume_ml: -1.0,
            growth_mm: f64::NAN,
            min_prominence: 1.0,
            body_hu_threshold: f32::INFINITY,
            ..SegmentOptions::default()
        };
        let keys: Vec<&str> = bad.problems().iter().map(|p| p.0).collect();
        assert_eq!(
            keys,
            [
                "suv_threshold",
                "relative_threshold",
                "min_volume_ml",
                "growth_mm",
                "min_prominence",
                "body_hu_threshold"
            ]
        );
        let suv = volume([4, 4, 4], [1.0; 3], |_| 0f32);
        assert!(matches!(classical(&suv, &ct(), &SegmentOptions::default()), Err(SegmentError::GridMismatch { .. })));
    }
}
