"""Tiny ONNX models for tests/infer.rs and tests/jobs.rs, built with onnx.helper (no training, no PyTorch).

Usage: make_test_models.py OUT_DIR
Writes, each with input [N, C, D, H, W] and output [N, K, D, H, W] float32 (N, D, H, W dynamic):
- pointwise.onnx: C=3, K=2, a 1x1x1 convolution with bias (the same at every voxel).
- conv3.onnx: C=2, K=1, a 3x3x3 convolution with zero padding 1 and bias; weight
  w[0, c, dz, dy, dx] = ((c * 27 + dz * 9 + dy * 3 + dx) % 7 - 3) / 10, bias 0.1 (tests/infer.rs
  computes the same convolution).
- anomaly.onnx: C=3, K=2, mean 0.1 and log-variance ln 4 everywhere (weights 0).
- seg_prior.onnx: C=3, K=1, logit = 4 * channel 2 - 2 (the anomaly prior, normalised).
- renamed.onnx: pointwise.onnx's layout with C=3, K=1, input `x`, output `y`.
- four_channels.onnx: C=4, K=1, input `input`, output `output`.
- pipeline/: three models with their manifests for the node's whole infer stage (tests/jobs.rs),
  hand-set, not trained: `fixture-anomaly` (reconstructs 1 SUV with sigma 1 SUV, so the anomaly
  probability rises from SUV 3 to 7), `fixture-sensitive` (foreground above SUV 2.5) and
  `fixture-prior` (foreground where the anomaly prior is above 0.5, i.e. above SUV 5).
"""
import hashlib
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

POINTWISE_W = [[0.5, -0.25, 1.0], [0.1, 0.2, -0.3]]
POINTWISE_B = [0.25, -0.5]


def model(path, weight, bias, pads, input_name="input", output_name="output"):
    weight = np.asarray(weight, dtype=np.float32)
    k, c = weight.shape[:2]
    x = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", c, "D", "H", "W"])
    y = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", k, "D", "H", "W"])
    w = numpy_helper.from_array(weight, "weight")
    b = numpy_helper.from_array(np.asarray(bias, dtype=np.float32), "bias")
    conv = helper.make_node("Conv", [input_name, "weight", "bias"], [output_name], pads=[pads] * 6)
    graph = helper.make_graph([conv], os.path.basename(path), [x], [y], initializer=[w, b])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="petct-node tests")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, path)


def pointwise(weights):
    """A 1x1x1 kernel from a K x C matrix."""
    return np.asarray(weights, dtype=np.float32)[:, :, None, None, None]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    model(f"{out}/pointwise.onnx", pointwise(POINTWISE_W), POINTWISE_B, 0)
    conv = np.zeros((1, 2, 3, 3, 3), dtype=np.float32)
    for c in range(2):
        for dz in range(3):
            for dy in range(3):
                for dx in range(3):
                    conv[0, c, dz, dy, dx] = ((c * 27 + dz * 9 + dy * 3 + dx) % 7 - 3) / 10
    model(f"{out}/conv3.onnx", conv, [0.1], 1)
    model(f"{out}/anomaly.onnx", pointwise(np.zeros((2, 3))), [0.1, math.log(4.0)], 0)
    model(f"{out}/seg_prior.onnx", pointwise([[0.0, 0.0, 4.0]]), [-2.0], 0)
    model(f"{out}/renamed.onnx", pointwise([[1.0, 1.0, 1.0]]), [0.0], 0, "x", "y")
    model(f"{out}/four_channels.onnx", pointwise([[1.0, 1.0, 1.0, 1.0]]), [0.0], 0)
    pipeline(os.path.join(out, "pipeline"))


SUV = '[[inputs]]\nsource = "suv"\nclip = [0.0, 20.0]\noffset = 0.0\nscale = 10.0\n'
SUV_MASKED = '[[inputs]]\nsource = "suv_masked"\nclip = [0.0, 20.0]\noffset = 0.0\nscale = 10.0\n'
SUV_MASK = '[[inputs]]\nsource = "suv_mask"\nclip = [0.0, 1.0]\noffset = 0.0\nscale = 1.0\n'
CT = '[[inputs]]\nsource = "ct_hu"\nclip = [-1000.0, 1000.0]\noffset = 0.0\nscale = 1000.0\n'
PRIOR = '[[inputs]]\nsource = "anomaly_prior"\nclip = [0.0, 1.0]\noffset = 0.0\nscale = 1.0\n'


def pipeline(out):
    """Pointwise models on a 4 mm grid with manifests (sha256 of the file written here)."""
    os.makedirs(out, exist_ok=True)
    specs = [
        # mean 0.1 (1 SUV normalised), log-variance ln 0.01 (sigma 1 SUV): z = SUV - 1.
        ("fixture-anomaly", "anomaly", pointwise(np.zeros((2, 3))), [0.1, math.log(0.01)],
         [SUV_MASKED, SUV_MASK, CT],
         "[anomaly]\nmask_threshold_suv = 3.0\nz_low = 2.0\nz_high = 6.0\nscore_volume_ml = 1.0\n"),
        # logit 8 (SUV / 10) - 2: probability 0.5 at SUV 2.5.
        ("fixture-sensitive", "segmentation", pointwise([[8.0, 0.0, 0.0]]), [-2.0], [SUV, CT, PRIOR],
         'threshold = 0.5\nannotation_source = "test fixture (SUV above 2.5)"\n'),
        # logit 8 prior - 4: probability 0.5 where the prior is 0.5.
        ("fixture-prior", "segmentation", pointwise([[0.0, 0.0, 8.0]]), [-4.0], [SUV, CT, PRIOR],
         'threshold = 0.5\nannotation_source = "test fixture (anomaly prior above 0.5)"\n'),
    ]
    for name, task, weight, bias, inputs, extra in specs:
        onnx_path = os.path.join(out, f"{name}.onnx")
        model(onnx_path, weight, bias, 0)
        with open(onnx_path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        manifest = (
            f'name = "{name}"\nversion = "1.0.0"\ntask = "{task}"\nfile = "{name}.onnx"\nsha256 = "{sha}"\n'
            'input_name = "input"\noutput_name = "output"\nspacing_mm = [4.0, 4.0, 4.0]\n'
            "patch_size = [32, 32, 32]\nsize_multiple = 16\noverlap = 0.5\nbatch_size = 2\n"
        )
        body = "\n".join(inputs)
        if task == "anomaly":
            text = manifest + "\n" + body + "\n" + extra
        else:
            text = manifest + extra + "\n" + body
        with open(os.path.join(out, f"{name}.model.toml"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
