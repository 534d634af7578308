//! Sliding-window inference with Gaussian blending, as nnU-Net does it: windows of the patch
//! size with step `patch × (1 − overlap)`, the last one flush with the end, each window's output
//! weighted by a Gaussian with sigma 1/8 of the patch, weighted outputs summed and divided by
//! the summed weights.
//!
//! The volume is padded (virtually: window buffers are filled with each channel's pad value
//! where they reach beyond the data) to at least the patch and to a multiple of
//! `size_multiple`; only the unpadded voxels are accumulated, so nothing is cropped afterwards.
//! Memory is the output accumulator plus one batch of windows in and out. Because the windows
//! form a grid and the Gaussian is separable, the summed weight at a voxel is the product of
//! three per-axis sums and needs no volume of its own.

use rayon::prelude::*;

use super::InferError;

/// What runs the network: `batch` holds `shape = [n, C, D, H, W]` values (contiguous, row
/// major); `out` receives `[n, K, D, H, W]` values (it is cleared first).
pub trait Predictor {
    fn predict(&mut self, batch: &[f32], shape: [usize; 5], out: &mut Vec<f32>) -> Result<(), InferError>;
}

impl<F> Predictor for F
where
    F: FnMut(&[f32], [usize; 5], &mut Vec<f32>) -> Result<(), InferError>,
{
    fn predict(&mut self, batch: &[f32], shape: [usize; 5], out: &mut Vec<f32>) -> Result<(), InferError> {
        self(batch, shape, out)
    }
}

/// Test-time mirroring (nnU-Net): each batch is also run mirrored along every non-empty
/// combination of `axes` (z, y, x), each output mirrored back, and the outputs averaged, so a
/// net trained with mirrored patches sees each window both ways. Costs 2^(mirrored axes) runs.
pub struct Mirrored<'a, P> {
    inner: &'a mut P,
    axes: [bool; 3],
    flipped: Vec<f32>,
    out: Vec<f32>,
}

impl<'a, P: Predictor> Mirrored<'a, P> {
    pub fn new(inner: &'a mut P, axes: [bool; 3]) -> Self {
        Self { inner, axes, flipped: Vec::new(), out: Vec::new() }
    }
}

impl<P: Predictor> Predictor for Mirrored<'_, P> {
    fn predict(&mut self, batch: &[f32], shape: [usize; 5], out: &mut Vec<f32>) -> Result<(), InferError> {
        self.inner.predict(batch, shape, out)?;
        let dims = [shape[2], shape[3], shape[4]];
        let mut runs = 1;
        for combination in 1..8usize {
            let flip: [bool; 3] = std::array::from_fn(|a| combination >> a & 1 == 1);
            if (0..3).any(|a| flip[a] && !self.axes[a]) {
                continue;
            }
            mirror(batch, dims, flip, &mut self.flipped);
            self.out.clear();
            self.inner.predict(&self.flipped, shape, &mut self.out)?;
            if self.out.len() != out.len() {
                return Err(InferError::Run(format!(
                    "the network returned {} values for a mirrored batch, {} for the batch itself",
                    self.out.len(),
                    out.len()
                )));
            }
            mirror(&self.out, dims, flip, &mut self.flipped);
            out.par_iter_mut().zip(self.flipped.par_iter()).for_each(|(o, &f)| *o += f);
            runs += 1;
        }
        if runs > 1 {
            let scale = 1.0 / runs as f32;
            out.par_iter_mut().for_each(|o| *o *= scale);
        }
        Ok(())
    }
}

