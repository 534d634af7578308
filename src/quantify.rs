//! quantify: the connected lesions of a segmentation, each measured on the SUV volume (SUVmax,
//! SUVmean, SUVpeak, MTV, TLG, centroid, bounding box), and the study totals.
//!
//! Connected components are found on runs of foreground voxels along x: each slice is scanned
//! in parallel, runs that touch (within a slice and between neighbouring slices, per the
//! connectivity) are joined in one union-find, and components are numbered in scan order. A
//! 512x512x300 body mask has a few hundred thousand runs, so the merge is cheap.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::volume::{Geometry, Volume, VolumeError};

/// A binary segmentation on a grid: 1 inside, 0 outside.
pub type Mask = Volume<u8>;

/// One connected lesion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lesion {
    /// 1-based; the value of this lesion's voxels in the label volume, in order of decreasing
    /// SUVmax (lesion 1 is the hottest).
    pub label: u32,
    pub voxels: usize,
    pub volume_ml: f64,
    pub suv_max: f64,
    pub suv_mean: f64,
    /// PERCIST: the highest mean SUV in a 1 cm³ sphere anywhere in the lesion.
    pub suv_peak: f64,
    /// Total lesion glycolysis, SUVmean x MTV (g).
    pub tlg: f64,
    /// Centre of mass (unweighted), patient coordinates (DICOM LPS, mm).
    pub centroid_mm: [f64; 3],
    /// Inclusive voxel index bounds `[min, max]` as `[x, y, z]`.
    pub bbox: [[usize; 3]; 2],
    /// SEG segment numbers (1-based) whose mask holds this lesion.
    pub segments: Vec<u16>,
    /// Names of the methods (segments) that found it.
    pub detected_by: Vec<String>,
}

/// Everything measured in one study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Findings {
    pub lesions: Vec<Lesion>,
    pub lesion_count: usize,
    pub total_mtv_ml: f64,
    pub total_tlg: f64,
    /// Study-level abnormality score of the anomaly detector (0..1), when one ran.
    pub anomaly_score: Option<f64>,
}

/// Radius (mm) of the 1 cm³ sphere of SUVpeak: (3 / 4π)^(1/3) cm.
pub const SUV_PEAK_RADIUS_MM: f64 = 6.203_504_908_994;

#[derive(Debug, thiserror::Error)]
pub enum QuantifyError {
    #[error("mask grid {mask:?} differs from SUV grid {suv:?}")]
    GridMismatch { mask: [usize; 3], suv: [usize; 3] },
    #[error("building the label volume: {0}")]
    Volume(#[from] VolumeError),
}

impl QuantifyError {
    /// Both are programming or input errors; a retry gives the same result.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Which neighbours of a voxel touch it: those sharing a face (6), a face or an edge (18), or
/// also a corner (26). Written as the number (`18` or `"18"`) in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "ConnectivityValue", into = "u8")]
pub enum Connectivity {
    Faces6,
    /// The autoPET evaluation's choice.
    #[default]
    Edges18,
    Corners26,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ConnectivityValue {
    Number(i64),
    Text(String),
}

impl TryFrom<ConnectivityValue> for Connectivity {
    type Error = String;

