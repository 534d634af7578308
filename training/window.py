"""Sliding-window inference with Gaussian blending in the manner of MONAI's
`sliding_window_inference(mode="gaussian", sigma_scale=0.125, overlap=0.5)` and nnU-Net, on
onnxruntime (or any function of a batch): used to calibrate the anomaly detector, to validate
a segmentation net while it trains, and as the Python peer in the benchmark. Input [C, D, H, W]
normalised channels; output [K, D, H, W]."""
import math

import numpy as np
import onnxruntime as ort


def session(path, threads):
    """An onnxruntime CPU session with `threads` intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def onnx(session):
    """The session as a function of a batch [N, C, D, H, W], for `infer`."""
    name_in, name_out = session.get_inputs()[0].name, session.get_outputs()[0].name
    return lambda batch: session.run([name_out], {name_in: batch})[0]


def gaussian(patch, sigma_scale=0.125):
    """nnU-Net's weights, centred at patch // 2 as the node's are (docs/models.md)."""
    axes = []
    for n in patch:
        c, s = n // 2, n * sigma_scale
        axes.append(np.exp(-0.5 * ((np.arange(n) - c) / s) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = (g / g.max()).astype(np.float32)
    g[g == 0] = g[g > 0].min()
    return g


def starts(n, patch, step):
    if n <= patch:
        return [0]
    count = math.ceil((n - patch) / step) + 1
    actual = (n - patch) / (count - 1)
    return [int(round(actual * i)) for i in range(count)]


AXES = {"z": 0, "y": 1, "x": 2}


def mirror_axes(manifest):
    """A manifest's mirror_axes as window axes (0 = z, 1 = y, 2 = x)."""
    return tuple(sorted(AXES[a] for a in manifest.get("mirror_axes", [])))


def mirrored(predict, axes):
    """`predict` averaged over the batch mirrored along every combination of `axes` (window axes,
    0 = z), each output mirrored back: the node's test-time mirroring (manifest mirror_axes)."""
    if not axes:
        return predict
    flips = [tuple(2 + a for a, bit in zip(axes, format(m, f"0{len(axes)}b")) if bit == "1")
             for m in range(2 ** len(axes))]

    def run(batch):
        return sum(np.flip(predict(np.ascontiguousarray(np.flip(batch, f))), f) if f else predict(batch)
                   for f in flips) / len(flips)
    return run


def infer(predict, x, patch=(64, 64, 64), overlap=0.5, batch_size=2, pad_values=None, multiple=8, fit=False,
          mirror=()):
    """fit: `patch` is the largest window, and along an axis where the grid padded to `multiple`
    is smaller the window is that (the manifest's patch_fits_grid: nets without per-window
    statistics). mirror: window axes (0 = z) along which each window also runs mirrored."""
    predict = mirrored(predict, mirror)
    c, *shape = x.shape
    if fit:
        patch = [min(p, math.ceil(n / multiple) * multiple) for n, p in zip(shape, patch)]
    padded = [max(p, math.ceil(n / multiple) * multiple) for n, p in zip(shape, patch)]
    if pad_values is None:
        pad_values = np.zeros(c, dtype=np.float32)
    xp = np.empty((c, *padded), dtype=np.float32)
    for ch in range(c):
        xp[ch].fill(pad_values[ch])
    xp[:, : shape[0], : shape[1], : shape[2]] = x
    w = gaussian(patch)
    step = [max(1, int(p * (1 - overlap))) for p in patch]
    corners = [(z, y, xx) for z in starts(padded[0], patch[0], step[0])
               for y in starts(padded[1], patch[1], step[1]) for xx in starts(padded[2], patch[2], step[2])]
    acc, norm = None, np.zeros(padded, dtype=np.float32)
    for i in range(0, len(corners), batch_size):
        group = corners[i: i + batch_size]
        b = np.stack([xp[:, z: z + patch[0], y: y + patch[1], xx: xx + patch[2]] for z, y, xx in group])
        out = predict(b)
        if acc is None:
            acc = np.zeros((out.shape[1], *padded), dtype=np.float32)
        for o, (z, y, xx) in zip(out, group):
            acc[:, z: z + patch[0], y: y + patch[1], xx: xx + patch[2]] += o * w
            norm[z: z + patch[0], y: y + patch[1], xx: xx + patch[2]] += w
    return (acc / norm)[:, : shape[0], : shape[1], : shape[2]]
