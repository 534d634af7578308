//! Lesions: spheres and lobulated blobs placed at anatomical sites (lung, liver, lymph node
//! stations, soft tissue, bone) and next to physiological hot spots (bladder, kidney, heart),
//! with an FDG uptake profile and a CT appearance (soft tissue, lytic or sclerotic bone).

use serde::Serialize;

use super::anatomy::{Ellipsoid, Model, Tissue, trunk_frame};
use super::grid::Grid;
use super::pet::Uptake;
use super::rng::Stream;

/// Lesion ids are stored in u8 masks; ids above this are reserved for reader-only findings.
pub const MAX_LESIONS: usize = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Site {
    Lung,
    Liver,
    LymphNode,
    SoftTissue,
    Bone,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CtEffect {
    /// Soft-tissue density replacing whatever was there.
    SoftTissue { hu: f32 },
    /// Bone destroyed: the whole lesion becomes soft tissue.
    Lytic { hu: f32 },
    /// Bone thickened: bone voxels in the lesion become dense; others soft tissue.
    Sclerotic { hu: f32 },
}

#[derive(Debug, Clone, Serialize)]
pub struct Lesion {
    /// 1-based id, the label in the masks.
    pub id: u8,
    pub site: Site,
    /// Organ, node station or bone.
    pub location: String,
    /// Physiological hot spot this lesion sits next to, if placed as a confounder.
    pub confounder: Option<&'static str>,
    pub shape: &'static str,
    /// Centre of the main sphere (patient coordinates, mm).
    pub design_centre_mm: [f64; 3],
    pub radius_mm: f64,
    /// Extra spheres making a lobulated blob: (centre mm, radius mm).
    #[serde(skip)]
    pub lobes: Vec<([f64; 3], f64)>,
    /// SUV at the lesion centre (before the radial fall-off and necrosis).
    pub peak_suv: f64,
    pub necrotic_core: bool,
    pub ct_effect: CtEffect,
    /// Uptake of the tissue the lesion sits in.
    pub background_suv: f64,
    /// Designed to be barely visible (contrast under 1.8).
    pub borderline: bool,
}

impl Lesion {
    /// Radius of a sphere around the design centre that contains the whole lesion.
    pub fn bound_mm(&self) -> f64 {
        self.lobes.iter().map(|(c, r)| dist(*c, self.design_centre_mm) + r).fold(self.radius_mm, f64::max)
    }

    /// True SUV at `p` (mm) if `p` is inside the lesion.
    pub fn suv_at(&self, p: [f64; 3]) -> Option<f64> {
        let d_main = dist(p, self.design_centre_mm) / self.radius_mm;
        let d = self.lobes.iter().map(|(c, r)| dist(p, *c) / r).fold(d_main, f64::min);
        if d > 1.0 {
            return None;
        }
        // Gentle fall-off to the rim; a cold necrotic core in some large lesions.
        if self.necrotic_core && d_main < 0.45 {
            Some(self.peak_suv * 0.35)
        } else {
            Some(self.peak_suv * (1.0 - 0.3 * d * d))
        }
    }
}

/// A drawn lesion site: site, location name, confounder, centre (reference space), diameter
/// range (mm) and the tissue expected at the centre.
type Candidate = (Site, String, Option<&'static str>, [f64; 3], (f64, f64), Tissue);

pub fn dist(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn label_at(grid: &Grid, labels: &[u8], p: [f64; 3]) -> Tissue {
    grid.nearest(p).map(|i| Tissue::from_u8(labels[i])).unwrap_or(Tissue::Air)
}

fn inside_ellipsoid_sample(s: &mut Stream, e: &Ellipsoid, shrink: f64) -> [f64; 3] {
    loop {
        let u = [0; 3].map(|_| s.uniform(-1.0, 1.0));
        if u.iter().map(|v| v * v).sum::<f64>() <= 1.0 {
            return [0, 1, 2].map(|a| e.c[a] + u[a] * e.r[a] * shrink);
        }
    }
}

/// Place up to `count` lesions. Each is checked against the anatomy (label at its centre and
/// around it), the field of view and the other lesions; a lesion too small to hit at least a
/// few CT voxels is redrawn.
pub fn place(seed: u64, count: usize, model: &Model, uptake: &Uptake, grid: &Grid, labels: &[u8]) -> Vec<Lesion> {
    let mut s = Stream::new(seed, "lesions");
    let mut out: Vec<Lesion> = Vec::new();
    let lm = &model.landmarks;
    let min_d = (1.2 * grid.spacing_mm[2]).clamp(5.0, 30.0);
    let z_lo = grid.z_mm(0);
    let z_hi = grid.z_mm(grid.nz() - 1);
    // At least one borderline and one confounder lesion when there are enough lesions.
    let n_borderline = if count >= 2 { (count / 4).max(1) } else { 0 };
    let n_confounder = if count >= 3 { (count / 4).max(1) } else { 0 };
    let bg = |t: Tissue| uptake.suv_of(t);
    for n in 0..count {
        let borderline = n < n_borderline;
        let confounder = n >= count - n_confounder;
        let mut placed = None;
        for attempt in 0..400 {
            let site_roll = s.uniform(0.0, 1.0);
            let (site, location, confound, centre_ref, d_range, tissue): Candidate = if confounder && attempt < 300 {
                match s.range_usize(0, 3) {
                    0 => {
                        let b = &lm.bladder;
                        let side = if s.bernoulli(0.5) { -1.0 } else { 1.0 };
                        let rr = s.uniform(5.0, 12.0);
                        (
                            Site::LymphNode,
                            "perivesical".into(),
                            Some("bladder"),
                            [
                                b.c[0] + side * (b.r[0] + rr + 3.0),
                                b.c[1] + s.uniform(-5.0, 10.0),
                                b.c[2] - s.uniform(0.0, 10.0),
                            ],
                            (10.0, 24.0),
                            Tissue::VisceralFat,
                        )
                    }
                    1 => {
                        let i = s.range_usize(0, lm.kidneys.len());
                        let k = &lm.kidneys[i];
                        let side = if k.c[0] < 0.0 { -1.0 } else { 1.0 };
                        (
                            Site::SoftTissue,
                            if side < 0.0 { "right_adrenal".into() } else { "left_adrenal".into() },
                            Some("kidney"),
                            [k.c[0] - side * 8.0, k.c[1] - 6.0, k.c[2] - k.r[2] - s.uniform(8.0, 14.0)],
                            (10.0, 26.0),
                            Tissue::VisceralFat,
                        )
                    }
                    _ => {
                        let h = &lm.heart_lv;
                        let dir = [s.uniform(0.6, 1.0), s.uniform(0.0, 0.6), s.uniform(-0.3, 0.3)];
                        let n = (dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]).sqrt();
                        let off = h.r[0] + s.uniform(10.0, 16.0);
                        (
                            Site::Lung,
                            "left_lower_lobe".into(),
                            Some("heart"),
                            [0, 1, 2].map(|a| h.c[a] + dir[a] / n * off),
                            (8.0, 22.0),
                            Tissue::Lung,
                        )
                    }
                }
            } else if site_roll < 0.22 {
                let i = s.range_usize(0, lm.lungs.len());
                let side = if i == 0 { "right_lung" } else { "left_lung" };
                (
                    Site::Lung,
                    side.into(),
                    None,
                    inside_ellipsoid_sample(&mut s, &lm.lungs[i], 0.8),
                    (5.0, 30.0),
                    Tissue::Lung,
                )
            } else if site_roll < 0.40 {
                (
                    Site::Liver,
                    "liver".into(),
                    None,
                    inside_ellipsoid_sample(&mut s, &lm.liver[0], 0.75),
                    (8.0, 40.0),
                    Tissue::Liver,
                )
            } else if site_roll < 0.70 {
                let (name, p) = lm.stations[s.range_usize(0, lm.stations.len())];
                let j = [0; 3].map(|_| s.normal_clipped(0.0, 4.0));
                (
                    Site::LymphNode,
                    name.into(),
                    None,
                    [p[0] + j[0], p[1] + j[1], p[2] + j[2]],
                    (8.0, 30.0),
                    Tissue::VisceralFat,
                )
            } else if site_roll < 0.80 {
                let h = s.uniform(300.0, 880.0);
                let Some([a, b, yc]) = trunk_frame(h) else {
                    continue;
                };
                let th = s.uniform(0.0, std::f64::consts::TAU);
                let off = s.uniform(-10.0, 5.0);
                (
                    Site::SoftTissue,
                    "chest_or_abdominal_wall".into(),
                    None,
                    [(a + off) * th.sin(), yc + (b + off) * th.cos(), h],
                    (8.0, 35.0),
                    Tissue::Muscle,
                )
            } else {
                let roll = s.uniform(0.0, 1.0);
                let (name, c, max_r): (String, [f64; 3], f64) = if roll < 0.6 && !lm.vertebrae.is_empty() {
                    let i = s.range_usize(7, lm.vertebrae.len());
                    let (c, rx, _) = lm.vertebrae[i];
                    let name = if i < 19 { format!("T{}", i - 6) } else { format!("L{}", i - 18) };
                    (name, c, rx)
                } else if roll < 0.85 && !lm.iliac_points.is_empty() {
                    let i = s.range_usize(0, lm.iliac_points.len());
                    (if i == 0 { "right_ilium".into() } else { "left_ilium".into() }, lm.iliac_points[i], 14.0)
                } else {
                    let i = s.range_usize(0, lm.femoral_heads.len().max(1));
                    let Some(&(c, r)) = lm.femoral_heads.get(i) else {
                        continue;
                    };
                    (if i == 0 { "right_femoral_head".into() } else { "left_femoral_head".into() }, c, r)
                };
                let j = [0; 3].map(|_| s.normal_clipped(0.0, 2.0));
                (
                    Site::Bone,
                    name,
                    None,
                    [c[0] + j[0], c[1] + j[1], c[2] + j[2]],
                    (8.0, (2.0 * max_r).min(30.0)),
                    Tissue::RedMarrow,
                )
            };
            let centre = model.to_patient(centre_ref);
            let d_hi = d_range.1.max(min_d + 1.0).min(40.0);
            let d_lo = d_range.0.max(min_d).min(d_hi);
            let diameter = s.log_uniform(d_lo, d_hi + 1e-9);
            let radius = diameter / 2.0;
            let blob = diameter >= 10.0 && s.bernoulli(0.45);
            let mut lobes = Vec::new();
            if blob {
                for _ in 0..s.range_usize(2, 4) {
                    let u = s.unit_vector();
                    let r = radius * s.uniform(0.45, 0.7);
                    let off = radius * s.uniform(0.45, 0.65);
                    lobes.push(([0, 1, 2].map(|a| centre[a] + u[a] * off), r));
                }
            }
            let background_suv = bg(tissue);
            let peak_suv = if borderline {
                // Barely visible: contrast 1.3-1.7 over the local background (lung: over 1).
                background_suv.max(1.0) * s.uniform(1.3, 1.7)
            } else {
                s.log_uniform((2.2 * background_suv).clamp(2.5, 12.0), 20.0)
            };
            let ct_effect = match site {
                Site::Bone => {
                    if s.bernoulli(0.6) {
                        CtEffect::Lytic { hu: s.uniform(20.0, 45.0) as f32 }
                    } else {
                        CtEffect::Sclerotic { hu: s.uniform(550.0, 900.0) as f32 }
                    }
                }
                Site::Liver => CtEffect::SoftTissue { hu: s.uniform(25.0, 42.0) as f32 },
                _ => CtEffect::SoftTissue { hu: s.uniform(30.0, 48.0) as f32 },
            };
            let lesion = Lesion {
                id: (out.len() + 1) as u8,
                site,
                location,
                confounder: confound,
                shape: if blob { "blob" } else { "sphere" },
                design_centre_mm: centre,
                radius_mm: radius,
                lobes,
                peak_suv,
                necrotic_core: diameter > 25.0 && !borderline && s.bernoulli(0.4),
                ct_effect,
                background_suv,
                borderline,
            };
            if acceptable(&lesion, tissue, grid, labels, &out, z_lo, z_hi) {
                placed = Some(lesion);
                break;
            }
        }
        if let Some(l) = placed {
            out.push(l);
        }
    }
    out
}

fn acceptable(l: &Lesion, tissue: Tissue, grid: &Grid, labels: &[u8], others: &[Lesion], z_lo: f64, z_hi: f64) -> bool {
    let c = l.design_centre_mm;
    let b = l.bound_mm();
    if c[2] - b < z_lo || c[2] + b > z_hi {
        return false;
    }
    if others.iter().any(|o| dist(o.design_centre_mm, c) < o.bound_mm() + b + 3.0) {
        return false;
    }
    let at = label_at(grid, labels, c);
    let ok_centre = match l.site {
        Site::Lung => at == Tissue::Lung,
        Site::Liver => at == Tissue::Liver,
        Site::Bone => matches!(at, Tissue::RedMarrow | Tissue::CorticalBone | Tissue::YellowMarrow),
        Site::SoftTissue => matches!(at, Tissue::Muscle | Tissue::Fat | Tissue::VisceralFat),
        Site::LymphNode => matches!(at, Tissue::VisceralFat | Tissue::Fat | Tissue::Muscle | Tissue::Bowel),
    };
    if !ok_centre {
        return false;
    }
    // Most of the lesion should sit in the intended tissue (lung and liver lesions).
    if matches!(l.site, Site::Lung | Site::Liver) && l.confounder.is_none() {
        let r = l.radius_mm * 0.8;
        let hits = [[r, 0.0, 0.0], [-r, 0.0, 0.0], [0.0, r, 0.0], [0.0, -r, 0.0], [0.0, 0.0, r], [0.0, 0.0, -r]]
            .iter()
            .filter(|o| label_at(grid, labels, [c[0] + o[0], c[1] + o[1], c[2] + o[2]]) == tissue)
            .count();
        if hits < 5 {
            return false;
        }
    }
    // Confounders must not be inside the hot organ itself.
    if l.confounder.is_some()
        && matches!(
            at,
            Tissue::Bladder
                | Tissue::Kidney
                | Tissue::RenalPelvis
                | Tissue::Myocardium
                | Tissue::Blood
                | Tissue::CorticalBone
        )
    {
        return false;
    }
    voxels_of(l, grid).len() >= 4
}

/// Linear indices of the CT voxels inside a lesion.
pub fn voxels_of(l: &Lesion, grid: &Grid) -> Vec<usize> {
    let c = l.design_centre_mm;
    let b = l.bound_mm();
    let mut v = Vec::new();
    for k in grid.index_range(2, c[2] - b, c[2] + b) {
        let z = grid.z_mm(k);
        for j in grid.index_range(1, c[1] - b, c[1] + b) {
            let y = grid.y_mm(j);
            for i in grid.index_range(0, c[0] - b, c[0] + b) {
                if l.suv_at([grid.x_mm(i), y, z]).is_some() {
                    v.push(grid.index(i, j, k));
                }
            }
        }
    }
    v
}

/// Lesion id per CT voxel and the voxel list of each lesion (index = id - 1). Lesions are
/// placed without overlap, so no voxel is claimed twice; the first lesion wins if one were.
pub fn rasterize(lesions: &[Lesion], grid: &Grid) -> (Vec<u8>, Vec<Vec<usize>>) {
    let mut ids = vec![0u8; grid.len()];
    let mut lists = Vec::with_capacity(lesions.len());
    for l in lesions {
        let mut mine = Vec::new();
        for idx in voxels_of(l, grid) {
            if ids[idx] == 0 {
                ids[idx] = l.id;
                mine.push(idx);
            }
        }
        lists.push(mine);
    }
    (ids, lists)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lesion(necrotic: bool) -> Lesion {
        Lesion {
            id: 1,
            site: Site::Liver,
            location: "liver".into(),
            confounder: None,
            shape: "sphere",
            design_centre_mm: [0.0, 0.0, 0.0],
            radius_mm: 10.0,
            lobes: vec![([8.0, 0.0, 0.0], 6.0)],
            peak_suv: 10.0,
            necrotic_core: necrotic,
            ct_effect: CtEffect::SoftTissue { hu: 40.0 },
            background_suv: 2.0,
            borderline: false,
        }
    }

    #[test]
    fn suv_profile_and_bounds() {
        let l = lesion(false);
        assert_eq!(l.suv_at([0.0, 0.0, 0.0]), Some(10.0));
        assert!(
            (l.suv_at([10.0, 0.0, 0.0]).expect("inside lobe") - 10.0 * (1.0 - 0.3 * (2.0f64 / 6.0).powi(2))).abs()
                < 1e-12
        );
        assert_eq!(l.suv_at([0.0, 10.5, 0.0]), None);
        assert!((l.bound_mm() - 14.0).abs() < 1e-12);
        assert!(l.suv_at([13.9, 0.0, 0.0]).is_some());
        let n = lesion(true);
        assert_eq!(n.suv_at([0.0, 0.0, 1.0]), Some(3.5));
    }
}
