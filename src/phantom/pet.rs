//! FDG PET: physiological uptake per tissue (SUV), the noiseless activity on the CT grid, and
//! the scanner forward model onto the PET grid: voxel averaging (with the optional rigid
//! patient motion), a 6 mm FWHM Gaussian PSF and count-dependent, spatially correlated noise.

use rayon::prelude::*;
use serde::Serialize;

use super::Misalign;
use super::anatomy::{Model, Tissue};
use super::grid::Grid;
use super::lesions::Lesion;
use super::rng::Stream;

/// Scanner resolution (full width at half maximum) in mm.
pub const PSF_FWHM_MM: f64 = 6.0;
const FWHM_TO_SIGMA: f64 = 1.0 / 2.354_820_045_030_949;

/// Physiological SUV per tissue for one patient.
#[derive(Debug, Clone, Serialize)]
pub struct Uptake {
    suv: [f64; 29],
}

impl Uptake {
    pub fn from_patient(seed: u64) -> Uptake {
        let mut s = Stream::new(seed, "uptake");
        let mut suv = [0.0; 29];
        for t in Tissue::ALL {
            let (lo, hi) = match t {
                Tissue::Air | Tissue::Gas | Tissue::Airway | Tissue::Table | Tissue::TableFoam => (0.0, 0.0),
                Tissue::Skin => (0.6, 0.9),
                Tissue::Fat => (0.2, 0.4),
                Tissue::Muscle => (0.55, 0.85),
                Tissue::VisceralFat => (0.25, 0.45),
                Tissue::Bowel => (1.0, 1.8),
                Tissue::Lung => (0.3, 0.5),
                Tissue::Blood => (1.5, 2.0),
                Tissue::Myocardium => (2.0, 10.0),
                Tissue::Liver => (2.0, 2.5),
                Tissue::Spleen => (1.6, 2.1),
                Tissue::Kidney => (3.0, 8.0),
                Tissue::RenalPelvis => (8.0, 20.0),
                Tissue::Bladder => (10.0, 40.0),
                Tissue::BrainGray => (7.0, 9.5),
                Tissue::BrainWhite => (2.5, 3.5),
                Tissue::Csf => (0.3, 0.5),
                Tissue::SpinalCord => (1.0, 1.4),
                Tissue::CorticalBone => (0.3, 0.5),
                Tissue::RedMarrow => (1.0, 1.5),
                Tissue::YellowMarrow => (0.4, 0.6),
                Tissue::Cartilage => (0.5, 0.8),
                Tissue::Stomach => (1.4, 2.6),
                Tissue::Gland => (2.0, 4.0),
                Tissue::Breast => (0.8, 1.6),
            };
            suv[t as usize] = if matches!(t, Tissue::Myocardium | Tissue::Bladder) {
                // Wide physiological ranges: spread evenly over the scale.
                s.log_uniform(lo, hi)
            } else {
                s.uniform(lo, hi)
            };
        }
        Uptake { suv }
    }

    pub fn suv_of(&self, t: Tissue) -> f64 {
        self.suv[t as usize]
    }

    /// (tissue name, SUV) for every tissue, for truth.json.
    pub fn table(&self) -> Vec<(&'static str, f64)> {
        Tissue::ALL.iter().map(|&t| (t.name(), self.suv_of(t))).collect()
    }
}

/// Noiseless, unblurred SUV on the CT grid: tissue uptake (bowel modulated by its loop
/// pattern so it has hot and cold segments, as in real FDG studies) with lesions on top.
pub fn true_suv(
    uptake: &Uptake,
    model: &Model,
    grid: &Grid,
    labels: &[u8],
    lesion_ids: &[u8],
    lesions: &[Lesion],
) -> Vec<f32> {
    let lut: Vec<f32> = (0..=255u8).map(|v| uptake.suv_of(Tissue::from_u8(v)) as f32).collect();
    let bowel = Tissue::Bowel as u8;
    let threshold = 2.0 * model.patient.visceral_fat_fraction - 1.0;
    let sl = model.patient.lean_scale;
    let sv = model.patient.height_scale;
    let mut out = vec![0f32; grid.len()];
    let n = grid.slice_len();
    out.par_chunks_mut(n).zip(labels.par_chunks(n)).zip(lesion_ids.par_chunks(n)).enumerate().for_each(
        |(k, ((o, lab), les))| {
            let z = grid.z_mm(k);
            for (idx, ((o, &l), &id)) in o.iter_mut().zip(lab).zip(les).enumerate() {
                if id != 0 {
                    let (i, j) = (idx % grid.nx(), idx / grid.nx());
                    let p = [grid.x_mm(i), grid.y_mm(j), z];
                    *o = lesions[id as usize - 1].suv_at(p).unwrap_or(0.0) as f32;
                } else if l == bowel {
                    let (i, j) = (idx % grid.nx(), idx / grid.nx());
                    let f = model.bowel_pattern([grid.x_mm(i) / sl, grid.y_mm(j) / sl, -z / sv]);
                    *o = lut[l as usize] * (0.7 + 0.5 * (f - threshold).clamp(0.0, 2.4)) as f32;
                } else {
                    *o = lut[l as usize];
                }
            }
        },
    );
    out
}

