//! Analytic anatomy: a patient (seeded body size, fat, organ sizes and positions) and a list of
//! solids (ellipsoids, tubes, rings, shells) painted in order into a tissue label volume.
//!
//! Solids live in a *reference space* `[x, y, h]` in mm: x to the patient's left, y posterior,
//! h downwards from the vertex, for a reference adult. A patient maps it to patient coordinates
//! by `x * lean_scale, y * lean_scale, z = -h * height_scale`; ellipsoids stay ellipsoids, so
//! rows are filled by analytic spans, not per-voxel tests, wherever possible.

use rayon::prelude::*;

use super::grid::Grid;
use super::rng::Stream;

/// Tissue classes of the label volume (`truth/tissues.nii.gz`).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tissue {
    Air = 0,
    Skin,
    Fat,
    Muscle,
    VisceralFat,
    Bowel,
    Lung,
    Blood,
    Myocardium,
    Liver,
    Spleen,
    Kidney,
    RenalPelvis,
    Bladder,
    BrainGray,
    BrainWhite,
    Csf,
    SpinalCord,
    CorticalBone,
    RedMarrow,
    YellowMarrow,
    Cartilage,
    Stomach,
    Gas,
    Gland,
    Airway,
    Table,
    TableFoam,
    Breast,
}

impl Tissue {
    pub const ALL: [Tissue; 29] = [
        Tissue::Air,
        Tissue::Skin,
        Tissue::Fat,
        Tissue::Muscle,
        Tissue::VisceralFat,
        Tissue::Bowel,
        Tissue::Lung,
        Tissue::Blood,
        Tissue::Myocardium,
        Tissue::Liver,
        Tissue::Spleen,
        Tissue::Kidney,
        Tissue::RenalPelvis,
        Tissue::Bladder,
        Tissue::BrainGray,
        Tissue::BrainWhite,
        Tissue::Csf,
        Tissue::SpinalCord,
        Tissue::CorticalBone,
        Tissue::RedMarrow,
        Tissue::YellowMarrow,
        Tissue::Cartilage,
        Tissue::Stomach,
        Tissue::Gas,
        Tissue::Gland,
        Tissue::Airway,
        Tissue::Table,
        Tissue::TableFoam,
        Tissue::Breast,
    ];

    pub fn from_u8(v: u8) -> Tissue {
        Tissue::ALL.get(v as usize).copied().unwrap_or(Tissue::Air)
    }

    pub fn name(self) -> &'static str {
        match self {
            Tissue::Air => "air",
            Tissue::Skin => "skin",
            Tissue::Fat => "subcutaneous_fat",
            Tissue::Muscle => "muscle",
            Tissue::VisceralFat => "visceral_fat",
            Tissue::Bowel => "bowel",
            Tissue::Lung => "lung",
            Tissue::Blood => "blood_pool",
            Tissue::Myocardium => "myocardium",
            Tissue::Liver => "liver",
            Tissue::Spleen => "spleen",
            Tissue::Kidney => "kidney",
            Tissue::RenalPelvis => "renal_pelvis",
            Tissue::Bladder => "bladder",
            Tissue::BrainGray => "brain_gray_matter",
            Tissue::BrainWhite => "brain_white_matter",
            Tissue::Csf => "csf",
            Tissue::SpinalCord => "spinal_cord",
            Tissue::CorticalBone => "cortical_bone",
            Tissue::RedMarrow => "red_marrow",
            Tissue::YellowMarrow => "yellow_marrow",
            Tissue::Cartilage => "cartilage",
            Tissue::Stomach => "stomach",
            Tissue::Gas => "bowel_gas",
            Tissue::Gland => "gland",
            Tissue::Airway => "airway",
            Tissue::Table => "table",
            Tissue::TableFoam => "table_foam",
            Tissue::Breast => "breast_glandular",
        }
    }

    /// Mean CT number in HU (non-contrast, 120 kVp).
    pub fn hu(self) -> f32 {
        match self {
            Tissue::Air | Tissue::Gas | Tissue::Airway => -1000.0,
            Tissue::Skin => 30.0,
            Tissue::Fat => -105.0,
            Tissue::Muscle => 50.0,
            Tissue::VisceralFat => -95.0,
            Tissue::Bowel => 25.0,
            Tissue::Lung => -860.0,
            Tissue::Blood => 42.0,
            Tissue::Myocardium => 45.0,
            Tissue::Liver => 60.0,
            Tissue::Spleen => 48.0,
            Tissue::Kidney => 32.0,
            Tissue::RenalPelvis => 8.0,
            Tissue::Bladder => 6.0,
            Tissue::BrainGray => 40.0,
            Tissue::BrainWhite => 28.0,
            Tissue::Csf => 8.0,
            Tissue::SpinalCord => 32.0,
            Tissue::CorticalBone => 1100.0,
            Tissue::RedMarrow => 230.0,
            Tissue::YellowMarrow => -40.0,
            Tissue::Cartilage => 110.0,
            Tissue::Stomach => 22.0,
            Tissue::Gland => 38.0,
            Tissue::Table => 250.0,
            Tissue::TableFoam => -880.0,
            Tissue::Breast => 30.0,
        }
    }

    const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Sex {
    #[serde(rename = "M")]
    Male,
    #[serde(rename = "F")]
    Female,
}

impl Sex {
    pub fn dicom(self) -> &'static str {
        match self {
            Sex::Male => "M",
            Sex::Female => "F",
        }
    }
}

/// Seeded patient parameters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Patient {
    pub seed: u64,
    pub sex: Sex,
    pub age_years: u32,
    /// Axial scale of the reference anatomy (1.0 = 1.75 m).
    pub height_scale: f64,
    /// Lateral/AP scale of the skeleton and muscles.
    pub lean_scale: f64,
    /// Subcutaneous fat thickness on the trunk in mm.
    pub fat_mm: f64,
    /// Fraction of the abdominal cavity that is fat rather than bowel.
    pub visceral_fat_fraction: f64,
    /// Bladder filling 0..1.
    pub bladder_fill: f64,
    pub height_m: f64,
    /// As written in Patient's Weight (0010,1030): rounded to 0.1 kg.
    pub weight_kg: f64,
}

impl Patient {
    pub fn from_seed(seed: u64) -> Patient {
        let mut s = Stream::new(seed, "patient");
        let sex = if s.bernoulli(0.5) { Sex::Male } else { Sex::Female };
        let (h_mean, lean_mean) = match sex {
            Sex::Male => (1.00, 1.02),
            Sex::Female => (0.95, 0.94),
        };
        let height_scale = s.normal_clipped(h_mean, 0.035).clamp(0.88, 1.08);
        let lean_scale = s.normal_clipped(lean_mean, 0.04).clamp(0.86, 1.12);
        let fat_mm = s.log_uniform(6.0, 42.0);
        let visceral_fat_fraction = (0.25 + fat_mm / 80.0).clamp(0.2, 0.8);
        let bladder_fill = s.uniform(0.1, 1.0);
        let age_years = s.range_usize(25, 86) as u32;
        let height_m = (1.75 * height_scale * 100.0).round() / 100.0;
        // Weight from the body's elliptic cross-sections: lean core plus fat shell.
        let a = 145.0 * lean_scale + fat_mm;
        let b = 100.0 * lean_scale + fat_mm * 1.1;
        let weight = 70.0 * height_scale * (a * b) / (160.0 * 116.5);
        let weight_kg = (weight * 10.0).round() / 10.0;
        Patient {
            seed,
            sex,
            age_years,
            height_scale,
            lean_scale,
            fat_mm,
            visceral_fat_fraction,
            bladder_fill,
            height_m,
            weight_kg,
        }
    }

    /// Reference-space point `[x, y, h]` to patient coordinates (LPS mm).
    pub fn to_patient(&self, r: [f64; 3]) -> [f64; 3] {
        [r[0] * self.lean_scale, r[1] * self.lean_scale, -r[2] * self.height_scale]
    }
}

/// A row fill hint: the row's interval in reference x, nothing, or test each voxel.
enum Span {
    Interval(f64, f64),
    /// Test each voxel, but only inside these two intervals of reference x.
    Pair([f64; 4]),
    Empty,
    Test,
}

