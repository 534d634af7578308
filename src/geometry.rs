//! Putting one volume on another's grid, in patient coordinates: trilinear for intensities,
//! nearest neighbour for labels; anything outside the moving volume's field of view gets the
//! `outside` value. An optional rigid transform maps target (CT) points to moving (PET) points.

pub mod model_grid;
pub mod registration;

use rayon::prelude::*;

use crate::volume::{Geometry, Volume};

/// `x_moving = rotation * x_target + translation` (patient mm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rigid {
    pub rotation: [[f64; 3]; 3],
    pub translation_mm: [f64; 3],
}

impl Rigid {
    pub const IDENTITY: Rigid =
        Rigid { rotation: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], translation_mm: [0.0; 3] };

    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        std::array::from_fn(|r| (0..3).map(|c| self.rotation[r][c] * p[c]).sum::<f64>() + self.translation_mm[r])
    }
}

/// The affine map from target voxel index to moving continuous voxel index:
/// `m = origin + i*step[0] + j*step[1] + k*step[2]`.
struct IndexMap {
    origin: [f64; 3],
    step: [[f64; 3]; 3],
}

fn index_map(moving: &Geometry, target: &Geometry, transform: &Rigid) -> IndexMap {
    let to_moving = |ijk: [f64; 3]| moving.patient_to_index(transform.apply(target.index_to_patient(ijk)));
    let origin = to_moving([0.0; 3]);
    let step = std::array::from_fn(|axis| {
        let mut unit = [0.0; 3];
        unit[axis] = 1.0;
        let p = to_moving(unit);
        [p[0] - origin[0], p[1] - origin[1], p[2] - origin[2]]
    });
    IndexMap { origin, step }
}

/// Trilinear resampling of `moving` onto `target`. A point is inside the field of view when it
/// lies within half a voxel of the outermost voxel centres (the voxels' extent, as ITK has it);
/// between the last centre and that edge the edge value is used.
pub fn resample_linear(moving: &Volume<f32>, target: &Geometry, transform: &Rigid, outside: f32) -> Volume<f32> {
    resample_linear_map(moving, target, transform, outside, |v| v)
}

/// [`resample_linear`] with each resampled value (or `outside`) passed through `emit` as it is
/// written, so that e.g. a thresholded mask needs no float volume of its own.
pub fn resample_linear_map<O: Copy + Default + Send>(
    moving: &Volume<f32>,
    target: &Geometry,
    transform: &Rigid,
    outside: f32,
    emit: impl Fn(f32) -> O + Sync,
) -> Volume<O> {
    let map = index_map(moving.geometry(), target, transform);
    let [nx, ny, _] = target.dims;
    let mut out = vec![O::default(); target.voxel_count().unwrap_or(0)];
    let separable = (0..3).all(|a| (0..3).all(|c| a == c || map.step[a][c].abs() < 1e-9));
    if separable {
        resample_separable(moving, &map, target.dims, outside, &emit, &mut out);
    } else {
        resample_general(moving, &map, nx, ny, outside, &emit, &mut out);
    }
    // The target geometry sized `out`, so the lengths agree.
    Volume::new(target.clone(), out).expect("resampled data matches the target geometry")
}

/// Where one output coordinate falls along one moving axis: the two neighbours and the weight
/// of the upper one, or `None` outside the field of view.
fn axis_taps(origin: f64, step: f64, count: usize, len: usize) -> Vec<Option<(usize, usize, f32)>> {
    (0..count)
        .map(|i| {
            let x = origin + i as f64 * step;
            if x < -0.5 || x > len as f64 - 0.5 {
                return None;
            }
            let x = x.clamp(0.0, (len - 1) as f64);
            let x0 = x.floor() as usize;
            Some((x0, (x0 + 1).min(len - 1), (x - x0 as f64) as f32))
        })
        .collect()
}