    fn try_from(v: ConnectivityValue) -> Result<Self, String> {
        let n = match &v {
            ConnectivityValue::Number(n) => Some(*n),
            ConnectivityValue::Text(s) => s.trim().parse().ok(),
        };
        match n {
            Some(6) => Ok(Connectivity::Faces6),
            Some(18) => Ok(Connectivity::Edges18),
            Some(26) => Ok(Connectivity::Corners26),
            _ => Err(match v {
                ConnectivityValue::Number(n) => format!("connectivity must be 6, 18 or 26, got {n}"),
                ConnectivityValue::Text(s) => format!("connectivity must be 6, 18 or 26, got {s:?}"),
            }),
        }
    }
}

impl From<Connectivity> for u8 {
    fn from(c: Connectivity) -> u8 {
        match c {
            Connectivity::Faces6 => 6,
            Connectivity::Edges18 => 18,
            Connectivity::Corners26 => 26,
        }
    }
}

impl Connectivity {
    /// Voxel offsets `[di, dj, dk]` of the neighbours (no more than 1, 2 or 3 non-zero).
    pub fn offsets(self) -> Vec<[i64; 3]> {
        let max_nonzero = match self {
            Connectivity::Faces6 => 1,
            Connectivity::Edges18 => 2,
            Connectivity::Corners26 => 3,
        };
        let mut v = Vec::with_capacity(26);
        for dk in -1..=1i64 {
            for dj in -1..=1i64 {
                for di in -1..=1i64 {
                    let nonzero = [di, dj, dk].iter().filter(|d| **d != 0).count();
                    if (1..=max_nonzero).contains(&nonzero) {
                        v.push([di, dj, dk]);
                    }
                }
            }
        }
        v
    }
}

/// Foreground voxels `x0..x1` of one row.
#[derive(Debug, Clone, Copy)]
struct Run {
    x0: u32,
    x1: u32,
}

/// The connected components of a binary volume, kept as runs (cheap for large masks).
pub(crate) struct Components {
    dims: [usize; 3],
    runs: Vec<Run>,
    /// Runs of row `r = k * ny + j` are `runs[row_start[r]..row_start[r + 1]]`.
    row_start: Vec<usize>,
    /// Component (0-based, in scan order of its first voxel) of each run.
    component: Vec<u32>,
    count: usize,
}

/// Touching pairs between the runs of two rows, by index (`a_off`, `b_off` are the indices of
/// their first runs). `tol` 1 also counts runs that meet only diagonally.
fn touching(a: &[Run], a_off: usize, b: &[Run], b_off: usize, tol: u32, out: &mut Vec<(usize, usize)>) {
    let (mut p, mut q) = (0, 0);
    while p < a.len() && q < b.len() {
        let (ra, rb) = (a[p], b[q]);
        if ra.x0 < rb.x1 + tol && rb.x0 < ra.x1 + tol {
            out.push((a_off + p, b_off + q));
        }
        // Runs in a row are separated by a gap, so the run that ends first touches nothing later.
        if ra.x1 <= rb.x1 {
            p += 1;
        } else {
            q += 1;
        }
    }
}

/// Root of `x` in a union-find forest, halving paths on the way.
pub(crate) fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

impl Components {
    /// Labels the non-zero voxels of `data` (`(z, y, x)`, `dims` = `[nx, ny, nz]`).
    pub(crate) fn new(data: &[u8], dims: [usize; 3], connectivity: Connectivity) -> Self {
        let [nx, ny, nz] = dims;
        let per_slice: Vec<(Vec<Run>, Vec<usize>)> = data
            .par_chunks_exact(nx * ny)
            .map(|slice| {
                let mut runs = Vec::new();
                let mut counts = Vec::with_capacity(ny);
                for row in slice.chunks_exact(nx) {
                    let before = runs.len();
                    let mut i = 0;
                    while let Some(s) = row[i..].iter().position(|&v| v != 0) {
                        let x0 = i + s;
                        let len = row[x0..].iter().position(|&v| v == 0).unwrap_or(nx - x0);
                        runs.push(Run { x0: x0 as u32, x1: (x0 + len) as u32 });
                        i = x0 + len;
                    }
                    counts.push(runs.len() - before);
                }
                (runs, counts)
            })
            .collect();
        let mut row_start = Vec::with_capacity(nz * ny + 1);
        row_start.push(0);
        let mut runs = Vec::with_capacity(per_slice.iter().map(|s| s.0.len()).sum());
        for (slice_runs, counts) in per_slice {
            for c in counts {
                row_start.push(row_start[row_start.len() - 1] + c);
            }
            runs.extend(slice_runs);
        }
        let row = |k: usize, j: usize| {
            let r = k * ny + j;
            (&runs[row_start[r]..row_start[r + 1]], row_start[r])
        };
        // Tolerances: diagonal contact in-plane and to the same row of the previous slice is an
        // edge (18 and 26); to the neighbouring rows of the previous slice, face contact is an
        // edge (18) and diagonal contact a corner (26 only).
        let (tol_edge, tol_corner) = match connectivity {
            Connectivity::Faces6 => (0, None),
            Connectivity::Edges18 => (1, Some(0)),
            Connectivity::Corners26 => (1, Some(1)),
        };
        let edges: Vec<Vec<(usize, usize)>> = (0..nz)
            .into_par_iter()
            .map(|k| {
                let mut out = Vec::new();
                for j in 0..ny {
                    let (here, off) = row(k, j);
                    if here.is_empty() {
                        continue;
                    }
                    if j > 0 {
                        let (prev, poff) = row(k, j - 1);
                        touching(prev, poff, here, off, tol_edge, &mut out);
                    }
                    if k > 0 {
                        let (below, boff) = row(k - 1, j);
                        touching(below, boff, here, off, tol_edge, &mut out);
                        if let Some(tol) = tol_corner {
                            for jj in [j.wrapping_sub(1), j + 1] {
                                if jj < ny {
                                    let (b, bo) = row(k - 1, jj);
                                    touching(b, bo, here, off, tol, &mut out);
                                }
                            }
                        }
                    }
                }
                out
            })
            .collect();
        let mut parent: Vec<usize> = (0..runs.len()).collect();
        for (a, b) in edges.into_iter().flatten() {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            // The smaller index wins, so a root is the first run of its component in scan order.
            if ra != rb {
                parent[ra.max(rb)] = ra.min(rb);
            }
        }
        let mut component = vec![u32::MAX; runs.len()];
        let mut count = 0usize;
        for r in 0..runs.len() {
            let root = find(&mut parent, r);
            if root == r {
                component[r] = count as u32;
                count += 1;
            } else {
                component[r] = component[root];
            }
        }
        Components { dims, runs, row_start, component, count }
    }