/// `src`, volumes of `dims` (z, y, x) one after another, mirrored along the axes of `flip` into
/// `dst` (an involution).
fn mirror(src: &[f32], [d, h, w]: [usize; 3], flip: [bool; 3], dst: &mut Vec<f32>) {
    dst.resize(src.len(), 0.0);
    let plane = h * w;
    dst.par_chunks_mut(plane).enumerate().for_each(|(vz, to)| {
        let (v, z) = (vz / d, vz % d);
        let from = &src[(v * d + if flip[0] { d - 1 - z } else { z }) * plane..][..plane];
        for (y, row) in to.chunks_exact_mut(w).enumerate() {
            let source = &from[if flip[1] { h - 1 - y } else { y } * w..][..w];
            if flip[2] {
                row.iter_mut().zip(source.iter().rev()).for_each(|(t, &f)| *t = f);
            } else {
                row.copy_from_slice(source);
            }
        }
    });
}

/// The window parameters of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    /// z, y, x.
    pub patch: [usize; 3],
    pub size_multiple: usize,
    /// In [0, 1).
    pub overlap: f64,
    pub batch_size: usize,
    /// Output channels `K`.
    pub out_channels: usize,
    /// `patch` is the largest window: along an axis where the padded grid is smaller, the window
    /// is the padded grid (a net without per-window statistics; docs/models.md).
    pub fits_grid: bool,
}

impl WindowSpec {
    /// The window (z, y, x) over a volume of `dims`.
    pub fn window(&self, dims: [usize; 3]) -> [usize; 3] {
        std::array::from_fn(|a| {
            if self.fits_grid { self.patch[a].min(padded_size(dims[a], 1, self.size_multiple)) } else { self.patch[a] }
        })
    }
}

/// A normalised multi-channel volume: `[C, D, H, W]` contiguous, `(z, y, x)` per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub data: Vec<f32>,
    pub channels: usize,
    /// D, H, W (z, y, x).
    pub dims: [usize; 3],
    /// Per channel: the value of padding (the channel's normalised air).
    pub pad: Vec<f32>,
}

impl Tensor {
    pub fn voxels(&self) -> usize {
        self.dims.iter().product()
    }
}

/// The window starts along one axis of `size` voxels (nnU-Net `compute_steps_for_sliding_window`):
/// as few windows as keep the step at most `patch × step_fraction`, spread evenly, the first at
/// 0 and the last flush with the end. `size >= patch`.
pub fn window_starts(size: usize, patch: usize, step_fraction: f64) -> Vec<usize> {
    debug_assert!(size >= patch && patch > 0);
    // A step under one voxel (overlap near 1) would only repeat windows.
    let target = (patch as f64 * step_fraction).max(1.0);
    let span = (size - patch) as f64;
    let steps = (span / target).ceil() as usize + 1;
    if steps == 1 {
        return vec![0];
    }
    let actual = span / (steps - 1) as f64;
    (0..steps).map(|i| (actual * i as f64).round() as usize).collect()
}

/// nnU-Net's importance weights along one axis: `exp(−(i − c)² / 2σ²)` with `c = patch / 2`
/// and `σ = patch / 8`, 1 at the centre. (nnU-Net filters a delta with a Gaussian truncated at
/// 4σ and normalises to a maximum of 1; with σ = patch/8 every voxel of the patch lies within
/// 4σ of the centre, so this is the same map; zeros, which nnU-Net replaces by the smallest
/// non-zero weight, cannot occur.)
pub fn gaussian_weights(patch: usize) -> Vec<f32> {
    let centre = (patch / 2) as f64;
    let sigma = patch as f64 / 8.0;
    let w: Vec<f64> = (0..patch).map(|i| (-(i as f64 - centre).powi(2) / (2.0 * sigma * sigma)).exp()).collect();
    let smallest = w.iter().copied().filter(|&v| v > 0.0).fold(1.0, f64::min);
    w.into_iter().map(|v| (if v > 0.0 { v } else { smallest }) as f32).collect()
}

/// The extent windows are placed over: at least the patch, rounded up to `size_multiple`.
pub fn padded_size(size: usize, patch: usize, size_multiple: usize) -> usize {
    size.div_ceil(size_multiple).saturating_mul(size_multiple).max(patch)
}

