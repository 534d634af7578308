//! The `ct_blob` channel (docs/models.md): how much the CT around each voxel of a model grid is a
//! bright ball rather than a tube, a sheet or an edge. The lesions the PET leaves faint and the CT
//! shows are nodes among bowel loops and vessels and nodules beside the heart, as dense as their
//! neighbours and told apart from them only by shape (training/README.md, items 72 and 74).
//!
//! For each scale σ the Hessian of the CT (HU clipped to [`HU_WINDOW`], so that bone and air do
//! not swamp soft tissue against fat or lung) smoothed by a Gaussian of σ, scale-normalised (σ²·H,
//! in HU); where all three eigenvalues are negative, minus the largest of them: the curvature of
//! the flattest direction, near 0 along a tube and across a sheet. The channel is the maximum over
//! the scales, within the body's bounding box, 0 elsewhere and where the body is not.
//! `training/blob_channel.py` is the same filter in scipy (`gaussian_filter`, mode `nearest`,
//! truncated at 4 σ, one axis after another from the slowest), and `tests/infer.rs` holds the two
//! to each other.

use rayon::prelude::*;

use super::stage::{crop, crop_to};
use crate::quantify::Mask;
use crate::volume::Volume;

/// The scales, mm: the nodes and nodules the nets miss are 8-30 mm across.
pub const SIGMAS_MM: [f64; 3] = [4.0, 6.0, 8.0];
/// HU window the filter sees.
pub const HU_WINDOW: [f32; 2] = [-200.0, 200.0];
/// Kernels end at this many σ (scipy's default).
const TRUNCATE: f64 = 4.0;

/// The channel on the grid of `ct_hu` (HU), with `body` on the same grid.
pub fn ct_blob(ct_hu: &Volume<f32>, body: &Mask) -> Volume<f32> {
    let full = ct_hu.geometry();
    let mut out = vec![0f32; ct_hu.data().len()];
    if body.data().iter().any(|&b| b != 0) {
        let sub = crop_to(body, 0.0);
        let (ct, inside) = (crop(ct_hu, &sub), crop(body, &sub));
        let blob = blob_in_box(&ct, &inside);
        let first = full.patient_to_index(sub.origin_mm).map(|v| v.round() as usize);
        let ([nx, ny, _], [sx, sy, _]) = (full.dims, sub.dims);
        out.par_chunks_mut(nx * ny).enumerate().for_each(|(k, plane)| {
            let Some(k) = k.checked_sub(first[2]).filter(|&k| k < sub.dims[2]) else { return };
            for j in 0..sy {
                let row = &mut plane[(first[1] + j) * nx + first[0]..][..sx];
                row.copy_from_slice(&blob[(k * sy + j) * sx..][..sx]);
            }
        });
    }
    // `out` has the voxel count of `ct_hu`'s geometry.
    Volume::new(full.clone(), out).expect("the channel matches the CT's grid")
}

/// The channel over a whole (cropped) grid, z-y-x order.
fn blob_in_box(ct: &Volume<f32>, body: &Mask) -> Vec<f32> {
    let g = ct.geometry();
    let dims = g.dims;
    let a: Vec<f32> = ct.data().par_iter().map(|v| v.clamp(HU_WINDOW[0], HU_WINDOW[1])).collect();
    let mut best = vec![0f32; a.len()];
    for sigma in SIGMAS_MM {
        // Axes in scipy's order (z, y, x), each with its Gaussian of order 0, 1 or 2.
        let kernels: [[Vec<f64>; 3]; 3] =
            std::array::from_fn(|axis| std::array::from_fn(|order| kernel(sigma / g.spacing_mm[axis], order)));
        let along = |src: &[f32], axis: usize, order: usize| filter(src, dims, axis, &kernels[axis][order]);
        let z: [Vec<f32>; 3] = std::array::from_fn(|o| along(&a, 2, o));
        let (y0z0, y1z0, y2z0) = (along(&z[0], 1, 0), along(&z[0], 1, 1), along(&z[0], 1, 2));
        let (y0z1, y1z1, y0z2) = (along(&z[1], 1, 0), along(&z[1], 1, 1), along(&z[2], 1, 0));
        // The Hessian in z y x order: zz, yy, xx, zy, zx, yx.
        let h = [
            along(&y0z2, 0, 0),
            along(&y2z0, 0, 0),
            along(&y0z0, 0, 2),
            along(&y1z1, 0, 0),
            along(&y0z1, 0, 1),
            along(&y1z0, 0, 1),
        ];
        let s = [g.spacing_mm[2], g.spacing_mm[1], g.spacing_mm[0]];
        // Per voxel² -> per mm², times σ²: HU.
        let norm: [[f64; 3]; 3] = std::array::from_fn(|i| std::array::from_fn(|j| sigma * sigma / (s[i] * s[j])));
        best.par_iter_mut().zip(body.data().par_iter()).enumerate().for_each(|(v, (b, &inside))| {
            let [zz, yy, xx, zy, zx, yx] = h.each_ref().map(|c| c[v]);
            if inside == 0 || zz + yy + xx >= 0.0 {
                return; // a ball has a negative trace
            }
            let hessian = [[zz, zy, zx], [zy, yy, yx], [zx, yx, xx]];
            let m = std::array::from_fn(|i| std::array::from_fn(|j| f64::from(hessian[i][j]) * norm[i][j]));
            *b = b.max((-largest_eigenvalue(m)).max(0.0) as f32);
        });
    }
    best
}