    /// Voxel count of each component.
    pub(crate) fn sizes(&self) -> Vec<usize> {
        let mut sizes = vec![0usize; self.count];
        for (run, &c) in self.runs.iter().zip(&self.component) {
            sizes[c as usize] += (run.x1 - run.x0) as usize;
        }
        sizes
    }

    /// How many voxels of each component are non-zero in `other` (same grid): the overlap of
    /// each component with another mask, from the runs alone (slices in parallel).
    pub(crate) fn overlap_counts(&self, other: &[u8]) -> Vec<usize> {
        let [nx, ny, nz] = self.dims;
        (0..nz)
            .into_par_iter()
            .fold(
                || vec![0usize; self.count],
                |mut counts, k| {
                    for r in k * ny..(k + 1) * ny {
                        let row = &other[r * nx..(r + 1) * nx];
                        let (s, e) = (self.row_start[r], self.row_start[r + 1]);
                        for (run, &c) in self.runs[s..e].iter().zip(&self.component[s..e]) {
                            counts[c as usize] +=
                                row[run.x0 as usize..run.x1 as usize].iter().filter(|&&v| v != 0).count();
                        }
                    }
                    counts
                },
            )
            .reduce(
                || vec![0usize; self.count],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                    a
                },
            )
    }

    /// Linear voxel indices of each component, in scan order.
    pub(crate) fn voxel_lists(&self) -> Vec<Vec<usize>> {
        let mut lists: Vec<Vec<usize>> = self.sizes().into_iter().map(Vec::with_capacity).collect();
        let nx = self.dims[0];
        for (r, w) in self.row_start.windows(2).enumerate() {
            for (run, &c) in self.runs[w[0]..w[1]].iter().zip(&self.component[w[0]..w[1]]) {
                let base = r * nx;
                lists[c as usize].extend(base + run.x0 as usize..base + run.x1 as usize);
            }
        }
        lists
    }