/// Rigid patient motion between CT and PET: `x_pet = R (x_ct - c) + c + t`, R = Rz Ry Rx.
#[derive(Debug, Clone, Serialize)]
pub struct RigidTransform {
    pub centre_mm: [f64; 3],
    pub rotation: [[f64; 3]; 3],
    pub translation_mm: [f64; 3],
    #[serde(skip)]
    pub identity: bool,
}

impl RigidTransform {
    pub fn from_misalign(m: Option<Misalign>, ct: &Grid) -> RigidTransform {
        let Some(m) = m else {
            return RigidTransform {
                centre_mm: ct.centre_mm(),
                rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                translation_mm: [0.0; 3],
                identity: true,
            };
        };
        let (sx, cx) = m.rx_deg.to_radians().sin_cos();
        let (sy, cy) = m.ry_deg.to_radians().sin_cos();
        let (sz, cz) = m.rz_deg.to_radians().sin_cos();
        let rx = [[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]];
        let ry = [[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]];
        let rz = [[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]];
        RigidTransform {
            centre_mm: ct.centre_mm(),
            rotation: matmul(&rz, &matmul(&ry, &rx)),
            translation_mm: [m.tx_mm, m.ty_mm, m.tz_mm],
            identity: false,
        }
    }

    /// Where a CT-frame point appears in the PET frame.
    pub fn ct_to_pet(&self, p: [f64; 3]) -> [f64; 3] {
        let c = self.centre_mm;
        let d = [p[0] - c[0], p[1] - c[1], p[2] - c[2]];
        let r = &self.rotation;
        [0, 1, 2].map(|i| r[i][0] * d[0] + r[i][1] * d[1] + r[i][2] * d[2] + c[i] + self.translation_mm[i])
    }

    /// The CT-frame point seen at a PET-frame point.
    pub fn pet_to_ct(&self, p: [f64; 3]) -> [f64; 3] {
        let c = self.centre_mm;
        let t = self.translation_mm;
        let d = [p[0] - c[0] - t[0], p[1] - c[1] - t[1], p[2] - c[2] - t[2]];
        let r = &self.rotation;
        [0, 1, 2].map(|i| r[0][i] * d[0] + r[1][i] * d[1] + r[2][i] * d[2] + c[i])
    }