/// Grids whose axes are parallel (the usual PET/CT case): the interpolation separates into
/// per-axis taps computed once, and each output row blends four input rows.
fn resample_separable<O: Send>(
    moving: &Volume<f32>,
    map: &IndexMap,
    dims: [usize; 3],
    outside: f32,
    emit: &(impl Fn(f32) -> O + Sync),
    out: &mut [O],
) {
    let [mx, my, mz] = moving.geometry().dims;
    let [nx, ny, nz] = dims;
    let xs = axis_taps(map.origin[0], map.step[0][0], nx, mx);
    let ys = axis_taps(map.origin[1], map.step[1][1], ny, my);
    let zs = axis_taps(map.origin[2], map.step[2][2], nz, mz);
    let src = moving.data();
    let row_of = |y: usize, z: usize| &src[(z * my + y) * mx..(z * my + y + 1) * mx];
    out.par_chunks_mut(nx * ny).zip(zs.par_iter()).for_each(|(slice, z)| {
        for (row, y) in slice.chunks_exact_mut(nx).zip(&ys) {
            let (Some((z0, z1, fz)), Some((y0, y1, fy))) = (z, y) else {
                row.iter_mut().for_each(|v| *v = emit(outside));
                continue;
            };
            let (r00, r10, r01, r11) = (row_of(*y0, *z0), row_of(*y1, *z0), row_of(*y0, *z1), row_of(*y1, *z1));
            let (w00, w10, w01, w11) = ((1.0 - fy) * (1.0 - fz), fy * (1.0 - fz), (1.0 - fy) * fz, fy * fz);
            for (v, x) in row.iter_mut().zip(&xs) {
                *v = emit(match x {
                    Some((x0, x1, fx)) => {
                        let at = |i: usize| w00 * r00[i] + w10 * r10[i] + w01 * r01[i] + w11 * r11[i];
                        let (a, b) = (at(*x0), at(*x1));
                        a + (b - a) * fx
                    }
                    None => outside,
                });
            }
        }
    });
}

/// Any orientation and any rigid transform: every output voxel maps on its own.
fn resample_general<O: Send>(
    moving: &Volume<f32>,
    map: &IndexMap,
    nx: usize,
    ny: usize,
    outside: f32,
    emit: &(impl Fn(f32) -> O + Sync),
    out: &mut [O],
) {
    let [mx, my, mz] = moving.geometry().dims;
    let src = moving.data();
    let limit = |n: usize| (-0.5, n as f64 - 0.5);
    let (lx, ly, lz) = (limit(mx), limit(my), limit(mz));
    out.par_chunks_mut(nx * ny).enumerate().for_each(|(k, slice)| {
        for (j, row) in slice.chunks_exact_mut(nx).enumerate() {
            let base: [f64; 3] =
                std::array::from_fn(|c| map.origin[c] + j as f64 * map.step[1][c] + k as f64 * map.step[2][c]);
            for (i, v) in row.iter_mut().enumerate() {
                let x = base[0] + i as f64 * map.step[0][0];
                let y = base[1] + i as f64 * map.step[0][1];
                let z = base[2] + i as f64 * map.step[0][2];
                if x < lx.0 || x > lx.1 || y < ly.0 || y > ly.1 || z < lz.0 || z > lz.1 {
                    *v = emit(outside);
                    continue;
                }
                let (x, y, z) =
                    (x.clamp(0.0, (mx - 1) as f64), y.clamp(0.0, (my - 1) as f64), z.clamp(0.0, (mz - 1) as f64));
                *v = emit(interpolate(src, [mx, my, mz], [x, y, z]));
            }
        }
    });
}

/// Gaussian blur (`sigma_mm` per axis, x y z) and decimation by `factor` per axis: the blur is
/// evaluated only at the kept voxels (every `factor`-th, from the first), whose centres keep
/// their positions; edge voxels are repeated. An axis with a sigma under 0.3 voxel and factor 1
/// is left alone.
pub(crate) fn blur_and_decimate(v: &Volume<f32>, sigma_mm: [f64; 3], factor: [usize; 3]) -> Volume<f32> {
    blur_and_decimate_map(v, |x| x, sigma_mm, factor)
}