/// A solid in reference space.
trait Solid: Send + Sync {
    /// [h_min, h_max] covered.
    fn h_range(&self) -> (f64, f64);
    /// [x_min, x_max, y_min, y_max] at depth h, None if empty.
    fn bbox(&self, h: f64) -> Option<[f64; 4]>;
    fn span(&self, _y: f64, _h: f64) -> Span {
        Span::Test
    }
    fn contains(&self, p: [f64; 3]) -> bool;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Ellipsoid {
    pub c: [f64; 3],
    pub r: [f64; 3],
}

impl Ellipsoid {
    pub fn new(c: [f64; 3], r: [f64; 3]) -> Self {
        Ellipsoid { c, r }
    }
    pub fn grow(&self, d: f64) -> Self {
        Ellipsoid { c: self.c, r: self.r.map(|v| (v + d).max(0.5)) }
    }
    fn slice(&self, h: f64) -> Option<(f64, f64, f64, f64)> {
        let t = 1.0 - ((h - self.c[2]) / self.r[2]).powi(2);
        (t > 0.0).then(|| {
            let s = t.sqrt();
            (self.c[0], self.c[1], self.r[0] * s, self.r[1] * s)
        })
    }
}

impl Solid for Ellipsoid {
    fn h_range(&self) -> (f64, f64) {
        (self.c[2] - self.r[2], self.c[2] + self.r[2])
    }
    fn bbox(&self, h: f64) -> Option<[f64; 4]> {
        let (cx, cy, a, b) = self.slice(h)?;
        Some([cx - a, cx + a, cy - b, cy + b])
    }
    fn span(&self, y: f64, h: f64) -> Span {
        ellipse_span(self.slice(h), y)
    }
    fn contains(&self, p: [f64; 3]) -> bool {
        (0..3).map(|a| ((p[a] - self.c[a]) / self.r[a]).powi(2)).sum::<f64>() <= 1.0
    }
}

fn ellipse_span(e: Option<(f64, f64, f64, f64)>, y: f64) -> Span {
    match e {
        None => Span::Empty,
        Some((cx, cy, a, b)) => {
            let t = 1.0 - ((y - cy) / b).powi(2);
            if t <= 0.0 {
                Span::Empty
            } else {
                let w = a * t.sqrt();
                Span::Interval(cx - w, cx + w)
            }
        }
    }
}

/// Ellipsoid with arbitrary orientation (heart).
struct RotEllipsoid {
    c: [f64; 3],
    /// Rows are the unit axes divided by the semi-axis lengths.
    m: [[f64; 3]; 3],
    bound: f64,
}

impl RotEllipsoid {
    fn new(c: [f64; 3], r: [f64; 3], rot: [[f64; 3]; 3]) -> Self {
        let m = [0, 1, 2].map(|i| rot[i].map(|v| v / r[i]));
        RotEllipsoid { c, m, bound: r.iter().cloned().fold(0.0, f64::max) }
    }
}

impl Solid for RotEllipsoid {
    fn h_range(&self) -> (f64, f64) {
        (self.c[2] - self.bound, self.c[2] + self.bound)
    }
    fn bbox(&self, _h: f64) -> Option<[f64; 4]> {
        let b = self.bound;
        Some([self.c[0] - b, self.c[0] + b, self.c[1] - b, self.c[1] + b])
    }
    fn contains(&self, p: [f64; 3]) -> bool {
        let d = [p[0] - self.c[0], p[1] - self.c[1], p[2] - self.c[2]];
        self.m.iter().map(|row| (row[0] * d[0] + row[1] * d[1] + row[2] * d[2]).powi(2)).sum::<f64>() <= 1.0
    }
}

/// Rotation matrix (rows = body axes) from angles about h (yaw) then x (pitch), in degrees.
fn rotation(yaw_deg: f64, pitch_deg: f64) -> [[f64; 3]; 3] {
    let (sy, cy) = yaw_deg.to_radians().sin_cos();
    let (sp, cp) = pitch_deg.to_radians().sin_cos();
    // R = Rx(pitch) * Rz(yaw); rows of R^T are the rotated axes.
    let rz = [[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]];
    let rx = [[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]];
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] = (0..3).map(|k| rx[i][k] * rz[k][j]).sum();
        }
    }
    // Transpose: rows are the body axes in reference space.
    [0, 1, 2].map(|i| [r[0][i], r[1][i], r[2][i]])
}

/// A tube with rounded ends between two points.
#[derive(Debug, Clone, Copy)]
struct Capsule {
    a: [f64; 3],
    b: [f64; 3],
    r: f64,
}

impl Solid for Capsule {
    fn h_range(&self) -> (f64, f64) {
        (self.a[2].min(self.b[2]) - self.r, self.a[2].max(self.b[2]) + self.r)
    }
    fn bbox(&self, h: f64) -> Option<[f64; 4]> {
        // Only the part of the axis within r of this depth can reach the slice.
        let dh = self.b[2] - self.a[2];
        let (t0, t1) = if dh.abs() < 1e-9 {
            (0.0, 1.0)
        } else {
            let u = (h - self.r - self.a[2]) / dh;
            let v = (h + self.r - self.a[2]) / dh;
            (u.min(v).clamp(0.0, 1.0), u.max(v).clamp(0.0, 1.0))
        };
        let p = |t: f64| [0, 1].map(|i| self.a[i] + t * (self.b[i] - self.a[i]));
        let (p0, p1) = (p(t0), p(t1));
        Some([
            p0[0].min(p1[0]) - self.r,
            p0[0].max(p1[0]) + self.r,
            p0[1].min(p1[1]) - self.r,
            p0[1].max(p1[1]) + self.r,
        ])
    }
    fn contains(&self, p: [f64; 3]) -> bool {
        let ab = [0, 1, 2].map(|i| self.b[i] - self.a[i]);
        let ap = [0, 1, 2].map(|i| p[i] - self.a[i]);
        let len2: f64 = ab.iter().map(|v| v * v).sum();
        let t = if len2 > 0.0 { ((0..3).map(|i| ab[i] * ap[i]).sum::<f64>() / len2).clamp(0.0, 1.0) } else { 0.0 };
        (0..3).map(|i| (ap[i] - t * ab[i]).powi(2)).sum::<f64>() <= self.r * self.r
    }
}

/// A solid given by a cross-section function: at depth h, an ellipse `(cx, cy, a, b)`.
struct Section<F: Fn(f64) -> Option<(f64, f64, f64, f64)> + Send + Sync> {
    h0: f64,
    h1: f64,
    f: F,
}

impl<F: Fn(f64) -> Option<(f64, f64, f64, f64)> + Send + Sync> Solid for Section<F> {
    fn h_range(&self) -> (f64, f64) {
        (self.h0, self.h1)
    }
    fn bbox(&self, h: f64) -> Option<[f64; 4]> {
        let (cx, cy, a, b) = (self.f)(h)?;
        (a > 0.0 && b > 0.0).then_some([cx - a, cx + a, cy - b, cy + b])
    }
    fn span(&self, y: f64, h: f64) -> Span {
        ellipse_span((self.f)(h).filter(|e| e.2 > 0.0 && e.3 > 0.0), y)
    }
    fn contains(&self, p: [f64; 3]) -> bool {
        match (self.f)(p[2]) {
            Some((cx, cy, a, b)) if a > 0.0 && b > 0.0 => ((p[0] - cx) / a).powi(2) + ((p[1] - cy) / b).powi(2) <= 1.0,
            _ => false,
        }
    }
}

/// A solid given by an arbitrary predicate inside a fixed box.
struct Custom<F: Fn([f64; 3]) -> bool + Send + Sync> {
    bbox: [f64; 4],
    h0: f64,
    h1: f64,
    f: F,
}

impl<F: Fn([f64; 3]) -> bool + Send + Sync> Solid for Custom<F> {
    fn h_range(&self) -> (f64, f64) {
        (self.h0, self.h1)
    }
    fn bbox(&self, _h: f64) -> Option<[f64; 4]> {
        Some(self.bbox)
    }
    fn contains(&self, p: [f64; 3]) -> bool {
        (self.f)(p)
    }
}

/// Per rib: level h at the spine, anterior drop, and two angles (meaning depends on use).
type RibParams = (f64, f64, f64, f64);

/// All ribs of one part (bone, marrow or cartilage): rings following the inside of the chest
/// wall, each at its own level and sloping down anteriorly. One solid for all ribs so the
/// ring geometry is computed once per voxel, and only near the ring.
struct RibCage {
    /// (level h at the spine, anterior drop, theta range) per rib; theta 0 = posterior.
    ribs: Vec<RibParams>,
    /// Depth range inside the ring (mm) and half height of the rib (mm).
    radial: (f64, f64),
    half_h: f64,
}