/// Runs `predictor` over `input` window by window and blends the outputs: `[K, D, H, W]`.
pub fn sliding_window(
    predictor: &mut impl Predictor,
    input: &Tensor,
    spec: &WindowSpec,
) -> Result<Vec<f32>, InferError> {
    let dims = input.dims;
    let channels = input.channels;
    let voxels = input.voxels();
    if voxels == 0 || channels == 0 || input.data.len() != channels * voxels || input.pad.len() != channels {
        return Err(InferError::Input(format!(
            "input of {} values, {} pad values, is not {channels} channels of {dims:?} voxels",
            input.data.len(),
            input.pad.len()
        )));
    }
    let patch = spec.window(dims);
    let k = spec.out_channels;
    let starts: [Vec<usize>; 3] = std::array::from_fn(|a| {
        window_starts(padded_size(dims[a], patch[a], spec.size_multiple), patch[a], 1.0 - spec.overlap)
    });
    let gauss: [Vec<f32>; 3] = std::array::from_fn(|a| gaussian_weights(patch[a]));
    // Summed weight per axis over the real voxels; the weight of a voxel is their product.
    let total: [Vec<f32>; 3] = std::array::from_fn(|a| {
        let mut t = vec![0f32; dims[a]];
        for &s in &starts[a] {
            for (i, w) in gauss[a].iter().enumerate() {
                if let Some(v) = t.get_mut(s + i) {
                    *v += w;
                }
            }
        }
        t
    });
    let mut windows: Vec<[usize; 3]> = Vec::with_capacity(starts.iter().map(Vec::len).product());
    for &z in &starts[0] {
        for &y in &starts[1] {
            windows.extend(starts[2].iter().map(|&x| [z, y, x]));
        }
    }

    let window_in = channels * patch.iter().product::<usize>();
    let window_out = k * patch.iter().product::<usize>();
    let mut acc = vec![0f32; k * voxels];
    let mut batch = Vec::with_capacity(spec.batch_size * window_in);
    let mut out = Vec::with_capacity(spec.batch_size * window_out);
    for group in windows.chunks(spec.batch_size.max(1)) {
        batch.resize(group.len() * window_in, 0.0);
        batch.par_chunks_mut(window_in).zip(group).for_each(|(buf, &start)| copy_in(input, start, patch, buf));
        let shape = [group.len(), channels, patch[0], patch[1], patch[2]];
        out.clear();
        predictor.predict(&batch, shape, &mut out)?;
        if out.len() != group.len() * window_out {
            return Err(InferError::Run(format!(
                "the network returned {} values for {} windows of {k} x {patch:?}",
                out.len(),
                group.len()
            )));
        }
        accumulate(&mut acc, &out, group, dims, patch, &gauss);
    }
    let [_, ny, nx] = dims;
    acc.par_chunks_mut(ny * nx).enumerate().for_each(|(kz, slice)| {
        let wz = total[0][kz % dims[0]];
        for (row, &wy) in slice.chunks_exact_mut(nx).zip(&total[1]) {
            for (v, &wx) in row.iter_mut().zip(&total[2]) {
                *v /= wz * wy * wx;
            }
        }
    });
    Ok(acc)
}

/// Fills one window's `[C, pd, ph, pw]` buffer from the volume, rows at a time; outside the
/// volume each channel's pad value.
fn copy_in(input: &Tensor, [z0, y0, x0]: [usize; 3], patch: [usize; 3], buf: &mut [f32]) {
    let [nz, ny, nx] = input.dims;
    let [pz, py, px] = patch;
    let voxels = nz * ny * nx;
    let inside = nx.saturating_sub(x0).min(px);
    for (c, window) in buf.chunks_exact_mut(pz * py * px).enumerate() {
        let pad = input.pad[c];
        let channel = &input.data[c * voxels..(c + 1) * voxels];
        for (dz, plane) in window.chunks_exact_mut(py * px).enumerate() {
            for (dy, row) in plane.chunks_exact_mut(px).enumerate() {
                let (z, y) = (z0 + dz, y0 + dy);
                if z < nz && y < ny {
                    let from = (z * ny + y) * nx + x0;
                    row[..inside].copy_from_slice(&channel[from..from + inside]);
                    row[inside..].fill(pad);
                } else {
                    row.fill(pad);
                }
            }
        }
    }
}