/// [`blur_and_decimate`] of `value(v)`: the first pass reads `v` itself, so a mask or an integer
/// volume needs no float copy of its own.
pub(crate) fn blur_and_decimate_map<T: Copy + Sync>(
    v: &Volume<T>,
    value: impl Fn(T) -> f32 + Sync + Copy,
    sigma_mm: [f64; 3],
    factor: [usize; 3],
) -> Volume<f32> {
    let mut g = v.geometry().clone();
    let mut data: Option<Vec<f32>> = None;
    for axis in 0..3 {
        let spacing = g.spacing_mm[axis];
        let factor = factor[axis].clamp(1, g.dims[axis].max(1));
        let sigma_vox = sigma_mm[axis] / spacing;
        if sigma_vox < 0.3 && factor == 1 {
            continue;
        }
        let kernel = gaussian_kernel(sigma_vox);
        let (out, n_out) = match &data {
            Some(d) => blur_axis(d, |x| x, g.dims, axis, &kernel, factor),
            None => blur_axis(v.data(), value, g.dims, axis, &kernel, factor),
        };
        data = Some(out);
        g.dims[axis] = n_out;
        g.spacing_mm[axis] = spacing * factor as f64;
    }
    let data = data.unwrap_or_else(|| v.data().par_iter().map(|&x| value(x)).collect());
    // The dims were updated with the data, so the lengths agree.
    Volume::new(g, data).expect("decimated data matches its geometry")
}

fn gaussian_kernel(sigma_vox: f64) -> Vec<f32> {
    if sigma_vox < 0.3 {
        return vec![1.0];
    }
    let r = (3.0 * sigma_vox).ceil() as i64;
    let w: Vec<f64> = (-r..=r).map(|i| (-0.5 * (i as f64 / sigma_vox).powi(2)).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| (v / sum) as f32).collect()
}

/// Blurs `value(data)` along `axis` with `kernel` (edge voxels repeated) and keeps every
/// `factor`-th voxel. Along y and z whole rows or slices are weighted and summed, so the inner
/// loops run over contiguous memory; every output sums its taps in kernel order.
fn blur_axis<T: Copy + Sync>(
    data: &[T],
    value: impl Fn(T) -> f32 + Sync + Copy,
    dims: [usize; 3],
    axis: usize,
    kernel: &[f32],
    factor: usize,
) -> (Vec<f32>, usize) {
    let n = dims[axis];
    let n_out = n.div_ceil(factor);
    let mut out_dims = dims;
    out_dims[axis] = n_out;
    let [nx, ny, _] = dims;
    let r = kernel.len() / 2;
    // The input index of tap `t` for output `o`, edge voxels repeated.
    let tap = move |o: usize, t: usize| (o * factor + t).saturating_sub(r).min(n - 1);
    let [ox, oy, _] = out_dims;
    let mut out = vec![0f32; out_dims.iter().product()];
    let add = |to: &mut [f32], from: &[T], w: f32| {
        for (o, &x) in to.iter_mut().zip(from) {
            *o += w * value(x);
        }
    };
    match axis {
        0 => out.par_chunks_mut(ox * oy).enumerate().for_each(|(k, slice)| {
            for (j, row) in slice.chunks_exact_mut(ox).enumerate() {
                let src = &data[(k * ny + j) * nx..][..nx];
                for (i, v) in row.iter_mut().enumerate() {
                    let centre = i * factor;
                    *v = if centre >= r && centre + r < n {
                        // Inside: the taps are one contiguous run.
                        kernel.iter().zip(&src[centre - r..=centre + r]).fold(0.0, |acc, (w, &x)| acc + w * value(x))
                    } else {
                        kernel.iter().enumerate().fold(0.0, |acc, (t, w)| acc + w * value(src[tap(i, t)]))
                    };
                }
            }
        }),
        1 => out.par_chunks_mut(ox * oy).enumerate().for_each(|(k, slice)| {
            for (j, row) in slice.chunks_exact_mut(ox).enumerate() {
                for (t, &w) in kernel.iter().enumerate() {
                    add(row, &data[(k * ny + tap(j, t)) * nx..][..nx], w);
                }
            }
        }),
        _ => out.par_chunks_mut(ox * oy).enumerate().for_each(|(k, slice)| {
            for (t, &w) in kernel.iter().enumerate() {
                add(slice, &data[tap(k, t) * nx * ny..][..nx * ny], w);
            }
        }),
    }
    (out, n_out)
}