impl RibCage {
    fn ring(h: f64) -> Option<(f64, f64, f64)> {
        trunk_frame(h).map(|[a, bb, yc]| (a - 10.0, bb - 12.0, yc))
    }
}

impl Solid for RibCage {
    fn h_range(&self) -> (f64, f64) {
        let lo = self.ribs.iter().map(|r| r.0).fold(f64::MAX, f64::min);
        let hi = self.ribs.iter().map(|r| r.0 + r.1).fold(f64::MIN, f64::max);
        (lo - self.half_h, hi + self.half_h)
    }
    fn bbox(&self, h: f64) -> Option<[f64; 4]> {
        let (ar, br, yc) = Self::ring(h)?;
        Some([-ar * 1.03, ar * 1.03, yc - br * 1.03, yc + br * 1.03])
    }
    fn span(&self, y: f64, h: f64) -> Span {
        let Some((ar, br, yc)) = Self::ring(h) else {
            return Span::Empty;
        };
        let half_width = |a: f64, b: f64| {
            let t = 1.0 - ((y - yc) / b).powi(2);
            (t > 0.0).then(|| a * t.sqrt())
        };
        let Some(outer) = half_width(ar * 1.03, br * 1.03) else {
            return Span::Empty;
        };
        let inner_d = self.radial.1 + 1.5;
        match half_width(ar - inner_d, br - inner_d) {
            Some(inner) => Span::Pair([-outer, -inner, inner, outer]),
            // Rows beyond the inner ellipse: one interval (the second one is empty).
            None => Span::Pair([-outer, outer, 0.0, -1.0]),
        }
    }
    fn contains(&self, q: [f64; 3]) -> bool {
        let Some((ar, br, yc)) = Self::ring(q[2]) else {
            return false;
        };
        let dx = q[0];
        let dy = q[1] - yc;
        let rho = ((dx / ar).powi(2) + (dy / br).powi(2)).sqrt();
        if !(0.75..=1.02).contains(&rho) {
            return false;
        }
        let r = (dx * dx + dy * dy).sqrt();
        let depth = (1.0 - rho) * r / rho; // mm inside the ring
        if depth < self.radial.0 || depth > self.radial.1 {
            return false;
        }
        let theta = dx.abs().atan2(dy);
        let fall = (1.0 - theta.cos()) / 2.0;
        self.ribs
            .iter()
            .any(|&(hk, drop, lo, hi)| theta >= lo && theta <= hi && (q[2] - (hk + drop * fall)).abs() <= self.half_h)
    }
}

/// An axis-aligned box (the CT table).
struct Rect {
    x: (f64, f64),
    y: (f64, f64),
    h: (f64, f64),
}

impl Solid for Rect {
    fn h_range(&self) -> (f64, f64) {
        self.h
    }
    fn bbox(&self, _h: f64) -> Option<[f64; 4]> {
        Some([self.x.0, self.x.1, self.y.0, self.y.1])
    }
    fn span(&self, y: f64, _h: f64) -> Span {
        if y >= self.y.0 && y <= self.y.1 { Span::Interval(self.x.0, self.x.1) } else { Span::Empty }
    }
    fn contains(&self, q: [f64; 3]) -> bool {
        (self.x.0..=self.x.1).contains(&q[0]) && (self.y.0..=self.y.1).contains(&q[1])
    }
}

struct Prim {
    solid: Box<dyn Solid>,
    label: Tissue,
    /// Bit set of labels this solid may overwrite (`u32::MAX` = anything).
    only: u32,
}

/// Piecewise-linear interpolation in a table of (h, values...).
fn interp<const N: usize>(table: &[(f64, [f64; N])], h: f64) -> [f64; N] {
    let first = table[0];
    if h <= first.0 {
        return first.1;
    }
    for w in table.windows(2) {
        let (h0, v0) = w[0];
        let (h1, v1) = w[1];
        if h <= h1 {
            let t = (h - h0) / (h1 - h0);
            let mut out = [0.0; N];
            for (i, o) in out.iter_mut().enumerate() {
                *o = v0[i] + t * (v1[i] - v0[i]);
            }
            return out;
        }
    }
    table[table.len() - 1].1
}

/// Muscle boundary of the trunk: (h, [half-width a, half-depth b, centre y]).
const TRUNK: [(f64, [f64; 3]); 10] = [
    (245.0, [58.0, 52.0, 12.0]),
    (275.0, [128.0, 78.0, 16.0]),
    (300.0, [158.0, 88.0, 16.0]),
    (340.0, [150.0, 98.0, 12.0]),
    (450.0, [145.0, 105.0, 8.0]),
    (560.0, [140.0, 102.0, 6.0]),
    (650.0, [133.0, 97.0, 6.0]),
    (760.0, [148.0, 98.0, 10.0]),
    (860.0, [158.0, 98.0, 14.0]),
    (910.0, [150.0, 95.0, 14.0]),
];
const TRUNK_H: (f64, f64) = (245.0, 910.0);
/// Spine axis: (h, [y of the vertebral body centre]).
const SPINE_Y: [(f64, [f64; 1]); 9] = [
    (180.0, [18.0]),
    (280.0, [30.0]),
    (350.0, [58.0]),
    (450.0, [66.0]),
    (560.0, [58.0]),
    (650.0, [42.0]),
    (740.0, [46.0]),
    (800.0, [64.0]),
    (870.0, [80.0]),
];

pub fn trunk_frame(h: f64) -> Option<[f64; 3]> {
    (TRUNK_H.0..=TRUNK_H.1).contains(&h).then(|| interp(&TRUNK, h))
}

pub fn spine_y(h: f64) -> f64 {
    interp(&SPINE_Y, h)[0]
}