    /// Writes `value(component)` into `out` over every voxel of each component for which it
    /// is `Some`; other voxels are left as they are.
    pub(crate) fn paint<T: Copy + Send>(&self, out: &mut [T], value: impl Fn(usize) -> Option<T> + Sync) {
        let [nx, ny, _] = self.dims;
        out.par_chunks_exact_mut(nx * ny).enumerate().for_each(|(k, slice)| {
            for (j, row_out) in slice.chunks_exact_mut(nx).enumerate() {
                let r = k * ny + j;
                let (s, e) = (self.row_start[r], self.row_start[r + 1]);
                for (run, &c) in self.runs[s..e].iter().zip(&self.component[s..e]) {
                    if let Some(v) = value(c as usize) {
                        row_out[run.x0 as usize..run.x1 as usize].fill(v);
                    }
                }
            }
        });
    }
}

/// `(i, j, k)` of a linear index.
pub(crate) fn coords(dims: [usize; 3], idx: usize) -> [usize; 3] {
    [idx % dims[0], (idx / dims[0]) % dims[1], idx / (dims[0] * dims[1])]
}

/// Offsets `[di, dj, dk]` of the voxels whose centres lie within `radius_mm` of a voxel centre.
fn ball_offsets(spacing_mm: [f64; 3], radius_mm: f64) -> Vec<[i64; 3]> {
    let r = spacing_mm.map(|s| (radius_mm / s).floor() as i64);
    let mut v = Vec::new();
    for dk in -r[2]..=r[2] {
        for dj in -r[1]..=r[1] {
            for di in -r[0]..=r[0] {
                let d2 = (di as f64 * spacing_mm[0]).powi(2)
                    + (dj as f64 * spacing_mm[1]).powi(2)
                    + (dk as f64 * spacing_mm[2]).powi(2);
                if d2 <= radius_mm * radius_mm * (1.0 + 1e-12) {
                    v.push([di, dj, dk]);
                }
            }
        }
    }
    v
}

/// PERCIST SUVpeak of one lesion: the largest mean SUV over a 1 cm³ sphere centred on any of
/// the lesion's voxel centres. Every voxel whose centre lies in the sphere counts, inside the
/// lesion or not; voxels beyond the image edge are left out of the mean.
fn suv_peak(suv: &[f32], dims: [usize; 3], list: &[usize], ball: &[[i64; 3]]) -> f64 {
    let reach = [0, 1, 2].map(|a| ball.iter().map(|o| o[a].unsigned_abs() as usize).max().unwrap_or(0));
    let (nx, ny) = (dims[0] as i64, dims[1] as i64);
    let linear: Vec<i64> = ball.iter().map(|o| (o[2] * ny + o[1]) * nx + o[0]).collect();
    list.par_iter()
        .map(|&idx| {
            let c = coords(dims, idx);
            let interior = (0..3).all(|a| c[a] >= reach[a] && c[a] + reach[a] < dims[a]);
            let (sum, n) = if interior {
                // The whole sphere is inside the image: plain offsets, no bounds per voxel.
                let s: f64 = linear.iter().map(|&d| suv[(idx as i64 + d) as usize] as f64).sum();
                (s, linear.len())
            } else {
                ball.iter()
                    .filter_map(|o| {
                        let p: [i64; 3] = std::array::from_fn(|a| c[a] as i64 + o[a]);
                        (0..3)
                            .all(|a| p[a] >= 0 && p[a] < dims[a] as i64)
                            .then(|| suv[((p[2] * ny + p[1]) * nx + p[0]) as usize] as f64)
                    })
                    .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1))
            };
            sum / n.max(1) as f64
        })
        .reduce(|| f64::MIN, f64::max)
}

/// What one component measures before lesions are ranked.
struct Measured {
    component: usize,
    voxels: usize,
    suv_max: f64,
    /// First voxel (scan order) holding the maximum, to break ties deterministically.
    max_at: usize,
    suv_mean: f64,
    suv_peak: f64,
    centroid_ijk: [f64; 3],
    bbox: [[usize; 3]; 2],
}

fn measure(component: usize, list: &[usize], suv: &[f32], dims: [usize; 3], ball: &[[i64; 3]]) -> Measured {
    let mut max = f32::MIN;
    let mut max_at = 0;
    let mut sum = 0.0f64;
    let mut centre = [0.0f64; 3];
    let mut lo = [usize::MAX; 3];
    let mut hi = [0usize; 3];
    for &idx in list {
        let v = suv[idx];
        if v > max {
            max = v;
            max_at = idx;
        }
        sum += v as f64;
        let c = coords(dims, idx);
        for a in 0..3 {
            centre[a] += c[a] as f64;
            lo[a] = lo[a].min(c[a]);
            hi[a] = hi[a].max(c[a]);
        }
    }
    let n = list.len().max(1) as f64;
    Measured {
        component,
        voxels: list.len(),
        suv_max: max as f64,
        max_at,
        suv_mean: sum / n,
        suv_peak: suv_peak(suv, dims, list, ball),
        centroid_ijk: centre.map(|c| c / n),
        bbox: [lo, hi],
    }
}

/// Which SEG segment and method produced a mask; copied into each lesion it yields.
#[derive(Debug, Clone, Copy)]
pub struct MaskSource<'a> {
    /// SEG segment number (1-based).
    pub segment: u16,
    /// Method name, e.g. `"classical"` or a model name.
    pub method: &'a str,
}

