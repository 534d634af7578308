"""Exports a trained checkpoint to ONNX (dynamic batch and spatial axes), checks that
onnxruntime reproduces torch on random and real patches, and writes the manifest
(docs/models.md) with the file's sha256.

    export_model.py --checkpoint var/training/anomaly.pt --name anomaly-ae \
        --out models/ [--calibration calibration.json] [--annotation-source ...]

The task (anomaly or segmentation) and the input channels come from the checkpoint.
"""
import argparse
import hashlib
import json
import os

import numpy as np
import onnxruntime as ort
import torch

import data
import nets
import window


def build(checkpoint):
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if ck["task"] == "anomaly":
        net = nets.DualBranchAE(base=ck["base"], norm=ck.get("norm", "instance"))
    else:
        net = nets.UNet(len(ck["channels"]), 1, base=ck["base"], norm=ck.get("norm", "instance"))
    net.load_state_dict(ck["state_dict"])
    net.eval()
    return net, ck


def toml_value(v):
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(float(v)) if isinstance(v, float) else str(v)


def patch(ck):
    """The patch it was trained on."""
    return ck["args"]["patch"]


def serve_patch(ck, window=None):
    """The window the node serves it on (z, y, x): under instance normalisation, which sees a
    window's statistics, `window` (--window) or else the trained patch; under batch normalisation
    the larger data.SERVE_PATCH, fitted to the grid where that is smaller (patch_fits_grid)."""
    return data.serve_window(ck.get("norm"), patch(ck), window)[0]


def manifest(ck, name, version, onnx_file, sha, description, extra):
    served, fits_grid = data.serve_window(ck.get("norm"), patch(ck), extra.get("window"))
    lines = [
        f"# Written by training/export_model.py; {description}",
        f"name = {toml_value(name)}",
        f"version = {toml_value(version)}",
        f"task = {toml_value(ck['task'])}",
        f"file = {toml_value(os.path.basename(onnx_file))}",
        f"sha256 = {toml_value(sha)}",
        'input_name = "input"',
        'output_name = "output"',
        f"spacing_mm = {toml_value([data.SPACING_MM] * 3)}",
        f"patch_size = {toml_value(list(served))}",
        f"size_multiple = {data.SIZE_MULTIPLE}",
        "overlap = 0.5",
        # Two windows of the trained patch per run; the serving window is big enough alone.
        f"batch_size = {1 if ck.get('norm') == 'batch' else 2}",
    ]
    if fits_grid:
        lines.append("patch_fits_grid = true")
    if ck["task"] == "segmentation" and extra.get("mirror_axes"):
        lines.append(f"mirror_axes = {toml_value(extra['mirror_axes'])}")
    if ck["task"] == "segmentation":
        if extra.get("draw"):
            lines.append(f"draw = {toml_value(extra['draw'])}")
        lines += [f"threshold = {toml_value(extra.get('threshold', 0.5))}",
                  f"annotation_source = {toml_value(extra['annotation_source'])}"]
    lines.append(f"description = {toml_value(description)}")
    for channel in ck["channels"]:
        source, (lo, hi), offset, scale = data.CHANNELS[channel]
        lines += ["", "[[inputs]]", f"source = {toml_value(source)}", f"clip = {toml_value([lo, hi])}",
                  f"offset = {toml_value(offset)}", f"scale = {toml_value(scale)}"]
    if ck["task"] == "anomaly":
        cal = extra["calibration"]
        lines += ["", "[anomaly]", f"mask_threshold_suv = {toml_value(ck['mask_threshold_suv'])}",
                  f"z_low = {toml_value(cal['z_low'])}", f"z_high = {toml_value(cal['z_high'])}",
                  *(f"{key} = {toml_value(cal[key])}" for key in ("prior_z_low", "prior_z_high") if key in cal),
                  f"score_volume_ml = {toml_value(cal['score_volume_ml'])}"]
    return "\n".join(lines) + "\n"


def export(net, ck, path):
    x = torch.zeros(1, len(ck["channels"]), *[patch(ck)] * 3)
    axes = {0: "batch", 2: "depth", 3: "height", 4: "width"}
    torch.onnx.export(net, (x,), path, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": axes, "output": axes}, opset_version=17, dynamo=False)


def parity(net, ck, path, rng, window=None):
    """Largest |onnxruntime - torch| over random inputs of several sizes, relative to the
    outputs' magnitude where that exceeds 1 (float32 sums err in proportion to their size)."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for shape in [(2,) + (patch(ck),) * 3, (1,) + tuple(serve_patch(ck, window)), (1, 40, 72, 56), (1, 16, 8, 24)]:
        x = rng.uniform(-1, 1.5, size=(shape[0], len(ck["channels"])) + shape[1:]).astype(np.float32)
        if ck["task"] == "anomaly":
            x[:, 1] = (x[:, 1] > 0.8).astype(np.float32)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        got = sess.run(["output"], {"input": x})[0]
        worst = max(worst, float(np.abs(got - want).max() / max(1.0, np.abs(want).max())))
    return worst


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--out", required=True, help="folder for NAME.onnx and NAME.model.toml")
    p.add_argument("--calibration", help="anomaly: JSON with z_low, z_high, score_volume_ml and optionally prior_z_low, prior_z_high (without it: ONNX only)")
    p.add_argument("--annotation-source", help="segmentation: the labels it was trained on")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--draw", choices=["threshold", "expected_volume", "ct_refined"],
                   help="segmentation: how the node draws the mask (docs/models.md); default the node's, threshold")
    p.add_argument("--description", default="")
    p.add_argument("--window", help="instance normalisation: the window the node serves it on, Z,Y,X (default the "
                   "trained patch; calibrate_anomaly.py --window must match)")
    p.add_argument("--mirror-axes", default="",
                   help="segmentation: axes along which the node also runs each window mirrored and averages "
                   "the logits, e.g. x (train_seg.py flips patches left-right); default none")
    args = p.parse_args()
    mirror = [a for a in args.mirror_axes.split(",") if a]
    if any(a not in window.AXES for a in mirror) or len(set(mirror)) != len(mirror):
        raise SystemExit(f"--mirror-axes {args.mirror_axes!r}: distinct axes of x, y, z, comma separated")
    net, ck = build(args.checkpoint)
    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, f"{args.name}.onnx")
    export(net, ck, onnx_path)
    served_window = data.window_arg(args.window)
    worst = parity(net, ck, onnx_path, np.random.default_rng(0), served_window)
    if worst > 1e-4:
        raise SystemExit(f"onnxruntime differs from torch by {worst:.2e} (> 1e-4, relative above 1)")
    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    extra = {"annotation_source": args.annotation_source, "threshold": args.threshold,
             "window": served_window, "mirror_axes": mirror, "draw": args.draw}
    if ck["task"] == "anomaly" and args.calibration:
        extra["calibration"] = json.load(open(args.calibration))
    if ck["task"] == "segmentation" or args.calibration:
        text = manifest(ck, args.name, args.version, onnx_path, sha, args.description, extra)
        with open(os.path.join(args.out, f"{args.name}.model.toml"), "w") as f:
            f.write(text)
    # Without a calibration an anomaly model gets its ONNX file only (calibrate_anomaly.py
    # needs it); the export is deterministic, so the second pass writes the same file.
    print(json.dumps({"onnx": onnx_path, "sha256": sha, "bytes": os.path.getsize(onnx_path),
                      "max_diff_onnxruntime_vs_torch": worst}))


if __name__ == "__main__":
    main()