/// Anatomical landmarks in reference space, for placing lesions.
#[derive(Debug, Clone, Default)]
pub struct Landmarks {
    pub lungs: Vec<Ellipsoid>,
    pub liver: Vec<Ellipsoid>,
    pub heart_lv: Ellipsoid,
    pub kidneys: Vec<Ellipsoid>,
    pub bladder: Ellipsoid,
    pub spleen: Ellipsoid,
    /// Vertebral body centres and (rx, half-height).
    pub vertebrae: Vec<([f64; 3], f64, f64)>,
    /// Femoral head centres and radius.
    pub femoral_heads: Vec<([f64; 3], f64)>,
    /// Iliac wing points (inside the bone).
    pub iliac_points: Vec<[f64; 3]>,
    /// Lymph node stations: (name, point).
    pub stations: Vec<(&'static str, [f64; 3])>,
}

/// The painted anatomy of one patient.
pub struct Model {
    pub patient: Patient,
    prims: Vec<Prim>,
    pub landmarks: Landmarks,
    /// Bowel loop pattern: wave vectors (1/mm) and phases of four products of sines.
    bowel_waves: [([f64; 3], f64, [f64; 3], f64); 4],
}

const ANY: u32 = u32::MAX;

impl Model {
    pub fn new(patient: &Patient) -> Model {
        let mut b = Builder { prims: Vec::new(), seed: patient.seed };
        let mut lm = Landmarks::default();
        let p = patient.clone();
        let fat = p.fat_mm / p.lean_scale;

        // --- Body envelope: all skin, then all fat, then all muscle, then cavities, so the
        // union of head, neck, trunk and legs has one continuous skin.
        let head = b.jitter_ellipsoid("head", [0.0, 0.0, 90.0], [79.0, 97.0, 80.0], 0.03, 2.0);
        let face = Ellipsoid::new([0.0, head.c[1] - 28.0, head.c[2] + 85.0], [54.0, 60.0, 52.0]);
        let leg_x = 0.55 * interp(&TRUNK, 860.0)[0];
        let layers: [(Tissue, f64, f64); 3] =
            [(Tissue::Skin, 2.0, 0.0), (Tissue::Fat, 0.0, 0.0), (Tissue::Muscle, -1.0, 0.0)];
        for (li, (label, _, _)) in layers.iter().enumerate() {
            // Outward offset of this layer's outer boundary from the muscle boundary.
            let (trunk_off, neck_off, leg_off, head_off) = match li {
                0 => (fat + 2.0, 0.5 * fat + 2.0, 0.8 * fat + 2.0, 2.0),
                1 => (fat, 0.5 * fat, 0.8 * fat, 0.0),
                _ => (0.0, 0.0, 0.0, -5.0),
            };
            b.push(head.grow(head_off - 2.0), *label, ANY);
            b.push(face.grow(head_off - 2.0), *label, ANY);
            b.push(
                Section { h0: 170.0, h1: 275.0, f: move |_h| Some((0.0, 12.0, 52.0 + neck_off, 55.0 + neck_off)) },
                *label,
                ANY,
            );
            b.push(
                Section {
                    h0: TRUNK_H.0,
                    h1: TRUNK_H.1,
                    f: move |h| {
                        trunk_frame(h).map(|[a, bb, yc]| {
                            // Abdominal fat is thicker anteriorly: grow b a little more.
                            (0.0, yc, a + trunk_off, bb + trunk_off * 1.1)
                        })
                    },
                },
                *label,
                ANY,
            );
            for s in [-1.0, 1.0] {
                b.push(
                    Section {
                        h0: 850.0,
                        h1: 1500.0,
                        f: move |h| {
                            let t = ((h - 850.0) / 450.0).clamp(0.0, 1.0);
                            let r = 80.0 - 22.0 * t;
                            Some((s * (leg_x + 4.0 * t), 14.0, r + leg_off, r * 1.05 + leg_off))
                        },
                    },
                    *label,
                    ANY,
                );
                // Arms raised above the head, as in whole-body PET/CT: upper arms beside the
                // head, forearms crossing above it.
                let arm_off = match li {
                    0 => 0.5 * fat + 2.0,
                    1 => 0.5 * fat,
                    _ => 0.0,
                };
                for (a, c, r) in arm_segments(s) {
                    b.push(Capsule { a, b: c, r: r + arm_off }, *label, ANY);
                }
            }
        }
        // Cavities: thorax (mediastinal fat, lungs painted later), abdomen and pelvis (bowel
        // mixed with visceral fat by a smooth pattern applied per slice).
        let diaphragm_h = 540.0;
        for (label, h0, h1) in [(Tissue::VisceralFat, 262.0, diaphragm_h), (Tissue::Bowel, diaphragm_h, 900.0)] {
            b.push(
                Section {
                    h0,
                    h1,
                    f: move |h| {
                        trunk_frame(h).map(|[a, bb, yc]| {
                            // Anterior wall ~18 mm; posteriorly the thorax reaches beside the
                            // spine to the ribs, the abdomen stops at the psoas/spine front.
                            let post_off = 25.0 - 20.0 * ((h - 520.0) / 80.0).clamp(0.0, 1.0);
                            let ant = yc - bb + 18.0;
                            let post = spine_y(h) + post_off;
                            let taper = ((h - 262.0) / 40.0).clamp(0.2, 1.0);
                            let pelvis = ((h - 820.0) / 80.0).clamp(0.0, 1.0);
                            (
                                0.0,
                                0.5 * (ant + post),
                                (a - 16.0) * taper * (1.0 - 0.35 * pelvis),
                                0.5 * (post - ant) * taper * (1.0 - 0.3 * pelvis),
                            )
                        })
                    },
                },
                label,
                Tissue::Muscle.bit(),
            );
        }
        // Breasts of female patients: a fat envelope on the anterior chest with glandular
        // tissue inside, grown with the subcutaneous fat.
        if p.sex == Sex::Female {
            let mut bs = Stream::new(patient.seed, "breasts");
            let size = bs.uniform(0.8, 1.2) * (0.8 + fat / 60.0);
            let [_, bb, yc] = interp(&TRUNK, 430.0);
            for side in [-1.0, 1.0] {
                let c = [side * 72.0, yc - bb - fat * 1.1 + 8.0, 440.0];
                let env = Ellipsoid::new(c, [62.0 * size, 42.0 * size, 58.0 * size]);
                b.push(env.grow(2.0), Tissue::Skin, Tissue::Air.bit());
                b.push(env, Tissue::Fat, Tissue::Skin.bit() | Tissue::Air.bit());
                b.push(
                    Ellipsoid::new([c[0], c[1] - 4.0, c[2]], env.r.map(|r| r * 0.55)),
                    Tissue::Breast,
                    Tissue::Fat.bit(),
                );
            }
        }
        let cavity = Tissue::VisceralFat.bit() | Tissue::Bowel.bit();

        // --- Abdominal organs (before the lungs, so the lung bases carve the diaphragm domes).
        let liver_r = b.jitter_ellipsoid("liver", [-62.0, 0.0, 565.0], [84.0, 90.0, 82.0], 0.08, 6.0);
        let liver_l = Ellipsoid::new(
            [liver_r.c[0] + 80.0, liver_r.c[1] - 35.0, liver_r.c[2] - 18.0],
            [55.0 * liver_r.r[0] / 84.0, 45.0, 45.0 * liver_r.r[2] / 82.0],
        );
        b.push(liver_r, Tissue::Liver, cavity);
        b.push(liver_l, Tissue::Liver, cavity);
        lm.liver = vec![liver_r, liver_l];
        let stomach = b.jitter_ellipsoid("stomach", [50.0, -25.0, 560.0], [45.0, 40.0, 50.0], 0.1, 6.0);
        b.push(stomach, Tissue::Stomach, cavity);
        // Gas cap: the anterior (non-dependent) part of the lumen, as in a supine patient.
        let lumen = stomach.grow(-5.0);
        b.push(
            Custom {
                bbox: [
                    lumen.c[0] - lumen.r[0],
                    lumen.c[0] + lumen.r[0],
                    lumen.c[1] - lumen.r[1],
                    lumen.c[1] + lumen.r[1],
                ],
                h0: lumen.c[2] - lumen.r[2],
                h1: lumen.c[2] + lumen.r[2],
                f: move |q| lumen.contains(q) && q[1] < lumen.c[1] - 0.45 * lumen.r[1],
            },
            Tissue::Gas,
            Tissue::Stomach.bit(),
        );
        let spleen = b.jitter_ellipsoid("spleen", [92.0, 40.0, 575.0], [32.0, 50.0, 55.0], 0.12, 6.0);
        b.push(spleen, Tissue::Spleen, cavity | Tissue::Stomach.bit() | Tissue::Muscle.bit());
        lm.spleen = spleen;
        for (side, name, h) in [(-1.0, "kidney_r", 665.0), (1.0, "kidney_l", 648.0)] {
            let k = b.jitter_ellipsoid(name, [side * 70.0, 45.0, h], [30.0, 26.0, 55.0], 0.08, 6.0);
            b.push(k, Tissue::Kidney, ANY);
            let pelvis = Ellipsoid::new([k.c[0] - side * 10.0, k.c[1] - 4.0, k.c[2]], [11.0, 9.0, 22.0]);
            b.push(pelvis, Tissue::RenalPelvis, Tissue::Kidney.bit());
            lm.kidneys.push(k);
        }
        let fill = p.bladder_fill;
        let bladder = b.jitter_ellipsoid(
            "bladder",
            [0.0, -30.0, 872.0 - 10.0 * fill],
            [38.0 + 25.0 * fill, 32.0 + 18.0 * fill, 28.0 + 18.0 * fill],
            0.05,
            4.0,
        );
        b.push(bladder, Tissue::Bladder, ANY);
        lm.bladder = bladder;
        // Ureters: thin urine-filled tubes from each renal pelvis along the psoas to the
        // bladder (the hot lines of FDG PET that mimic nodes).
        for k in lm.kidneys.clone() {
            let side = k.c[0].signum();
            let pts = [
                [k.c[0] - side * 10.0, k.c[1] - 4.0, k.c[2]],
                [side * 48.0, 38.0, 730.0],
                [side * 42.0, 14.0, 805.0],
                [side * 36.0, -6.0, 848.0],
                [bladder.c[0] + side * 18.0, bladder.c[1] + 8.0, bladder.c[2]],
            ];
            // Peristalsis: only some stretches hold urine at the time of the scan.
            let mut us = Stream::new(patient.seed, &format!("ureter{side}"));
            for w in pts.windows(2) {
                for part in 0..3 {
                    if !us.bernoulli(0.55) {
                        continue;
                    }
                    let at = |t: f64| [0, 1, 2].map(|a| w[0][a] + t * (w[1][a] - w[0][a]));
                    b.push(
                        Capsule { a: at(part as f64 / 3.0), b: at((part + 1) as f64 / 3.0), r: 2.2 },
                        Tissue::RenalPelvis,
                        cavity | Tissue::Muscle.bit() | Tissue::Kidney.bit(),
                    );
                }
            }
        }

        // --- Thorax: lungs, heart, great vessels, airways.
        let lung_r = b.jitter_ellipsoid("lung_r", [-78.0, 8.0, 415.0], [62.0, 88.0, 132.0], 0.06, 5.0);
        let lung_l = b.jitter_ellipsoid("lung_l", [80.0, 8.0, 422.0], [58.0, 88.0, 128.0], 0.06, 5.0);
        let lung_may = cavity | Tissue::Liver.bit() | Tissue::Spleen.bit() | Tissue::Stomach.bit();
        b.push(lung_r, Tissue::Lung, lung_may);
        b.push(lung_l, Tissue::Lung, lung_may);
        lm.lungs = vec![lung_r, lung_l];
        // Pulmonary vessels: a branching tree from each hilum, painted only inside the lungs
        // (on CT the lungs are not empty; on PET they add faint blood-pool structure).
        let mut vs = Stream::new(patient.seed, "lung-vessels");
        for side in [-1.0, 1.0] {
            let hilum = [side * 44.0, 8.0, 462.0];
            let mut stack: Vec<Branch> = [
                [side * 0.5, 0.0, -0.85],
                [side * 1.0, -0.2, 0.1],
                [side * 0.55, 0.35, 0.75],
                [side * 0.5, -0.7, 0.45],
            ]
            .iter()
            .map(|d| (hilum, normalize(*d), 5.5, 48.0, 0u32))
            .collect();
            while let Some((start, dir, r, len, generation)) = stack.pop() {
                let end = [0, 1, 2].map(|a| start[a] + dir[a] * len);
                b.push(Capsule { a: start, b: end, r }, Tissue::Blood, Tissue::Lung.bit());
                if generation < 4 {
                    for _ in 0..2 {
                        let jitter = vs.unit_vector();
                        let d = normalize([0, 1, 2].map(|a| dir[a] + 0.55 * jitter[a]));
                        stack.push((end, d, r * 0.7, len * 0.72, generation + 1));
                    }
                }
            }
        }

        let spine = |h: f64| spine_y(h);
        let vessel = |bld: &mut Builder, pts: &[[f64; 3]], r: f64, label: Tissue| {
            for w in pts.windows(2) {
                bld.push(Capsule { a: w[0], b: w[1], r }, label, ANY & !Tissue::CorticalBone.bit());
            }
        };
        // Descending aorta runs left-anterior of the spine, then the iliac arteries.
        let aorta_desc = [
            [24.0, 40.0, 362.0],
            [24.0, spine(450.0) - 12.0, 450.0],
            [16.0, spine(560.0) - 24.0, 560.0],
            [10.0, spine(650.0) - 32.0, 650.0],
            [6.0, spine(740.0) - 30.0, 742.0],
        ];
        vessel(&mut b, &aorta_desc, 12.0, Tissue::Blood);
        vessel(
            &mut b,
            &[[5.0, -38.0, 440.0], [8.0, -28.0, 372.0], [15.0, 0.0, 352.0], [24.0, 40.0, 362.0]],
            14.0,
            Tissue::Blood,
        );
        for s in [-1.0, 1.0] {
            vessel(
                &mut b,
                &[[6.0, spine(740.0) - 30.0, 742.0], [s * 45.0, 8.0, 800.0], [s * 82.0, -8.0, 880.0]],
                7.0,
                Tissue::Blood,
            );
            // Common carotid arteries and jugular veins.
            vessel(&mut b, &[[s * 22.0, 8.0, 190.0], [s * 26.0, 0.0, 300.0]], 4.5, Tissue::Blood);
            vessel(&mut b, &[[s * 36.0, 12.0, 190.0], [s * 30.0, 0.0, 310.0]], 6.0, Tissue::Blood);
        }
        vessel(&mut b, &[[-22.0, 18.0, 760.0], [-22.0, 15.0, 600.0], [-25.0, 0.0, 505.0]], 11.0, Tissue::Blood);
        vessel(&mut b, &[[-25.0, -22.0, 318.0], [-25.0, -25.0, 425.0]], 9.0, Tissue::Blood);
        vessel(&mut b, &[[10.0, -48.0, 432.0], [2.0, -22.0, 412.0]], 12.0, Tissue::Blood);
        for s in [-1.0, 1.0] {
            vessel(&mut b, &[[2.0, -22.0, 412.0], [s * 42.0, -5.0, 425.0]], 9.0, Tissue::Blood);
        }
        // Heart: chambers (blood) in a tilted ellipsoid, the left ventricle wall as myocardium.
        let hj = b.jitter("heart", 0.07, 6.0);
        let heart_c = [22.0 + hj.1[0], -28.0 + hj.1[1], 458.0 + hj.1[2]];
        let rot = rotation(-35.0, 25.0);
        b.push(RotEllipsoid::new(heart_c, [62.0 * hj.0, 50.0 * hj.0, 58.0 * hj.0], rot), Tissue::Blood, ANY);
        let lv_c = [heart_c[0] + 18.0, heart_c[1] + 2.0, heart_c[2] + 12.0];
        let lv_r = [44.0 * hj.0, 34.0 * hj.0, 36.0 * hj.0];
        b.push(RotEllipsoid::new(lv_c, lv_r, rot), Tissue::Myocardium, ANY);
        b.push(RotEllipsoid::new(lv_c, lv_r.map(|v| v - 11.0), rot), Tissue::Blood, ANY);
        lm.heart_lv = Ellipsoid::new(lv_c, lv_r);
        // Oesophagus (soft tissue) and airways.
        b.push(Capsule { a: [4.0, 14.0, 200.0], b: [12.0, 46.0, 545.0], r: 8.0 }, Tissue::Muscle, ANY);
        let carina = [0.0, -2.0, 432.0];
        b.push(Capsule { a: [0.0, -22.0, 195.0], b: carina, r: 9.0 }, Tissue::Airway, ANY);
        for s in [-1.0, 1.0] {
            b.push(Capsule { a: carina, b: [s * 46.0, 8.0, 470.0], r: 6.0 }, Tissue::Airway, ANY);
        }

        // --- Head: skull (outer table, diploe, inner table), brain, eyes, glands, mandible.
        let brain = Ellipsoid::new(
            [head.c[0], head.c[1], head.c[2] - 2.0],
            [head.r[0] - 16.0, head.r[1] - 16.0, head.r[2] - 16.0],
        );
        b.push(brain.grow(10.0), Tissue::CorticalBone, ANY);
        b.push(brain.grow(8.0), Tissue::RedMarrow, ANY);
        b.push(brain.grow(3.0), Tissue::CorticalBone, ANY);
        b.push(brain.grow(1.5), Tissue::Csf, ANY);
        b.push(brain, Tissue::BrainGray, ANY);
        b.push(brain.grow(-6.0), Tissue::BrainWhite, ANY);
        for s in [-1.0, 1.0] {
            b.push(
                Ellipsoid::new([brain.c[0] + s * 11.0, brain.c[1] - 6.0, brain.c[2] - 4.0], [7.0, 22.0, 14.0]),
                Tissue::Csf,
                ANY,
            );
            b.push(
                Ellipsoid::new([brain.c[0] + s * 23.0, brain.c[1] - 4.0, brain.c[2] + 6.0], [9.0, 15.0, 11.0]),
                Tissue::BrainGray,
                ANY,
            );
            b.push(
                Ellipsoid::new([s * 31.0, head.c[1] - 70.0, head.c[2] + 12.0], [12.0, 12.0, 12.0]),
                Tissue::Csf,
                ANY,
            );
            b.push(
                Ellipsoid::new([s * 47.0, head.c[1] + 8.0, head.c[2] + 82.0], [11.0, 17.0, 22.0]),
                Tissue::Gland,
                ANY & !Tissue::CorticalBone.bit(),
            );
            b.push(Ellipsoid::new([s * 13.0, head.c[1] - 8.0, head.c[2] + 88.0], [7.0, 7.0, 9.0]), Tissue::Gland, ANY);
            b.push(
                Ellipsoid::new([s * 30.0, head.c[1] - 30.0, head.c[2] + 112.0], [9.0, 9.0, 9.0]),
                Tissue::Gland,
                ANY,
            );
        }
        b.push(Ellipsoid::new([0.0, brain.c[1] + 38.0, brain.c[2] + 44.0], [44.0, 26.0, 21.0]), Tissue::BrainGray, ANY);
        b.push(
            Capsule { a: [0.0, brain.c[1] + 14.0, brain.c[2] + 20.0], b: [0.0, 22.0, 185.0], r: 11.0 },
            Tissue::BrainWhite,
            ANY,
        );
        let jaw_c = [0.0, head.c[1] - 22.0, head.c[2] + 96.0];
        for (label, inner, outer, hh) in [(Tissue::CorticalBone, 0.0, 8.0, 14.0), (Tissue::RedMarrow, 2.0, 6.0, 10.0)] {
            b.push(
                Custom {
                    bbox: [-60.0, 60.0, jaw_c[1] - 60.0, jaw_c[1] + 30.0],
                    h0: jaw_c[2] - hh,
                    h1: jaw_c[2] + hh,
                    f: move |q| {
                        let d = (((q[0]) / 46.0).powi(2) + ((q[1] - jaw_c[1]) / 52.0).powi(2)).sqrt();
                        let dist = (1.0 - d) * 48.0;
                        q[1] < jaw_c[1] + 18.0 && dist >= inner && dist <= outer
                    },
                },
                label,
                ANY,
            );
        }

        // --- Skeleton: spine (bodies, discs, canal, arches), sacrum, ribs, sternum, clavicles,
        // scapulae, pelvis, femurs. Cortical shells first, marrow inside.
        let mut h = 182.0;
        let levels: Vec<(usize, f64, f64, f64, f64)> = (0..24)
            .map(|i| {
                let (body, disc, rx, ry) = if i < 7 {
                    (12.0, 4.0, 13.0, 10.0)
                } else if i < 19 {
                    let t = (i - 7) as f64 / 11.0;
                    (19.0, 4.5, 15.0 + 6.0 * t, 13.0 + 4.0 * t)
                } else {
                    let t = (i - 19) as f64 / 4.0;
                    (30.0, 9.0, 24.0 + 2.0 * t, 18.0 + t)
                };
                let top = h;
                h += body + disc;
                (i, top, body, rx, ry)
            })
            .collect();
        let spine_end = h;
        for &(i, top, body, rx, ry) in &levels {
            let hc = top + body / 2.0;
            let yc = spine(hc);
            let c = [0.0, yc, hc];
            let vb = Ellipsoid::new(c, [rx, ry, body / 2.0]);
            b.push(cyl(vb), Tissue::CorticalBone, ANY);
            b.push(cyl(Ellipsoid::new(c, [rx - 2.0, ry - 2.0, body / 2.0 - 1.5])), Tissue::RedMarrow, ANY);
            let disc_h = levels.get(i + 1).map(|l| l.1).unwrap_or(top + body);
            if disc_h > top + body + 0.5 {
                b.push(
                    cyl(Ellipsoid::new(
                        [0.0, spine((top + body + disc_h) / 2.0), (top + body + disc_h) / 2.0],
                        [rx, ry, (disc_h - top - body) / 2.0],
                    )),
                    Tissue::Cartilage,
                    ANY,
                );
            }
            // Posterior arch: ring around the canal, spinous and transverse processes.
            let canal_y = yc + ry + 10.0;
            // Laminae and facets span the disc level too: no gap between arches.
            let next_top = levels.get(i + 1).map(|l| l.1).unwrap_or(top + body);
            let arch_h = (top - 0.5, next_top + 0.5);
            let canal_r: f64 = if i < 7 { 8.0 } else { 9.0 };
            b.push(
                Custom {
                    bbox: [-rx - 22.0, rx + 22.0, yc, canal_y + 40.0],
                    h0: arch_h.0,
                    h1: arch_h.1,
                    f: move |q| {
                        let dx = q[0];
                        let dy = q[1] - canal_y;
                        let r2 = dx * dx + dy * dy;
                        let ring = r2 <= (canal_r + 6.0).powi(2) && dy > -canal_r;
                        let spinous = (dx / 4.5).powi(2) + ((dy - 20.0) / 12.0).powi(2) <= 1.0;
                        let transverse = ((dx.abs() - rx - 8.0) / 13.0).powi(2) + ((dy + 3.0) / 5.0).powi(2) <= 1.0
                            && (q[2] - (arch_h.0 + arch_h.1) / 2.0).abs() < body * 0.3;
                        ring || spinous || transverse
                    },
                },
                Tissue::CorticalBone,
                ANY,
            );
            lm.vertebrae.push((c, rx, body / 2.0));
        }
        // Canal with cord (painted after the arches).
        b.push(
            Section {
                h0: 180.0,
                h1: spine_end + 30.0,
                f: move |h| {
                    let r = if h < 300.0 { 8.0 } else { 9.0 };
                    let ry = canal_offset_mm(h);
                    Some((0.0, spine(h) + ry + 10.0, r, r))
                },
            },
            Tissue::Csf,
            ANY,
        );
        b.push(
            Section {
                h0: 180.0,
                h1: 700.0,
                f: move |h| {
                    let ry = canal_offset_mm(h);
                    Some((0.0, spine(h) + ry + 10.0, 4.5, 4.0))
                },
            },
            Tissue::SpinalCord,
            Tissue::Csf.bit(),
        );
        // Sacrum: a tilted wedge below L5.
        let sac0 = spine_end;
        for (label, shrink) in [(Tissue::CorticalBone, 0.0), (Tissue::RedMarrow, 2.5)] {
            b.push(
                Section {
                    h0: sac0,
                    h1: sac0 + 95.0,
                    f: move |h| {
                        let t = ((h - sac0) / 95.0).clamp(0.0, 1.0);
                        Some((0.0, spine(h) + 8.0 * t, 48.0 * (1.0 - 0.7 * t) - shrink, 17.0 - 6.0 * t - shrink))
                    },
                },
                label,
                ANY,
            );
        }

        // Ribs: rings that follow the inside of the chest wall, sloping down anteriorly.
        let rib_levels: Vec<f64> = levels[7..19].iter().map(|l| l.1 + l.2 / 2.0).collect();
        // (level, drop, theta where bone ends, theta where cartilage ends) per rib.
        let rib_params: Vec<RibParams> = rib_levels
            .iter()
            .enumerate()
            .map(|(k, &hk)| {
                let theta_bone = match k {
                    0..=6 => 2.55,
                    7..=9 => 2.45,
                    10 => 1.6,
                    _ => 1.25,
                };
                let theta_cart = match k {
                    0..=6 => 2.98,
                    7..=9 => 2.75,
                    _ => theta_bone,
                };
                (hk, 70.0 + 3.0 * k as f64, theta_bone, theta_cart)
            })
            .collect();
        let cage = |lo: f64, end: &dyn Fn(&RibParams) -> (f64, f64)| {
            rib_params
                .iter()
                .map(|r| {
                    let (a, b) = end(r);
                    (r.0, r.1, a.max(lo), b)
                })
                .filter(|r| r.3 > r.2)
                .collect::<Vec<_>>()
        };
        b.push(
            RibCage { ribs: cage(0.28, &|r| (0.0, r.2)), radial: (0.0, 8.0), half_h: 5.5 },
            Tissue::CorticalBone,
            ANY,
        );
        b.push(
            RibCage { ribs: cage(0.30, &|r| (0.0, r.2 - 0.02)), radial: (1.8, 6.2), half_h: 3.6 },
            Tissue::RedMarrow,
            Tissue::CorticalBone.bit(),
        );
        b.push(RibCage { ribs: cage(0.0, &|r| (r.2, r.3)), radial: (0.0, 7.0), half_h: 5.0 }, Tissue::Cartilage, ANY);
        // Sternum.
        for (label, sx, sy) in [(Tissue::CorticalBone, 17.0, 7.0), (Tissue::RedMarrow, 14.0, 4.0)] {
            b.push(
                Section {
                    h0: rib_levels[0] + 25.0,
                    h1: rib_levels[6] + 45.0,
                    f: move |h| trunk_frame(h).map(|[_, bb, yc]| (0.0, yc - bb + 13.0, sx, sy)),
                },
                label,
                ANY,
            );
        }
        // Clavicles and scapulae.
        for s in [-1.0, 1.0] {
            let a = [s * 18.0, -62.0, 300.0];
            let c = [s * 150.0, -5.0, 288.0];
            b.push(Capsule { a, b: c, r: 8.0 }, Tissue::CorticalBone, ANY);
            b.push(Capsule { a, b: c, r: 5.0 }, Tissue::RedMarrow, ANY);
            for (label, inner, outer) in [(Tissue::CorticalBone, 0.0, 7.0), (Tissue::RedMarrow, 2.0, 5.0)] {
                b.push(
                    Custom {
                        bbox: [-160.0, 160.0, 20.0, 140.0],
                        h0: 300.0,
                        h1: 440.0,
                        f: move |q| {
                            let Some([a, bb, yc]) = trunk_frame(q[2]) else {
                                return false;
                            };
                            let dx = q[0];
                            let dy = q[1] - yc;
                            if dx * s < 45.0 || dy < 20.0 {
                                return false;
                            }
                            let rho = ((dx / (a - 4.0)).powi(2) + (dy / (bb - 4.0)).powi(2)).sqrt();
                            let r = (dx * dx + dy * dy).sqrt();
                            let depth = (1.0 - rho) * r / rho;
                            let theta = dx.abs().atan2(dy);
                            // Triangular blade: narrower towards its inferior angle.
                            let t = (q[2] - 300.0) / 140.0;
                            (0.35..0.35 + 0.55 * (1.0 - t)).contains(&theta) && depth >= inner && depth <= outer
                        },
                    },
                    label,
                    ANY,
                );
            }
        }
        // Pelvis: iliac wings (curved plates), acetabula, pubic and ischial rami.
        for s in [-1.0, 1.0] {
            let wing_c = [s * 52.0, 28.0, 805.0];
            let wing_r = [82.0, 62.0, 70.0];
            for (label, inner, outer) in [(Tissue::CorticalBone, 0.0, 10.0), (Tissue::RedMarrow, 2.0, 8.0)] {
                b.push(
                    Custom {
                        bbox: [s * 52.0 - 90.0, s * 52.0 + 90.0, -50.0, 95.0],
                        h0: 740.0,
                        h1: 870.0,
                        f: move |q| {
                            let d = [0, 1, 2].map(|i| (q[i] - wing_c[i]) / wing_r[i]);
                            let rho = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
                            let depth = (1.0 - rho) * 70.0;
                            s * (q[0] - wing_c[0]) > 5.0
                                && q[1] > -40.0
                                && q[1] < 80.0
                                && q[2] < 862.0
                                && depth >= inner
                                && depth <= outer
                        },
                    },
                    label,
                    ANY,
                );
            }
            lm.iliac_points.push([s * 118.0, 30.0, 790.0]);
            let head_c = [s * 88.0, 2.0, 885.0];
            // Acetabular roof: a spherical shell above the femoral head.
            for (label, inner, outer) in [(Tissue::CorticalBone, 26.0, 36.0), (Tissue::RedMarrow, 28.0, 34.0)] {
                b.push(
                    Custom {
                        bbox: [head_c[0] - 40.0, head_c[0] + 40.0, head_c[1] - 40.0, head_c[1] + 40.0],
                        h0: head_c[2] - 40.0,
                        h1: head_c[2] + 12.0,
                        f: move |q| {
                            let r =
                                ((q[0] - head_c[0]).powi(2) + (q[1] - head_c[1]).powi(2) + (q[2] - head_c[2]).powi(2))
                                    .sqrt();
                            r >= inner && r <= outer && s * (q[0] - head_c[0]) < 14.0
                        },
                    },
                    label,
                    ANY,
                );
            }
            for (a, c, r) in [
                ([s * 72.0, -22.0, 893.0], [s * 12.0, -58.0, 905.0], 11.0),
                ([s * 80.0, 26.0, 900.0], [s * 58.0, 34.0, 955.0], 13.0),
                ([s * 12.0, -58.0, 905.0], [s * 50.0, 30.0, 950.0], 8.0),
            ] {
                b.push(Capsule { a, b: c, r }, Tissue::CorticalBone, ANY);
                b.push(Capsule { a, b: c, r: r - 3.0 }, Tissue::RedMarrow, ANY);
            }
            // Femur: head, neck, greater trochanter (red marrow), shaft (yellow marrow).
            let neck_end = [s * 122.0, 12.0, 908.0];
            let shaft_end = [s * 90.0, 6.0, 1400.0];
            b.push(Ellipsoid::new(head_c, [24.0, 24.0, 24.0]), Tissue::CorticalBone, ANY);
            b.push(Capsule { a: head_c, b: neck_end, r: 16.0 }, Tissue::CorticalBone, ANY);
            b.push(Ellipsoid::new([s * 128.0, 14.0, 905.0], [18.0, 20.0, 22.0]), Tissue::CorticalBone, ANY);
            b.push(Capsule { a: [s * 120.0, 12.0, 915.0], b: shaft_end, r: 15.0 }, Tissue::CorticalBone, ANY);
            b.push(Ellipsoid::new(head_c, [21.5, 21.5, 21.5]), Tissue::RedMarrow, ANY);
            b.push(Capsule { a: head_c, b: neck_end, r: 13.0 }, Tissue::RedMarrow, ANY);
            b.push(Ellipsoid::new([s * 128.0, 14.0, 905.0], [15.0, 17.0, 19.0]), Tissue::RedMarrow, ANY);
            b.push(Capsule { a: [s * 120.0, 12.0, 930.0], b: shaft_end, r: 9.5 }, Tissue::YellowMarrow, ANY);
            lm.femoral_heads.push((head_c, 24.0));
        }
        // Humerus, radius and ulna of the raised arms.
        for s in [-1.0, 1.0] {
            let [upper, fore] = arm_segments(s);
            b.push(Ellipsoid::new(upper.0, [22.0; 3]), Tissue::CorticalBone, ANY);
            b.push(Ellipsoid::new(upper.0, [19.5; 3]), Tissue::RedMarrow, ANY);
            b.push(Capsule { a: upper.0, b: upper.1, r: 11.0 }, Tissue::CorticalBone, Tissue::Muscle.bit());
            b.push(Capsule { a: upper.0, b: upper.1, r: 6.5 }, Tissue::YellowMarrow, Tissue::CorticalBone.bit());
            for dy in [-9.0, 9.0] {
                let a = [fore.0[0], fore.0[1] + dy, fore.0[2]];
                let c = [fore.1[0], fore.1[1] + dy, fore.1[2]];
                b.push(Capsule { a, b: c, r: 6.0 }, Tissue::CorticalBone, Tissue::Muscle.bit());
            }
        }
        // Patient table below the body (CT only; PET has no activity there).
        // Flat carbon-fibre top and foam core, just under the patient's back.
        let table_y = 8.0 + 105.0 + fat * 1.1 + 3.0;
        b.push(
            Rect { x: (-230.0, 230.0), y: (table_y, table_y + 45.0), h: (-300.0, 2000.0) },
            Tissue::Table,
            Tissue::Air.bit(),
        );
        b.push(
            Rect { x: (-226.0, 226.0), y: (table_y + 4.0, table_y + 41.0), h: (-300.0, 2000.0) },
            Tissue::TableFoam,
            Tissue::Table.bit(),
        );

        // Lymph node stations (reference space), for nodal lesions.
        lm.stations = vec![
            ("right_paratracheal", [-16.0, -18.0, 380.0]),
            ("left_paratracheal", [14.0, -14.0, 370.0]),
            ("subcarinal", [0.0, 18.0, 455.0]),
            ("right_hilar", [-52.0, 12.0, 455.0]),
            ("left_hilar", [54.0, 10.0, 450.0]),
            ("prevascular", [-4.0, -62.0, 385.0]),
            ("right_axillary", [-128.0, 0.0, 330.0]),
            ("left_axillary", [128.0, 0.0, 330.0]),
            ("right_cervical", [-38.0, 0.0, 240.0]),
            ("left_cervical", [38.0, 0.0, 245.0]),
            ("left_paraaortic", [34.0, spine(680.0) - 30.0, 680.0]),
            ("right_paracaval", [-42.0, spine(700.0) - 26.0, 700.0]),
            ("retrocrural", [-10.0, spine(560.0) - 6.0, 555.0]),
            ("right_common_iliac", [-40.0, 12.0, 790.0]),
            ("left_common_iliac", [42.0, 12.0, 790.0]),
            ("right_external_iliac", [-80.0, -20.0, 862.0]),
            ("left_external_iliac", [80.0, -20.0, 862.0]),
            ("mesenteric", [10.0, -30.0, 690.0]),
        ];

        let mut ph = Stream::new(patient.seed, "bowel-pattern");
        let bowel_waves = [0; 4].map(|_| {
            let (u, v) = (ph.unit_vector(), ph.unit_vector());
            let (ku, kv) = (1.0 / ph.uniform(7.0, 13.0), 1.0 / ph.uniform(7.0, 13.0));
            (
                u.map(|c| c * ku),
                ph.uniform(0.0, std::f64::consts::TAU),
                v.map(|c| c * kv),
                ph.uniform(0.0, std::f64::consts::TAU),
            )
        });
        Model { patient: p, prims: b.prims, landmarks: lm, bowel_waves }
    }