/// Splits `mask` (non-zero = inside) into connected lesions and measures each on `suv` (same
/// grid). Returns the label volume (0 outside, lesion `n` has value `n`, lesion 1 the hottest
/// by SUVmax) and the findings; `anomaly_score` is left `None` for the caller.
pub fn quantify(
    mask: &Mask,
    suv: &Volume<f32>,
    connectivity: Connectivity,
    source: MaskSource<'_>,
) -> Result<(Volume<u32>, Findings), QuantifyError> {
    quantify_sources(&[(mask, source)], suv, connectivity)
}

/// Lesions from several masks (one per method, e.g. each model's and the classical one's), in
/// order of precedence: each connected component of the first mask is a lesion; a component of
/// a later mask is a lesion of its own only where it touches none of the lesions before it.
/// Every lesion lists, in `segments` and `detected_by`, the method it comes from first, then
/// every other method whose mask overlaps it. Measured and numbered as [`quantify`] does.
pub fn quantify_sources(
    sources: &[(&Mask, MaskSource<'_>)],
    suv: &Volume<f32>,
    connectivity: Connectivity,
) -> Result<(Volume<u32>, Findings), QuantifyError> {
    let geometry: &Geometry = suv.geometry();
    let dims = geometry.dims;
    if let Some((m, _)) = sources.iter().find(|(m, _)| m.geometry().dims != dims) {
        return Err(QuantifyError::GridMismatch { mask: m.geometry().dims, suv: dims });
    }
    // Each lesion: its voxels and the index of the source it comes from.
    let mut lists: Vec<(Vec<usize>, usize)> = Vec::new();
    let mut taken = vec![false; suv.data().len()];
    for (s, (mask, _)) in sources.iter().enumerate() {
        let fresh: Vec<Vec<usize>> = Components::new(mask.data(), dims, connectivity)
            .voxel_lists()
            .into_par_iter()
            .filter(|list| !list.iter().any(|&v| taken[v]))
            .collect();
        for list in fresh {
            for &v in &list {
                taken[v] = true;
            }
            lists.push((list, s));
        }
    }
    let ball = ball_offsets(geometry.spacing_mm, SUV_PEAK_RADIUS_MM);
    let mut measured: Vec<Measured> =
        lists.par_iter().enumerate().map(|(c, (list, _))| measure(c, list, suv.data(), dims, &ball)).collect();
    measured.sort_by(|a, b| b.suv_max.total_cmp(&a.suv_max).then(a.max_at.cmp(&b.max_at)));
    let mut labels = vec![0u32; suv.data().len()];
    for (rank, m) in measured.iter().enumerate() {
        for &v in &lists[m.component].0 {
            labels[v] = rank as u32 + 1;
        }
    }
    let labels = Volume::new(geometry.clone(), labels)?;
    let voxel_ml = geometry.spacing_mm.iter().product::<f64>() / 1000.0;
    let lesions: Vec<Lesion> = measured
        .into_par_iter()
        .enumerate()
        .map(|(rank, m)| {
            let (list, first) = &lists[m.component];
            let found: Vec<&MaskSource> = std::iter::once(&sources[*first].1)
                .chain(
                    sources
                        .iter()
                        .enumerate()
                        .filter(|&(s, (mask, _))| s != *first && list.iter().any(|&v| mask.data()[v] != 0))
                        .map(|(_, (_, source))| source),
                )
                .collect();
            let volume_ml = m.voxels as f64 * voxel_ml;
            Lesion {
                label: rank as u32 + 1,
                voxels: m.voxels,
                volume_ml,
                suv_max: m.suv_max,
                suv_mean: m.suv_mean,
                suv_peak: m.suv_peak,
                tlg: m.suv_mean * volume_ml,
                centroid_mm: geometry.index_to_patient(m.centroid_ijk),
                bbox: m.bbox,
                segments: found.iter().map(|s| s.segment).collect(),
                detected_by: found.iter().map(|s| s.method.to_string()).collect(),
            }
        })
        .collect();
    let findings = Findings {
        lesion_count: lesions.len(),
        total_mtv_ml: lesions.iter().map(|l| l.volume_ml).sum(),
        total_tlg: lesions.iter().map(|l| l.tlg).sum(),
        lesions,
        anomaly_score: None,
    };
    Ok((labels, findings))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn geometry(dims: [usize; 3], spacing_mm: [f64; 3]) -> Geometry {
        Geometry {
            dims,
            spacing_mm,
            origin_mm: [-10.0, 20.0, -300.0],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    /// A volume on an axis-aligned grid with each voxel's value from its `(i, j, k)`.
    pub(crate) fn volume<T: Clone>(dims: [usize; 3], spacing_mm: [f64; 3], f: impl Fn([usize; 3]) -> T) -> Volume<T> {
        let n = dims.iter().product::<usize>();
        let data = (0..n).map(|idx| f(coords(dims, idx))).collect();
        Volume::new(geometry(dims, spacing_mm), data).unwrap()
    }

    const SOURCE: MaskSource<'static> = MaskSource { segment: 2, method: "classical" };

    fn count(mask: &Mask, c: Connectivity) -> usize {
        quantify(mask, &volume(mask.geometry().dims, [1.0; 3], |_| 1.0f32), c, SOURCE).unwrap().1.lesion_count
    }

    #[test]
    fn uniform_sphere_has_closed_form_measurements() {
        let (dims, r) = ([41, 41, 41], 10.0);
        let inside = |c: [usize; 3]| c.iter().map(|&v| (v as f64 - 20.0).powi(2)).sum::<f64>() <= r * r;
        let mask = volume(dims, [1.0; 3], |c| u8::from(inside(c)));
        let suv = volume(dims, [1.0; 3], |c| if inside(c) { 5.0f32 } else { 1.0 });
        let (labels, f) = quantify(&mask, &suv, Connectivity::Edges18, SOURCE).unwrap();
        assert_eq!(f.lesion_count, 1);
        let l = &f.lesions[0];
        let n = mask.data().iter().filter(|&&v| v == 1).count();
        assert_eq!(l.voxels, n);
        assert!((l.volume_ml - 4.0 / 3.0 * std::f64::consts::PI * r * r * r / 1000.0).abs() < 0.02 * l.volume_ml);
        assert_eq!((l.suv_max, l.suv_mean), (5.0, 5.0));
        // The 6.2 mm sphere fits inside the 10 mm lesion: its mean is the lesion's SUV.
        assert!((l.suv_peak - 5.0).abs() < 1e-9);
        assert!((l.tlg - 5.0 * l.volume_ml).abs() < 1e-9);
        assert_eq!(l.centroid_mm, [10.0, 40.0, -280.0]);
        assert_eq!(l.bbox, [[10, 10, 10], [30, 30, 30]]);
        assert_eq!((l.segments.clone(), l.detected_by.clone()), (vec![2], vec!["classical".to_string()]));
        assert_eq!(labels.data().iter().filter(|&&v| v == 1).count(), n);
        assert!((f.total_mtv_ml - l.volume_ml).abs() < 1e-12 && (f.total_tlg - l.tlg).abs() < 1e-12);
    }

    #[test]
    fn suv_peak_averages_every_voxel_in_the_sphere_inside_the_lesion_or_not() {
        // A lesion of radius 2 voxels (2 mm): the peak sphere (6.2 mm) centred on it holds the
        // whole lesion and background around it.
        let dims = [21, 21, 21];
        let d2 = |c: [usize; 3]| c.iter().map(|&v| (v as f64 - 10.0).powi(2)).sum::<f64>();
        let mask = volume(dims, [1.0; 3], |c| u8::from(d2(c) <= 4.0));
        let suv = volume(dims, [1.0; 3], |c| if d2(c) <= 4.0 { 9.0f32 } else { 1.0 });
        let (_, f) = quantify(&mask, &suv, Connectivity::Corners26, SOURCE).unwrap();
        let in_lesion = mask.data().iter().filter(|&&v| v == 1).count() as f64;
        let in_sphere = ball_offsets([1.0; 3], SUV_PEAK_RADIUS_MM).len() as f64;
        let expected = (9.0 * in_lesion + (in_sphere - in_lesion)) / in_sphere;
        assert!((f.lesions[0].suv_peak - expected).abs() < 1e-9, "{} vs {expected}", f.lesions[0].suv_peak);
        // About 1 mL of 1 mm voxels.
        assert!((in_sphere / 1000.0 - 1.0).abs() < 0.03, "{in_sphere}");
    }

    #[test]
    fn suv_peak_at_the_image_edge_averages_the_voxels_inside_the_image() {
        let dims = [5, 5, 5];
        let mask = volume(dims, [1.0; 3], |c| u8::from(c == [0, 0, 0]));
        let suv = volume(dims, [1.0; 3], |c| if c == [0, 0, 0] { 2.0f32 } else { 1.0 });
        let (_, f) = quantify(&mask, &suv, Connectivity::Faces6, SOURCE).unwrap();
        let inside: Vec<_> = ball_offsets([1.0; 3], SUV_PEAK_RADIUS_MM)
            .into_iter()
            .filter(|o| o.iter().all(|&d| (0..5).contains(&d)))
            .collect();
        let expected = (2.0 + (inside.len() - 1) as f64) / inside.len() as f64;
        assert!((f.lesions[0].suv_peak - expected).abs() < 1e-9);
    }

    #[test]
    fn connectivity_decides_which_voxels_touch() {
        let pair = |b: [usize; 3]| volume([4, 4, 4], [1.0; 3], move |c| u8::from(c == [1, 1, 1] || c == b));
        let cases = [
            ([2, 1, 1], [1, 1, 1]), // shared face
            ([2, 2, 1], [2, 1, 1]), // shared edge in-plane
            ([2, 1, 2], [2, 1, 1]), // shared edge across slices
            ([1, 2, 2], [2, 1, 1]), // shared edge across slices, other axis
            ([2, 2, 2], [2, 2, 1]), // shared corner only
        ];
        for (b, [six, eighteen, twenty_six]) in cases {
            let m = pair(b);
            assert_eq!(count(&m, Connectivity::Faces6), six, "{b:?} 6");
            assert_eq!(count(&m, Connectivity::Edges18), eighteen, "{b:?} 18");
            assert_eq!(count(&m, Connectivity::Corners26), twenty_six, "{b:?} 26");
        }
        assert_eq!(Connectivity::Faces6.offsets().len(), 6);
        assert_eq!(Connectivity::Edges18.offsets().len(), 18);
        assert_eq!(Connectivity::Corners26.offsets().len(), 26);
    }

    /// Reference labelling: a flood fill per voxel with the connectivity's offsets.
    fn flood_count(data: &[u8], dims: [usize; 3], c: Connectivity) -> Vec<usize> {
        let mut seen = vec![false; data.len()];
        let mut sizes = Vec::new();
        for start in 0..data.len() {
            if data[start] == 0 || seen[start] {
                continue;
            }
            seen[start] = true;
            let mut stack = vec![start];
            let mut n = 0;
            while let Some(p) = stack.pop() {
                n += 1;
                let q = coords(dims, p);
                for o in c.offsets() {
                    let r: [i64; 3] = std::array::from_fn(|a| q[a] as i64 + o[a]);
                    if (0..3).all(|a| r[a] >= 0 && r[a] < dims[a] as i64) {
                        let i = (r[2] as usize * dims[1] + r[1] as usize) * dims[0] + r[0] as usize;
                        if data[i] != 0 && !seen[i] {
                            seen[i] = true;
                            stack.push(i);
                        }
                    }
                }
            }
            sizes.push(n);
        }
        sizes
    }

    #[test]
    fn run_labelling_matches_a_flood_fill_on_random_volumes() {
        let dims = [23, 17, 11];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for density in [0.2, 0.35, 0.5] {
            let data: Vec<u8> = (0..dims.iter().product::<usize>())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    u8::from((state % 1000) as f64 / 1000.0 < density)
                })
                .collect();
            for c in [Connectivity::Faces6, Connectivity::Edges18, Connectivity::Corners26] {
                let comps = Components::new(&data, dims, c);
                // Both number components by their first voxel in scan order.
                assert_eq!(comps.sizes(), flood_count(&data, dims, c), "density {density}, {c:?}");
                let lists = comps.voxel_lists();
                assert!(lists.iter().all(|l| l.windows(2).all(|w| w[0] < w[1])));
                assert_eq!(lists.iter().map(Vec::len).sum::<usize>(), data.iter().filter(|&&v| v != 0).count());
            }
        }
    }

    #[test]
    fn overlap_counts_match_the_voxel_lists() {
        let dims = [19, 13, 7];
        let n = dims.iter().product::<usize>();
        let a: Vec<u8> = (0..n).map(|i| u8::from((i * 7919) % 23 < 3)).collect();
        let b: Vec<u8> = (0..n).map(|i| u8::from((i * 104_729) % 13 < 5) * 3).collect();
        let comps = Components::new(&a, dims, Connectivity::Edges18);
        let expected: Vec<usize> =
            comps.voxel_lists().iter().map(|l| l.iter().filter(|&&i| b[i] != 0).count()).collect();
        assert!(expected.contains(&0) && expected.iter().any(|&c| c > 1), "{expected:?}");
        assert_eq!(comps.overlap_counts(&b), expected);
        let both = a.iter().zip(&b).filter(|(x, y)| **x != 0 && **y != 0).count();
        assert_eq!(comps.overlap_counts(&b).iter().sum::<usize>(), both);
    }

    #[test]
    fn lesions_are_numbered_hottest_first() {
        let dims = [30, 10, 5];
        // Three separate bars along x with SUVmax 3, 7 and 5.
        let bar = |c: [usize; 3]| match c {
            [x, 5, 2] if (2..8).contains(&x) => Some(3.0f32),
            [x, 5, 2] if (12..18).contains(&x) => Some(7.0),
            [x, 5, 2] if (22..28).contains(&x) => Some(5.0),
            _ => None,
        };
        let mask = volume(dims, [2.0, 2.0, 3.0], |c| u8::from(bar(c).is_some()));
        let suv = volume(dims, [2.0, 2.0, 3.0], |c| bar(c).unwrap_or(0.5));
        let (labels, f) = quantify(&mask, &suv, Connectivity::Edges18, SOURCE).unwrap();
        assert_eq!(f.lesions.iter().map(|l| l.suv_max).collect::<Vec<_>>(), [7.0, 5.0, 3.0]);
        assert_eq!(f.lesions.iter().map(|l| l.label).collect::<Vec<_>>(), [1, 2, 3]);
        let at = |x: usize| labels.data()[(2 * 10 + 5) * 30 + x];
        assert_eq!((at(15), at(25), at(5), at(10)), (1, 2, 3, 0));
        assert!((f.lesions[0].volume_ml - 6.0 * 12.0 / 1000.0).abs() < 1e-12);
    }

    #[test]
    fn mismatched_grids_are_refused() {
        let mask = volume([4, 4, 4], [1.0; 3], |_| 0u8);
        let suv = volume([4, 4, 5], [1.0; 3], |_| 0f32);
        assert!(matches!(
            quantify(&mask, &suv, Connectivity::Edges18, SOURCE),
            Err(QuantifyError::GridMismatch { .. })
        ));
        let (_, f) = quantify(&mask, &volume([4, 4, 4], [1.0; 3], |_| 0f32), Connectivity::Edges18, SOURCE).unwrap();
        assert_eq!((f.lesion_count, f.total_mtv_ml), (0, 0.0));
    }

    #[test]
    fn several_sources_give_one_lesion_per_finding_with_who_found_it() {
        let dims = [30, 10, 5];
        let on = |c: [usize; 3], xs: std::ops::Range<usize>| c[1] == 5 && c[2] == 2 && xs.contains(&c[0]);
        // The model finds a bar at x 2..8; the baseline finds a longer bar over it and one at 20..24.
        let model = volume(dims, [2.0, 2.0, 3.0], |c| u8::from(on(c, 2..8)));
        let baseline = volume(dims, [2.0, 2.0, 3.0], |c| u8::from(on(c, 1..10) || on(c, 20..24)));
        let suv = volume(dims, [2.0, 2.0, 3.0], |c| if on(c, 20..24) { 9.0 } else { 4.0 });
        let sources = [
            (&model, MaskSource { segment: 1, method: "model" }),
            (&baseline, MaskSource { segment: 2, method: "classical" }),
        ];
        let (labels, f) = quantify_sources(&sources, &suv, Connectivity::Edges18).unwrap();
        assert_eq!(f.lesion_count, 2);
        // Hottest first: the baseline's own lesion, then the model's, measured on the model's mask.
        assert_eq!(
            (f.lesions[0].detected_by.clone(), f.lesions[0].segments.clone()),
            (vec!["classical".into()], vec![2])
        );
        assert_eq!(f.lesions[0].voxels, 4);
        assert_eq!(f.lesions[1].detected_by, ["model", "classical"]);
        assert_eq!((f.lesions[1].segments.clone(), f.lesions[1].voxels), (vec![1, 2], 6));
        let at = |x: usize| labels.data()[(2 * 10 + 5) * 30 + x];
        assert_eq!((at(21), at(3), at(1), at(9)), (1, 2, 0, 0));
    }
}