/// Adds the Gaussian-weighted window outputs to the accumulator, one `(k, z)` slice per task so
/// that overlapping windows never write the same slice at once.
fn accumulate(
    acc: &mut [f32],
    out: &[f32],
    group: &[[usize; 3]],
    [nz, ny, nx]: [usize; 3],
    [pz, py, px]: [usize; 3],
    gauss: &[Vec<f32>; 3],
) {
    let k = acc.len() / (nz * ny * nx);
    acc.par_chunks_mut(ny * nx).enumerate().for_each(|(kz, slice)| {
        let (c, z) = (kz / nz, kz % nz);
        for (w, &[z0, y0, x0]) in group.iter().enumerate() {
            if z < z0 || z >= z0 + pz {
                continue;
            }
            let dz = z - z0;
            let plane = &out[((w * k + c) * pz + dz) * py * px..][..py * px];
            let inside = nx.saturating_sub(x0).min(px);
            for dy in 0..py.min(ny.saturating_sub(y0)) {
                let wzy = gauss[0][dz] * gauss[1][dy];
                let from = &plane[dy * px..dy * px + inside];
                let to = &mut slice[(y0 + dy) * nx + x0..][..inside];
                for ((t, &f), &wx) in to.iter_mut().zip(from).zip(&gauss[2]) {
                    *t += wzy * wx * f;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_starts_follow_nnunet() {
        // nnU-Net's own example: 110 voxels, patch 64, step 0.5 -> 0, 23, 46.
        assert_eq!(window_starts(110, 64, 0.5), [0, 23, 46]);
        assert_eq!(window_starts(64, 64, 0.5), [0]);
        assert_eq!(window_starts(65, 64, 0.5), [0, 1]);
        assert_eq!(window_starts(128, 64, 0.5), [0, 32, 64]);
        assert_eq!(window_starts(40, 16, 0.5), [0, 8, 16, 24]);
        assert_eq!(window_starts(40, 16, 1.0), [0, 12, 24]);
        assert_eq!(window_starts(20, 16, 0.0001), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn gaussian_is_one_at_the_centre_with_sigma_an_eighth_of_the_patch() {
        let g = gaussian_weights(16);
        assert_eq!(g[8], 1.0);
        // sigma = 2: one sigma from the centre exp(-1/2), the edge exp(-64/8).
        assert!((g[10] - (-0.5f32).exp()).abs() < 1e-7);
        assert!((g[6] - g[10]).abs() < 1e-7);
        assert!((g[0] - (-8f32).exp()).abs() < 1e-9);
        assert!(g.iter().all(|&v| v > 0.0));
        assert_eq!(gaussian_weights(1), [1.0]);
    }

    #[test]
    fn a_window_fits_the_padded_grid_only_when_asked() {
        let mut s = spec([64, 96, 128], 8, 1, 1);
        assert_eq!(s.window([225, 89, 123]), [64, 96, 128]);
        s.fits_grid = true;
        assert_eq!(s.window([225, 89, 123]), [64, 96, 128]);
        s.patch = [256, 128, 160];
        assert_eq!(s.window([225, 89, 123]), [232, 96, 128]);
        assert_eq!(s.window([300, 140, 170]), [256, 128, 160]);
    }

    #[test]
    fn padding_reaches_the_patch_and_the_size_multiple() {
        assert_eq!(padded_size(37, 16, 8), 40);
        assert_eq!(padded_size(5, 16, 8), 16);
        assert_eq!(padded_size(48, 16, 16), 48);
        assert_eq!(padded_size(17, 24, 8), 24);
    }

    /// A volume of `channels` channels whose values encode their position.
    fn positional(channels: usize, dims: [usize; 3]) -> Tensor {
        let n: usize = dims.iter().product();
        let data = (0..channels * n).map(|i| (i % n) as f32 + 1000.0 * (i / n) as f32).collect();
        Tensor { data, channels, dims, pad: (0..channels).map(|c| -1.0 - c as f32).collect() }
    }

    fn spec(patch: [usize; 3], size_multiple: usize, batch_size: usize, out_channels: usize) -> WindowSpec {
        WindowSpec { patch, size_multiple, overlap: 0.5, batch_size, out_channels, fits_grid: false }
    }

    /// A pointwise "network": out[k] = sum over c of (k + 1) * in[c] + k.
    fn pointwise(k: usize) -> impl FnMut(&[f32], [usize; 5], &mut Vec<f32>) -> Result<(), InferError> {
        move |batch, [n, c, d, h, w], out| {
            let v = d * h * w;
            for b in 0..n {
                for o in 0..k {
                    for i in 0..v {
                        let s: f32 = (0..c).map(|ci| batch[(b * c + ci) * v + i]).sum();
                        out.push((o + 1) as f32 * s + o as f32);
                    }
                }
            }
            Ok(())
        }
    }

    #[test]
    fn a_pointwise_network_is_reproduced_exactly_over_many_windows() {
        let input = positional(2, [37, 50, 29]);
        let mut calls = Vec::new();
        let mut net = pointwise(2);
        let mut counting = |b: &[f32], shape: [usize; 5], out: &mut Vec<f32>| {
            calls.push(shape);
            net(b, shape, out)
        };
        let out = sliding_window(&mut counting, &input, &spec([16, 16, 16], 8, 3, 2)).unwrap();
        let n = input.voxels();
        for i in (0..n).step_by(7) {
            let s = input.data[i] + input.data[n + i];
            for o in 0..2 {
                let want = (o + 1) as f32 * s + o as f32;
                let got = out[o * n + i];
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "voxel {i} channel {o}: {got} vs {want}");
            }
        }
        // Padded to 40 x 56 x 32: 4 x 6 x 3 windows, in batches of 3.
        assert_eq!(calls.len(), 24);
        assert!(calls.iter().all(|s| *s == [3, 2, 16, 16, 16]));
    }

    #[test]
    fn windows_see_the_volume_in_place_and_the_pad_value_beyond_it() {
        let input = positional(2, [5, 7, 9]);
        let mut seen = Vec::new();
        let mut check = |b: &[f32], shape: [usize; 5], out: &mut Vec<f32>| {
            seen.push(shape);
            let [_, _, d, h, w] = shape;
            for z in 0..d {
                for y in 0..h {
                    for x in 0..w {
                        for c in 0..2 {
                            let got = b[((c * d + z) * h + y) * w + x];
                            let want = if z < 5 && y < 7 && x < 9 {
                                ((z * 7 + y) * 9 + x) as f32 + 1000.0 * c as f32
                            } else {
                                -1.0 - c as f32
                            };
                            assert_eq!(got, want, "({c}, {z}, {y}, {x})");
                        }
                    }
                }
            }
            out.extend_from_slice(&b[..d * h * w]);
            Ok(())
        };
        // Smaller than the patch: one padded window, cropped back.
        let out = sliding_window(&mut check, &input, &spec([8, 8, 16], 8, 2, 1)).unwrap();
        assert_eq!(seen, [[1, 2, 8, 8, 16]]);
        assert_eq!(out.len(), 5 * 7 * 9);
        for (got, want) in out.iter().zip(&input.data) {
            assert!((got - want).abs() < 1e-3);
        }
    }

    /// The same blending, written the plain way: a padded volume, every window's output
    /// weighted by the 3-D Gaussian of nnU-Net, summed and divided.
    fn naive(predictor: &mut impl Predictor, input: &Tensor, spec: &WindowSpec) -> Vec<f32> {
        let [nz, ny, nx] = input.dims;
        let [pz, py, px] = spec.patch;
        let padded: [usize; 3] = std::array::from_fn(|a| padded_size(input.dims[a], spec.patch[a], spec.size_multiple));
        let [qz, qy, qx] = padded;
        let c_n = input.channels;
        let mut vol = vec![0f32; c_n * qz * qy * qx];
        for c in 0..c_n {
            for z in 0..qz {
                for y in 0..qy {
                    for x in 0..qx {
                        vol[((c * qz + z) * qy + y) * qx + x] = if z < nz && y < ny && x < nx {
                            input.data[((c * nz + z) * ny + y) * nx + x]
                        } else {
                            input.pad[c]
                        };
                    }
                }
            }
        }
        let g3 = |z: usize, y: usize, x: usize| {
            let e = |i: usize, p: usize| {
                let s = p as f64 / 8.0;
                (-((i as f64 - (p / 2) as f64).powi(2)) / (2.0 * s * s)).exp()
            };
            e(z, pz) * e(y, py) * e(x, px)
        };
        let k = spec.out_channels;
        let mut sum = vec![0f64; k * qz * qy * qx];
        let mut weight = vec![0f64; qz * qy * qx];
        let step = 1.0 - spec.overlap;
        for &z0 in &window_starts(qz, pz, step) {
            for &y0 in &window_starts(qy, py, step) {
                for &x0 in &window_starts(qx, px, step) {
                    let mut win = Vec::new();
                    for c in 0..c_n {
                        for z in 0..pz {
                            for y in 0..py {
                                for x in 0..px {
                                    win.push(vol[((c * qz + z0 + z) * qy + y0 + y) * qx + x0 + x]);
                                }
                            }
                        }
                    }
                    let mut out = Vec::new();
                    predictor.predict(&win, [1, c_n, pz, py, px], &mut out).unwrap();
                    for z in 0..pz {
                        for y in 0..py {
                            for x in 0..px {
                                let g = g3(z, y, x);
                                let at = ((z0 + z) * qy + y0 + y) * qx + x0 + x;
                                weight[at] += g;
                                for o in 0..k {
                                    sum[o * qz * qy * qx + at] += g * out[((o * pz + z) * py + y) * px + x] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        let mut result = Vec::new();
        for o in 0..k {
            for z in 0..nz {
                for y in 0..ny {
                    for x in 0..nx {
                        let at = (z * qy + y) * qx + x;
                        result.push((sum[o * qz * qy * qx + at] / weight[at]) as f32);
                    }
                }
            }
        }
        result
    }

    /// A "network" whose output depends on where a voxel lies in its window, so that every
    /// window's placement and weight shows in the blend: out[k] = (k + 1) * in[0] + (z + 2y + 3x)
    /// / 10, (z, y, x) within the window.
    fn where_in_window(k: usize) -> impl FnMut(&[f32], [usize; 5], &mut Vec<f32>) -> Result<(), InferError> {
        move |b, [n, c, d, h, w], out| {
            let v = d * h * w;
            for bi in 0..n {
                let first = &b[bi * c * v..][..v];
                for o in 0..k {
                    out.extend(first.iter().enumerate().map(|(i, &x0)| {
                        let (z, y, x) = (i / (h * w), i / w % h, i % w);
                        (o + 1) as f32 * x0 + (z + 2 * y + 3 * x) as f32 / 10.0
                    }));
                }
            }
            Ok(())
        }
    }

    #[test]
    fn blending_matches_the_plain_computation_at_window_borders() {
        let mut input = positional(2, [21, 11, 26]);
        // Values of order 1, so the tolerance means something.
        input.data.iter_mut().for_each(|v| *v = (*v * 0.37).sin());
        for (patch, multiple, overlap) in [([8, 8, 8], 8, 0.5), ([16, 8, 8], 4, 0.25), ([8, 16, 8], 8, 0.0)] {
            let spec = WindowSpec {
                patch,
                size_multiple: multiple,
                overlap,
                batch_size: 4,
                out_channels: 2,
                fits_grid: false,
            };
            let got = sliding_window(&mut where_in_window(2), &input, &spec).unwrap();
            let want = naive(&mut where_in_window(2), &input, &spec);
            assert_eq!(got.len(), want.len());
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{patch:?} overlap {overlap}: off by {worst}");
        }
    }

    #[test]
    fn mirroring_reverses_the_named_axes_and_undoes_itself() {
        // Two volumes of 2 x 2 x 3: value = 100 v + 10 z + 3 y + x.
        let src: Vec<f32> =
            (0..24).map(|i| (100 * (i / 12) + 10 * (i / 6 % 2) + 3 * (i / 3 % 2) + i % 3) as f32).collect();
        let mut out = Vec::new();
        mirror(&src, [2, 2, 3], [false, false, true], &mut out);
        assert_eq!(out[..6], [2.0, 1.0, 0.0, 5.0, 4.0, 3.0]);
        mirror(&src, [2, 2, 3], [true, true, false], &mut out);
        assert_eq!(out[..3], [13.0, 14.0, 15.0]);
        assert_eq!(out[12..15], [113.0, 114.0, 115.0]);
        let mut back = Vec::new();
        mirror(&out, [2, 2, 3], [true, true, false], &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn a_mirrored_predictor_averages_the_net_over_the_mirrored_windows() {
        // A net that is not mirror-symmetric, so that every pass shows in the average.
        let shape = [2, 2, 4, 6, 8];
        let n: usize = shape.iter().product();
        let batch: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let dims = [4, 6, 8];
        let run = |b: &[f32]| {
            let mut out = Vec::new();
            where_in_window(2)(b, shape, &mut out).unwrap();
            out
        };
        let plain = run(&batch);
        for axes in [[false, false, true], [true, false, true]] {
            let mut net = where_in_window(2);
            let mut got = Vec::new();
            Mirrored::new(&mut net, axes).predict(&batch, shape, &mut got).unwrap();
            let mut want = plain.clone();
            let combinations: Vec<[bool; 3]> = if axes[0] {
                vec![[false, false, true], [true, false, false], [true, false, true]]
            } else {
                vec![[false, false, true]]
            };
            for flip in &combinations {
                let (mut flipped, mut back) = (Vec::new(), Vec::new());
                mirror(&batch, dims, *flip, &mut flipped);
                mirror(&run(&flipped), dims, *flip, &mut back);
                want.iter_mut().zip(&back).for_each(|(w, b)| *w += b);
            }
            want.iter_mut().for_each(|w| *w /= (combinations.len() + 1) as f32);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{axes:?}: off by {worst}");
            assert!(got.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 0.1), "{axes:?}: mirroring changed nothing");
        }
        let mut net = where_in_window(2);
        let mut unmirrored = Vec::new();
        Mirrored::new(&mut net, [false; 3]).predict(&batch, shape, &mut unmirrored).unwrap();
        assert_eq!(unmirrored, plain);
    }

    #[test]
    fn a_wrong_output_size_or_input_shape_is_an_error() {
        let input = positional(1, [4, 4, 4]);
        let mut short = |_: &[f32], _: [usize; 5], out: &mut Vec<f32>| {
            out.push(0.0);
            Ok(())
        };
        let e = sliding_window(&mut short, &input, &spec([8, 8, 8], 8, 1, 1)).unwrap_err();
        assert!(matches!(e, InferError::Run(_)), "{e}");
        let mut bad = input.clone();
        bad.pad.push(0.0);
        assert!(matches!(
            sliding_window(&mut pointwise(1), &bad, &spec([8, 8, 8], 8, 1, 1)),
            Err(InferError::Input(_))
        ));
    }
}