    /// Bowel pattern in [-1, 1]-ish: smooth loops; > threshold is bowel wall/content.
    pub fn bowel_pattern(&self, q: [f64; 3]) -> f64 {
        let dot = |k: &[f64; 3]| k[0] * q[0] + k[1] * q[1] + k[2] * q[2];
        self.bowel_waves.iter().map(|(u, pu, v, pv)| (dot(u) + pu).sin() * (dot(v) + pv).sin()).sum::<f64>() * 0.8
    }

    /// Tissue label volume on `grid`.
    pub fn rasterize(&self, grid: &Grid) -> Vec<u8> {
        let mut labels = vec![0u8; grid.len()];
        labels.par_chunks_mut(grid.slice_len()).enumerate().for_each(|(k, slice)| self.fill_slice(grid, k, slice));
        labels
    }

    fn fill_slice(&self, grid: &Grid, k: usize, slice: &mut [u8]) {
        let sl = self.patient.lean_scale;
        let sv = self.patient.height_scale;
        let nx = grid.nx();
        let h = -grid.z_mm(k) / sv;
        for prim in &self.prims {
            let (h0, h1) = prim.solid.h_range();
            if h < h0 || h > h1 {
                continue;
            }
            let Some([x0, x1, y0, y1]) = prim.solid.bbox(h) else {
                continue;
            };
            let rows = grid.index_range(1, y0 * sl, y1 * sl);
            let cols = grid.index_range(0, x0 * sl, x1 * sl);
            let label = prim.label as u8;
            for j in rows {
                let y = grid.y_mm(j) / sl;
                let row = &mut slice[j * nx..(j + 1) * nx];
                match prim.solid.span(y, h) {
                    Span::Empty => {}
                    Span::Interval(a, b) => {
                        for v in &mut row[grid.index_range(0, a * sl, b * sl)] {
                            if prim.only & (1 << *v) != 0 {
                                *v = label;
                            }
                        }
                    }
                    Span::Pair(iv) => {
                        for (a, b) in [(iv[0], iv[1]), (iv[2], iv[3])] {
                            for i in grid.index_range(0, a * sl, b * sl) {
                                let v = &mut row[i];
                                if prim.only & (1 << *v) != 0 && prim.solid.contains([grid.x_mm(i) / sl, y, h]) {
                                    *v = label;
                                }
                            }
                        }
                    }
                    Span::Test => {
                        for i in cols.clone() {
                            let v = &mut row[i];
                            if prim.only & (1 << *v) != 0 && prim.solid.contains([grid.x_mm(i) / sl, y, h]) {
                                *v = label;
                            }
                        }
                    }
                }
            }
        }
        // Abdominal cavity: split into bowel loops, mesenteric fat and a little gas.
        let threshold = 2.0 * self.patient.visceral_fat_fraction - 1.0;
        for j in 0..grid.ny() {
            let y = grid.y_mm(j) / sl;
            for i in 0..nx {
                let v = &mut slice[j * nx + i];
                if *v == Tissue::Bowel as u8 {
                    let f = self.bowel_pattern([grid.x_mm(i) / sl, y, h]);
                    if f > 1.75 {
                        *v = Tissue::Gas as u8;
                    } else if f < threshold {
                        *v = Tissue::VisceralFat as u8;
                    }
                }
            }
        }
    }