/// Trilinear value at a continuous index that lies within the voxel centres' hull
/// (`0 <= x <= nx - 1`, and so on); `data` is `(z, y, x)` with `dims` `[nx, ny, nz]`.
pub(crate) fn interpolate(data: &[f32], dims: [usize; 3], [x, y, z]: [f64; 3]) -> f32 {
    let [mx, my, mz] = dims;
    let (x0, y0, z0) = (x.floor() as usize, y.floor() as usize, z.floor() as usize);
    let (x1, y1, z1) = ((x0 + 1).min(mx - 1), (y0 + 1).min(my - 1), (z0 + 1).min(mz - 1));
    let (fx, fy, fz) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32, (z - z0 as f64) as f32);
    let at = |xi: usize, yi: usize, zi: usize| data[(zi * my + yi) * mx + xi];
    let c00 = at(x0, y0, z0) + (at(x1, y0, z0) - at(x0, y0, z0)) * fx;
    let c10 = at(x0, y1, z0) + (at(x1, y1, z0) - at(x0, y1, z0)) * fx;
    let c01 = at(x0, y0, z1) + (at(x1, y0, z1) - at(x0, y0, z1)) * fx;
    let c11 = at(x0, y1, z1) + (at(x1, y1, z1) - at(x0, y1, z1)) * fx;
    let c0 = c00 + (c10 - c00) * fy;
    let c1 = c01 + (c11 - c01) * fy;
    c0 + (c1 - c0) * fz
}