/// scipy.ndimage's Gaussian of `sigma` voxels and derivative `order` (0-2), as convolution weights
/// for offsets `-r..=r`.
fn kernel(sigma: f64, order: usize) -> Vec<f64> {
    let r = (TRUNCATE * sigma + 0.5) as i64;
    let s2 = sigma * sigma;
    let phi: Vec<f64> = (-r..=r).map(|x| (-0.5 / s2 * (x * x) as f64).exp()).collect();
    let sum: f64 = phi.iter().sum();
    (-r..=r)
        .zip(phi)
        .map(|(x, p)| {
            let (x, p) = (x as f64, p / sum);
            match order {
                0 => p,
                1 => -x / s2 * p,
                _ => (x * x - s2) / (s2 * s2) * p,
            }
        })
        .collect()
}

/// `src` (x fastest, `dims` x y z) convolved along `axis` (0 x, 1 y, 2 z) with `weights` (offsets
/// `-r..=r`), the edge value repeated beyond the edge; sums in f64.
fn filter(src: &[f32], dims: [usize; 3], axis: usize, weights: &[f64]) -> Vec<f32> {
    let r = (weights.len() / 2) as isize;
    let n = dims[axis] as isize;
    let inner: usize = dims[..axis].iter().product();
    let mut out = vec![0f32; src.len()];
    let at = |p: isize, x: isize| (p - x).clamp(0, n - 1) as usize;
    if inner == 1 {
        out.par_chunks_mut(dims[0]).zip(src.par_chunks(dims[0])).for_each(|(row, line)| {
            for (p, o) in row.iter_mut().enumerate() {
                let sum: f64 = (-r..=r).map(|x| weights[(x + r) as usize] * f64::from(line[at(p as isize, x)])).sum();
                *o = sum as f32;
            }
        });
        return out;
    }
    out.par_chunks_mut(inner).enumerate().for_each(|(c, o)| {
        let (outer, p) = (c / n as usize, (c % n as usize) as isize);
        let mut acc = vec![0f64; inner];
        for x in -r..=r {
            let w = weights[(x + r) as usize];
            let from = &src[(outer * n as usize + at(p, x)) * inner..][..inner];
            acc.iter_mut().zip(from).for_each(|(a, &v)| *a += w * f64::from(v));
        }
        o.iter_mut().zip(acc).for_each(|(o, a)| *o = a as f32);
    });
    out
}