    /// Reference-space point to patient coordinates.
    pub fn to_patient(&self, r: [f64; 3]) -> [f64; 3] {
        self.patient.to_patient(r)
    }
}

/// The raised arm of side `s` (-1 right, +1 left): (start, end, muscle radius) of the upper arm
/// (shoulder joint to elbow) and of the forearm (elbow to wrist), reference space.
fn arm_segments(s: f64) -> [([f64; 3], [f64; 3], f64); 2] {
    let shoulder = [s * 150.0, 12.0, 298.0];
    let elbow = [s * 118.0, 22.0, -35.0];
    let wrist = [s * 30.0, 30.0, -95.0];
    [(shoulder, elbow, 40.0), (elbow, wrist, 30.0)]
}

/// A vessel branch to paint: start, direction, radius (mm), length (mm), generation.
type Branch = ([f64; 3], [f64; 3], f64, f64, u32);

fn normalize(v: [f64; 3]) -> [f64; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12);
    v.map(|c| c / n)
}

/// Elliptic cylinder with the ellipsoid's in-plane radii and h extent.
fn cyl(e: Ellipsoid) -> impl Solid {
    Section { h0: e.c[2] - e.r[2], h1: e.c[2] + e.r[2], f: move |_h| Some((e.c[0], e.c[1], e.r[0], e.r[1])) }
}