    /// 4x4 homogeneous matrix of `ct_to_pet` (row-major).
    pub fn matrix_ct_to_pet(&self) -> [[f64; 4]; 4] {
        let r = &self.rotation;
        let o = self.ct_to_pet([0.0; 3]);
        [
            [r[0][0], r[0][1], r[0][2], o[0]],
            [r[1][0], r[1][1], r[1][2], o[1]],
            [r[2][0], r[2][1], r[2][2], o[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }

    pub fn matrix_pet_to_ct(&self) -> [[f64; 4]; 4] {
        let r = &self.rotation;
        let o = self.pet_to_ct([0.0; 3]);
        [
            [r[0][0], r[1][0], r[2][0], o[0]],
            [r[0][1], r[1][1], r[2][1], o[1]],
            [r[0][2], r[1][2], r[2][2], o[2]],
            [0.0, 0.0, 0.0, 1.0],
        ]
    }
}

fn matmul(a: &[[f64; 3]; 3], b: &[[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut r = [[0.0; 3]; 3];
    for (i, row) in r.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    r
}

/// Noise level: variance of a voxel = `NOISE_GAIN * weight/75 kg * SUV + NOISE_FLOOR`
/// (about 10 % in the liver of a 75 kg patient, before partial-volume spread).
const NOISE_GAIN: f64 = 0.022;
const NOISE_FLOOR: f64 = 0.0004;

/// The reconstructed PET in SUV on the PET grid.
pub fn forward(
    seed: u64,
    weight_kg: f64,
    ct: &Grid,
    pet: &Grid,
    true_suv: &[f32],
    motion: &RigidTransform,
) -> Vec<f32> {
    let clean = blurred_pet(ct, pet, true_suv, motion);
    add_noise(seed, weight_kg, pet, clean)
}

/// PET-grid activity without noise: the CT-grid SUV averaged over each PET voxel (at
/// sub-voxel sample points), then the PSF.
pub fn blurred_pet(ct: &Grid, pet: &Grid, true_suv: &[f32], motion: &RigidTransform) -> Vec<f32> {
    let mut avg = vec![0f32; pet.len()];
    // Sample counts per axis: enough to see every CT voxel a PET voxel covers.
    let ns = [0, 1, 2].map(|a| {
        let r = (pet.spacing_mm[a] / ct.spacing_mm[a]).ceil() as usize;
        if a == 2 { (r + 1).clamp(1, 3) } else { r.clamp(1, 4) }
    });
    let offsets: [Vec<f64>; 3] =
        [0, 1, 2].map(|a| (0..ns[a]).map(|m| ((m as f64 + 0.5) / ns[a] as f64 - 0.5) * pet.spacing_mm[a]).collect());
    let inv_n = 1.0 / (ns[0] * ns[1] * ns[2]) as f32;
    let n = pet.slice_len();
    if motion.identity {
        // Axis-aligned: per-axis CT index tables, so the inner loop is a plain gather.
        let table = |a: usize, len: usize, pos: &dyn Fn(usize) -> f64| -> Vec<i64> {
            let mut t = Vec::with_capacity(len * ns[a]);
            for i in 0..len {
                for &o in &offsets[a] {
                    let v = ((pos(i) + o - ct.origin_mm[a]) / ct.spacing_mm[a]).round();
                    t.push(if v >= 0.0 && v < ct.dims[a] as f64 { v as i64 } else { -1 });
                }
            }
            t
        };
        let tx = table(0, pet.nx(), &|i| pet.x_mm(i));
        let ty = table(1, pet.ny(), &|j| pet.y_mm(j));
        let tz = table(2, pet.nz(), &|k| pet.z_mm(k));
        avg.par_chunks_mut(n).enumerate().for_each(|(k, slice)| {
            for &kz in &tz[k * ns[2]..(k + 1) * ns[2]] {
                if kz < 0 {
                    continue;
                }
                let ct_slice = &true_suv[kz as usize * ct.slice_len()..(kz as usize + 1) * ct.slice_len()];
                for j in 0..pet.ny() {
                    let row = &mut slice[j * pet.nx()..(j + 1) * pet.nx()];
                    for &jy in &ty[j * ns[1]..(j + 1) * ns[1]] {
                        if jy < 0 {
                            continue;
                        }
                        let ct_row = &ct_slice[jy as usize * ct.nx()..(jy as usize + 1) * ct.nx()];
                        for (i, out) in row.iter_mut().enumerate() {
                            let mut acc = 0f32;
                            for &ix in &tx[i * ns[0]..(i + 1) * ns[0]] {
                                if ix >= 0 {
                                    acc += ct_row[ix as usize];
                                }
                            }
                            *out += acc;
                        }
                    }
                }
            }
            for v in slice.iter_mut() {
                *v *= inv_n;
            }
        });
    } else {
        // Rigid motion: rows of the PET cut across CT slices, so sample a 2x2-averaged copy
        // (a quarter of the memory traffic) when the PET voxel is at least twice as coarse.
        let halved;
        let (src, ct): (&[f32], Grid) =
            if 2.0 * ct.spacing_mm[0] <= pet.spacing_mm[0] && 2.0 * ct.spacing_mm[1] <= pet.spacing_mm[1] {
                let (v, g) = halve_xy(true_suv, ct);
                halved = v;
                (&halved, g)
            } else {
                (true_suv, *ct)
            };
        let ns = [0, 1, 2].map(|a| {
            let r = (pet.spacing_mm[a] / ct.spacing_mm[a]).ceil() as usize;
            if a == 2 { (r + 1).clamp(1, 3) } else { r.clamp(1, 4) }
        });
        let offsets: [Vec<f64>; 3] = [0, 1, 2]
            .map(|a| (0..ns[a]).map(|m| ((m as f64 + 0.5) / ns[a] as f64 - 0.5) * pet.spacing_mm[a]).collect());
        let inv_n = 1.0 / (ns[0] * ns[1] * ns[2]) as f32;
        // CT voxel coordinates are affine in the PET position: walk each PET row with a
        // constant step instead of transforming every sample point.
        let to_vox = |p: [f64; 3]| ct.to_voxel(motion.pet_to_ct(p));
        let origin = to_vox([0.0; 3]);
        let col = to_vox([pet.spacing_mm[0], 0.0, 0.0]);
        let step = [0, 1, 2].map(|a| col[a] - origin[a]);
        let dims = ct.dims.map(|d| d as f64);
        avg.par_chunks_mut(n).enumerate().for_each(|(k, slice)| {
            for j in 0..pet.ny() {
                let row = &mut slice[j * pet.nx()..(j + 1) * pet.nx()];
                for &oz in &offsets[2] {
                    for &oy in &offsets[1] {
                        for &ox in &offsets[0] {
                            let base = to_vox([pet.x_mm(0) + ox, pet.y_mm(j) + oy, pet.z_mm(k) + oz]);
                            // Columns whose sample lands inside the CT grid (most of the
                            // wider PET field of view does not): solve per axis.
                            let (mut lo, mut hi) = (0.0f64, row.len() as f64 - 1.0);
                            for a in 0..3 {
                                let (b0, st) = (base[a], step[a]);
                                if st.abs() < 1e-12 {
                                    if !(b0 >= -0.5 && b0 < dims[a] - 0.5) {
                                        hi = -1.0;
                                    }
                                } else {
                                    let u = (-0.5 - b0) / st;
                                    let w = (dims[a] - 0.5 - b0) / st;
                                    lo = lo.max(u.min(w).floor());
                                    hi = hi.min(u.max(w).ceil());
                                }
                            }
                            if hi < lo {
                                continue;
                            }
                            for i in lo.max(0.0) as usize..=(hi as usize).min(row.len() - 1) {
                                let f = i as f64;
                                let v = [0, 1, 2].map(|a| (base[a] + f * step[a]).round());
                                if (0..3).all(|a| v[a] >= 0.0 && v[a] < dims[a]) {
                                    row[i] += src[ct.index(v[0] as usize, v[1] as usize, v[2] as usize)];
                                }
                            }
                        }
                    }
                }
                for v in row.iter_mut() {
                    *v *= inv_n;
                }
            }
        });
    }
    let sigma = pet.spacing_mm.map(|d| PSF_FWHM_MM * FWHM_TO_SIGMA / d);
    gaussian_blur(&avg, pet.dims, sigma)
}

/// 2x2 in-plane average of a volume (odd trailing rows/columns dropped) and its grid.
fn halve_xy(data: &[f32], g: &Grid) -> (Vec<f32>, Grid) {
    let (nx, ny) = (g.nx() / 2, g.ny() / 2);
    let half = Grid {
        dims: [nx, ny, g.nz()],
        spacing_mm: [2.0 * g.spacing_mm[0], 2.0 * g.spacing_mm[1], g.spacing_mm[2]],
        origin_mm: [g.origin_mm[0] + 0.5 * g.spacing_mm[0], g.origin_mm[1] + 0.5 * g.spacing_mm[1], g.origin_mm[2]],
    };
    let mut out = vec![0f32; half.len()];
    out.par_chunks_mut(nx * ny).zip(data.par_chunks(g.slice_len())).for_each(|(o, s)| {
        for j in 0..ny {
            let r0 = &s[2 * j * g.nx()..];
            let r1 = &s[(2 * j + 1) * g.nx()..];
            for i in 0..nx {
                o[j * nx + i] = 0.25 * (r0[2 * i] + r0[2 * i + 1] + r1[2 * i] + r1[2 * i + 1]);
            }
        }
    });
    (out, half)
}

fn add_noise(seed: u64, weight_kg: f64, pet: &Grid, clean: Vec<f32>) -> Vec<f32> {
    let n = pet.slice_len();
    let mut white = vec![0f32; pet.len()];
    white.par_chunks_mut(n).enumerate().for_each(|(k, s)| {
        Stream::indexed(seed, "pet-noise", k).fill_standard_normal(s);
    });
    // Reconstruction correlates noise over neighbouring voxels; keep unit variance after.
    let sigma_n = [0.7, 0.7, 0.6];
    let norm = 1.0 / sigma_n.iter().map(|&s| kernel(s).iter().map(|w| w * w).sum::<f32>()).product::<f32>().sqrt();
    let corr = gaussian_blur(&white, pet.dims, sigma_n);
    let gain = (NOISE_GAIN * weight_kg / 75.0) as f32;
    let floor = NOISE_FLOOR as f32;
    clean
        .par_iter()
        .zip(corr.par_iter())
        .map(|(&c, &e)| (c + (gain * c.max(0.0) + floor).sqrt() * e * norm).max(0.0))
        .collect()
}

/// Normalised discrete Gaussian kernel (radius 3 sigma, at least 1).
pub fn kernel(sigma: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return vec![1.0];
    }
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let w: Vec<f64> = (-r..=r).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = w.iter().sum();
    w.iter().map(|v| (v / s) as f32).collect()
}

/// Separable 3D Gaussian blur of a `(z, y, x)` volume; sigma in voxels per axis (x, y, z).
/// Outside the volume counts as zero (air), as for the scanner.
pub fn gaussian_blur(data: &[f32], dims: [usize; 3], sigma_vox: [f64; 3]) -> Vec<f32> {
    let [nx, ny, nz] = dims;
    let n = nx * ny;
    let kx = kernel(sigma_vox[0]);
    let ky = kernel(sigma_vox[1]);
    let kz = kernel(sigma_vox[2]);
    // x then y within each slice.
    let mut tmp = vec![0f32; data.len()];
    tmp.par_chunks_mut(n).zip(data.par_chunks(n)).for_each(|(out, inp)| {
        let mut rows = vec![0f32; n];
        let rx = (kx.len() / 2) as isize;
        for j in 0..ny {
            let src = &inp[j * nx..(j + 1) * nx];
            let dst = &mut rows[j * nx..(j + 1) * nx];
            for (m, &w) in kx.iter().enumerate() {
                let off = m as isize - rx;
                let (d0, s0, len) = if off >= 0 {
                    (0usize, off as usize, nx.saturating_sub(off as usize))
                } else {
                    ((-off) as usize, 0usize, nx.saturating_sub((-off) as usize))
                };
                for (d, s) in dst[d0..d0 + len].iter_mut().zip(&src[s0..s0 + len]) {
                    *d += w * s;
                }
            }
        }
        let ry = (ky.len() / 2) as isize;
        for j in 0..ny {
            let dst = &mut out[j * nx..(j + 1) * nx];
            for (m, &w) in ky.iter().enumerate() {
                let sj = j as isize + m as isize - ry;
                if sj < 0 || sj >= ny as isize {
                    continue;
                }
                let src = &rows[sj as usize * nx..(sj as usize + 1) * nx];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += w * s;
                }
            }
        }
    });
    // z across slices.
    let mut out = vec![0f32; data.len()];
    let rz = (kz.len() / 2) as isize;
    out.par_chunks_mut(n).enumerate().for_each(|(k, dst)| {
        for (m, &w) in kz.iter().enumerate() {
            let sk = k as isize + m as isize - rz;
            if sk < 0 || sk >= nz as isize {
                continue;
            }
            let src = &tmp[sk as usize * n..(sk as usize + 1) * n];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += w * s;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_preserves_mass_and_widens_a_point() {
        let dims = [21, 21, 21];
        let mut v = vec![0f32; 21 * 21 * 21];
        v[(10 * 21 + 10) * 21 + 10] = 1.0;
        let b = gaussian_blur(&v, dims, [2.0, 2.0, 1.0]);
        let sum: f32 = b.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        // Second moment along x equals sigma^2.
        let mut m2 = 0.0f64;
        for k in 0..21 {
            for j in 0..21 {
                for i in 0..21 {
                    m2 += b[(k * 21 + j) * 21 + i] as f64 * ((i as f64 - 10.0).powi(2));
                }
            }
        }
        assert!((m2 - 4.0).abs() < 0.05, "m2 {m2}");
    }

    #[test]
    fn rigid_transform_round_trips() {
        let g = Grid { dims: [10, 10, 10], spacing_mm: [1.0; 3], origin_mm: [0.0; 3] };
        let m = Misalign { tx_mm: 5.0, ty_mm: -3.0, tz_mm: 2.0, rx_deg: 3.0, ry_deg: -2.0, rz_deg: 4.0 };
        let t = RigidTransform::from_misalign(Some(m), &g);
        let p = [12.0, -7.0, 30.0];
        let q = t.pet_to_ct(t.ct_to_pet(p));
        assert!((0..3).all(|i| (p[i] - q[i]).abs() < 1e-9));
        let mm = t.matrix_ct_to_pet();
        let r = t.ct_to_pet(p);
        for i in 0..3 {
            let v = mm[i][0] * p[0] + mm[i][1] * p[1] + mm[i][2] * p[2] + mm[i][3];
            assert!((v - r[i]).abs() < 1e-9);
        }
        // Centre only translates.
        let c = t.ct_to_pet(g.centre_mm());
        assert!((c[0] - 4.5 - 5.0).abs() < 1e-9);
    }
}