/// The largest eigenvalue of a symmetric 3×3 matrix (trigonometric solution of the cubic).
fn largest_eigenvalue(m: [[f64; 3]; 3]) -> f64 {
    let p1 = m[0][1] * m[0][1] + m[0][2] * m[0][2] + m[1][2] * m[1][2];
    let q = (m[0][0] + m[1][1] + m[2][2]) / 3.0;
    let p2 = (m[0][0] - q).powi(2) + (m[1][1] - q).powi(2) + (m[2][2] - q).powi(2) + 2.0 * p1;
    if p2 == 0.0 {
        return q;
    }
    let p = (p2 / 6.0).sqrt();
    let b = |i: usize, j: usize| (m[i][j] - if i == j { q } else { 0.0 }) / p;
    let det = b(0, 0) * (b(1, 1) * b(2, 2) - b(1, 2) * b(2, 1)) - b(0, 1) * (b(1, 0) * b(2, 2) - b(1, 2) * b(2, 0))
        + b(0, 2) * (b(1, 0) * b(2, 1) - b(1, 1) * b(2, 0));
    q + 2.0 * p * ((det / 2.0).clamp(-1.0, 1.0).acos() / 3.0).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    fn grid(n: usize) -> Geometry {
        Geometry {
            dims: [n, n, n],
            spacing_mm: [4.0; 3],
            origin_mm: [0.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    /// A 40 HU shape in fat (-90 HU) on a 4 mm grid of 32³, the body everywhere but the border.
    fn scene(inside_shape: impl Fn([f64; 3]) -> bool) -> (Volume<f32>, Mask) {
        let n = 32;
        let mut ct = Vec::with_capacity(n * n * n);
        let mut body = Vec::with_capacity(n * n * n);
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    let mm = [i, j, k].map(|v| (v as f64 - 15.5) * 4.0);
                    ct.push(if inside_shape(mm) { 40.0 } else { -90.0 });
                    body.push(u8::from([i, j, k].iter().all(|&v| (1..n - 1).contains(&v))));
                }
            }
        }
        (Volume::new(grid(n), ct).unwrap(), Volume::new(grid(n), body).unwrap())
    }

    fn peak(v: &Volume<f32>) -> f32 {
        v.data().iter().copied().fold(0.0, f32::max)
    }

    #[test]
    fn a_ball_stands_out_where_a_tube_and_a_sheet_of_its_width_do_not() {
        let r = 10.0;
        let ball = peak(&ct_blob(&scene(|[x, y, z]| x * x + y * y + z * z <= r * r).0, &scene(|_| false).1));
        let tube = peak(&ct_blob(&scene(|[x, y, _]| x * x + y * y <= r * r).0, &scene(|_| false).1));
        let sheet = peak(&ct_blob(&scene(|[x, _, _]| x.abs() <= r).0, &scene(|_| false).1));
        assert!(ball > 20.0, "ball {ball}");
        assert!(tube < 0.15 * ball && sheet < 0.05 * ball, "ball {ball}, tube {tube}, sheet {sheet}");
    }

    #[test]
    fn the_channel_is_zero_outside_the_body_and_on_a_uniform_ct() {
        let (ct, body) = scene(|[x, y, z]| x * x + y * y + z * z <= 100.0);
        let blob = ct_blob(&ct, &body);
        assert!(blob.data().iter().zip(body.data()).all(|(&v, &b)| b != 0 || v == 0.0));
        let (flat, _) = scene(|_| false);
        assert_eq!(peak(&ct_blob(&flat, &body)), 0.0);
        let nobody = Volume::new(grid(32), vec![0u8; 32 * 32 * 32]).unwrap();
        assert_eq!(peak(&ct_blob(&ct, &nobody)), 0.0);
    }

    #[test]
    fn the_kernels_are_scipys() {
        // scipy.ndimage._gaussian_kernel1d(1.5, order, 6), the weights of offsets 0 and 2 (its
        // order-1 kernel is the correlation's, reversed: the sign of an odd kernel flips).
        let k = [kernel(1.5, 0), kernel(1.5, 1), kernel(1.5, 2)];
        assert_eq!(k[0].len(), 13);
        assert!((k[0][6] - 0.265_964_257_161_070_9).abs() < 1e-12, "{}", k[0][6]);
        assert!((k[1][8] - -0.097_192_155_515_138_2).abs() < 1e-12, "{}", k[1][8]);
        assert!((k[2][8] - 0.037_796_949_366_998_2).abs() < 1e-12, "{}", k[2][8]);
    }

    #[test]
    fn the_largest_eigenvalue_of_known_matrices() {
        assert_eq!(largest_eigenvalue([[-3.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -2.0]]), -1.0);
        // [[2, 1, 0], [1, 2, 0], [0, 0, -5]]: eigenvalues 3, 1, -5.
        assert!((largest_eigenvalue([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, -5.0]]) - 3.0).abs() < 1e-12);
    }
}