struct Builder {
    prims: Vec<Prim>,
    seed: u64,
}

impl Builder {
    fn push(&mut self, solid: impl Solid + 'static, label: Tissue, only: u32) {
        self.prims.push(Prim { solid: Box::new(solid), label, only });
    }

    /// Per-organ size factor and position shift (mm), seeded by the organ name.
    fn jitter(&self, name: &str, scale_sd: f64, shift_sd: f64) -> (f64, [f64; 3]) {
        let mut s = Stream::new(self.seed, &format!("organ:{name}"));
        let scale = s.normal_clipped(1.0, scale_sd);
        let shift = [0; 3].map(|_| s.normal_clipped(0.0, shift_sd));
        (scale, shift)
    }

    fn jitter_ellipsoid(&self, name: &str, c: [f64; 3], r: [f64; 3], scale_sd: f64, shift_sd: f64) -> Ellipsoid {
        let (scale, shift) = self.jitter(name, scale_sd, shift_sd);
        Ellipsoid::new([c[0] + shift[0], c[1] + shift[1], c[2] + shift[2]], r.map(|v| v * scale))
    }
}

/// How far behind the vertebral body centre the spinal canal sits at height `h` (mm): larger
/// vertebrae lower down push it back.
fn canal_offset_mm(h: f64) -> f64 {
    if h < 300.0 {
        10.0
    } else if h < 560.0 {
        15.0
    } else {
        18.5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patients_vary_with_seed_and_are_stable() {
        let a = Patient::from_seed(1);
        let b = Patient::from_seed(1);
        let c = Patient::from_seed(2);
        assert_eq!(a.weight_kg, b.weight_kg);
        assert!(a.weight_kg != c.weight_kg || a.height_m != c.height_m);
        for seed in 0..50 {
            let p = Patient::from_seed(seed);
            assert!((40.0..150.0).contains(&p.weight_kg), "weight {}", p.weight_kg);
        }
    }

    #[test]
    fn interp_is_piecewise_linear() {
        let t = [(0.0, [0.0, 10.0]), (10.0, [10.0, 0.0])];
        assert_eq!(interp(&t, 5.0), [5.0, 5.0]);
        assert_eq!(interp(&t, -1.0), [0.0, 10.0]);
        assert_eq!(interp(&t, 11.0), [10.0, 0.0]);
    }

    #[test]
    fn small_grid_contains_main_organs() {
        let p = Patient::from_seed(5);
        let g = super::super::grid::ct_grid(super::super::Profile::Small, &p, None).expect("grid");
        let labels = Model::new(&p).rasterize(&g);
        let mut counts = [0usize; 32];
        for &v in &labels {
            counts[v as usize] += 1;
        }
        for t in [
            Tissue::Lung,
            Tissue::Liver,
            Tissue::Spleen,
            Tissue::Kidney,
            Tissue::Bladder,
            Tissue::Myocardium,
            Tissue::CorticalBone,
            Tissue::RedMarrow,
            Tissue::Fat,
            Tissue::Muscle,
        ] {
            assert!(counts[t as usize] > 10, "{:?} missing ({})", t, counts[t as usize]);
        }
    }
}