/// Nearest-neighbour resampling for label volumes; outside the field of view is `outside`.
pub fn resample_nearest<T: Copy + Send + Sync>(
    moving: &Volume<T>,
    target: &Geometry,
    transform: &Rigid,
    outside: T,
) -> Volume<T> {
    let map = index_map(moving.geometry(), target, transform);
    let [mx, my, mz] = moving.geometry().dims;
    let src = moving.data();
    let [nx, ny, _] = target.dims;
    let mut out = vec![outside; target.voxel_count().unwrap_or(0)];
    out.par_chunks_mut(nx * ny).enumerate().for_each(|(k, slice)| {
        for (j, row) in slice.chunks_exact_mut(nx).enumerate() {
            for (i, v) in row.iter_mut().enumerate() {
                let p: [f64; 3] = std::array::from_fn(|c| {
                    map.origin[c] + i as f64 * map.step[0][c] + j as f64 * map.step[1][c] + k as f64 * map.step[2][c]
                });
                let (x, y, z) = (p[0].round(), p[1].round(), p[2].round());
                if x >= 0.0 && y >= 0.0 && z >= 0.0 && (x as usize) < mx && (y as usize) < my && (z as usize) < mz {
                    *v = src[(z as usize * my + y as usize) * mx + x as usize];
                }
            }
        }
    });
    Volume::new(target.clone(), out).expect("resampled data matches the target geometry")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(dims: [usize; 3], spacing: [f64; 3], origin: [f64; 3]) -> Geometry {
        Geometry {
            dims,
            spacing_mm: spacing,
            origin_mm: origin,
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            frame_of_reference_uid: None,
        }
    }

    /// A linear function of patient position is reproduced exactly by trilinear interpolation.
    fn linear_volume(g: &Geometry) -> Volume<f32> {
        let mut data = Vec::new();
        for k in 0..g.dims[2] {
            for j in 0..g.dims[1] {
                for i in 0..g.dims[0] {
                    let p = g.index_to_patient([i as f64, j as f64, k as f64]);
                    data.push((0.5 * p[0] - 0.25 * p[1] + 0.125 * p[2] + 10.0) as f32);
                }
            }
        }
        Volume::new(g.clone(), data).unwrap()
    }

    #[test]
    fn linear_fields_are_reproduced_on_any_grid() {
        let moving = linear_volume(&geometry([20, 18, 16], [4.0, 4.0, 3.0], [-40.0, -36.0, -24.0]));
        let mut target = geometry([30, 25, 20], [1.9, 2.1, 1.7], [-20.0, -15.0, -10.0]);
        // An oblique target grid: 30 degrees about z.
        let (s, c) = 30f64.to_radians().sin_cos();
        target.direction = [[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]];
        let out = resample_linear(&moving, &target, &Rigid::IDENTITY, -1.0);
        let expected = linear_volume(&target);
        let mut inside = 0;
        let mut n = 0;
        for k in 0..20 {
            for j in 0..25 {
                for i in 0..30 {
                    let m = moving.geometry().patient_to_index(target.index_to_patient([i as f64, j as f64, k as f64]));
                    let (a, b) = (out.data()[n], expected.data()[n]);
                    n += 1;
                    let within = |x: f64, d: usize| (0.0..=(d - 1) as f64).contains(&x);
                    let in_fov = |x: f64, d: usize| (-0.5..=d as f64 - 0.5).contains(&x);
                    if (0..3).all(|c| within(m[c], moving.geometry().dims[c])) {
                        inside += 1;
                        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
                    } else if !(0..3).all(|c| in_fov(m[c], moving.geometry().dims[c])) {
                        assert_eq!(a, -1.0);
                    }
                }
            }
        }
        assert!(inside > 5000, "{inside} voxels inside");
    }

    #[test]
    fn outside_the_field_of_view_gets_the_outside_value() {
        let moving = linear_volume(&geometry([4, 4, 4], [1.0; 3], [0.0; 3]));
        let target = geometry([3, 1, 1], [2.0; 3], [-1.0, 0.0, 0.0]);
        let out = resample_linear(&moving, &target, &Rigid::IDENTITY, 0.0);
        // x = -1 (outside), 1 (inside), 3 (last centre, inside).
        assert_eq!(out.data()[0], 0.0);
        assert!((out.data()[1] - 10.5).abs() < 1e-6);
        assert!((out.data()[2] - 11.5).abs() < 1e-6);
    }

    #[test]
    fn a_rigid_shift_moves_the_content() {
        let g = geometry([10, 10, 10], [1.0; 3], [0.0; 3]);
        let moving = linear_volume(&g);
        let shift = Rigid { translation_mm: [2.0, 0.0, 0.0], ..Rigid::IDENTITY };
        let out = resample_linear(&moving, &g, &shift, 0.0);
        // Target x samples moving at x + 2: the field rises by 0.5 * 2.
        let idx = 5 * 100 + 5 * 10 + 3;
        assert!((out.data()[idx] - (moving.data()[idx] + 1.0)).abs() < 1e-5);
    }

    #[test]
    fn the_separable_path_equals_the_general_one() {
        let moving = linear_volume(&geometry([13, 11, 9], [3.0, 3.5, 4.0], [-20.0, -18.0, -15.0]));
        let target = geometry([40, 37, 29], [1.1, 0.9, 1.3], [-25.0, -20.0, -18.0]);
        // A non-linear field, so that the two paths' arithmetic really has to agree.
        let mut moving = moving;
        for (i, v) in moving.data_mut().iter_mut().enumerate() {
            *v = ((i * 7919) % 1000) as f32 / 10.0;
        }
        let map = index_map(moving.geometry(), &target, &Rigid::IDENTITY);
        let mut general = vec![0f32; 40 * 37 * 29];
        resample_general(&moving, &map, 40, 37, -3.0, &|v| v, &mut general);
        let separable = resample_linear(&moving, &target, &Rigid::IDENTITY, -3.0);
        for (a, b) in separable.data().iter().zip(&general) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        assert!(general.iter().filter(|v| **v == -3.0).count() > 100, "the field of view edge is exercised");
    }

    #[test]
    fn labels_are_resampled_by_nearest_neighbour() {
        let moving = Volume::new(geometry([2, 1, 1], [10.0; 3], [0.0; 3]), vec![3u8, 7u8]).unwrap();
        let target = geometry([5, 1, 1], [4.0; 3], [-2.0, 0.0, 0.0]);
        let out = resample_nearest(&moving, &target, &Rigid::IDENTITY, 0);
        // x = -2, 2, 6, 10, 14 -> index -0.2, 0.2, 0.6, 1.0, 1.4 -> 0 (round), 3, 7, 7, 7
        assert_eq!(out.data(), &[3, 3, 7, 7, 7]);
    }
}
