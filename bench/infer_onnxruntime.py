"""The Python peer of bench/infer.sh: the same three models on the same model-grid volumes with
onnxruntime and MONAI-style sliding-window inference (training/window.py: Gaussian importance,
sigma 0.125 of the patch; the manifests' patch size, fitted to the grid where a manifest says
patch_fits_grid, overlap, batch size and mirror axes), whole grid, no crop.

    infer_onnxruntime.py MODEL_GRID_DIR MODELS_DIR ROUNDS NODE_SECONDS
"""
import os
import sys
import time
import tomllib

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training"))
import data  # noqa: E402
import window  # noqa: E402

grid, models, rounds, node_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
read = lambda n: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(grid, n))).astype(np.float32)
suv, ct, body = read("suv.nii.gz"), read("ct_hu.nii.gz"), read("body.nii.gz")


def model(name):
    """The model as a function of a volume, windowed as its manifest says."""
    manifest = tomllib.load(open(os.path.join(models, f"{name}.model.toml"), "rb"))
    predict = window.onnx(window.session(os.path.join(models, manifest["file"]), 2))
    return manifest, lambda x, pad: window.infer(predict, x, patch=tuple(manifest["patch_size"]), pad_values=pad,
                                                 overlap=manifest["overlap"], batch_size=manifest["batch_size"],
                                                 multiple=manifest["size_multiple"],
                                                 fit=manifest.get("patch_fits_grid", False),
                                                 mirror=window.mirror_axes(manifest))


def normalised(spec, x):
    """One of a manifest's [[inputs]] applied to its source volume (or value)."""
    return ((np.clip(x, *spec["clip"]) - spec["offset"]) / spec["scale"]).astype(np.float32)


(manifest, ae), segs = model("anomaly-ae"), [model(n) for n in ("seg-high-sensitivity", "seg-high-specificity")]
cal = manifest["anomaly"]
threshold = cal["mask_threshold_suv"]
best = None
for r in range(rounds):
    t0 = time.time()
    x = data.anomaly_inputs(suv, ct, suv > threshold)
    out = ae(x, data.air_values(data.ANOMALY_CHANNELS))
    z = (data.normalise("suv", suv) - out[0]) * np.exp(-out[1] / 2)
    low, high = cal.get("prior_z_low", cal["z_low"]), cal.get("prior_z_high", cal["z_high"])
    prior = np.where(body > 0, np.clip((z - low) / (high - low), 0, 1), 0)
    prior = prior.astype(np.float32)
    sources = {"suv": suv, "ct_hu": ct, "anomaly_prior": prior}
    for seg_manifest, s in segs:
        inputs = seg_manifest["inputs"]
        x = np.stack([normalised(i, sources[i["source"]]) for i in inputs])
        s(x, np.array([normalised(i, data.AIR[i["source"]]) for i in inputs], dtype=np.float32))
    took = time.time() - t0
    best = took if best is None else min(best, took)
    print(f"round {r + 1}: Python onnxruntime + MONAI-style sliding window {took:.2f} s", flush=True)
print(f"grid {suv.shape[::-1]} (x, y, z): petct-node {node_s:.2f} s, Python {best:.2f} s, ratio {best / node_s:.2f}")
