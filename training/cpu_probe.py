"""Where the CPU enters a making (training/README.md items 52 (a), 56 (b), 58): fingerprints to
compare between machines. The chain's data and nets repeat exactly on one CPU and not across
CPUs; this prints, for the cases given (validation studies made with make_data.py):

  - the CPU, and the instruction set oneDNN (PyTorch's convolutions) dispatches to;
  - a sha256 per model-grid volume kind over every case (the node's own preprocessing: SUV, CT,
    body mask, and the anomaly detector's prior from ONNX Runtime) and per label kind, so a
    difference in the data is told apart from one in training;
  - a sha256 of the net's weights after STEPS steps of train_seg.py on those cases (the chain's
    first part's line, shortened), in bfloat16 as the chain trains (where the CPU has bfloat16
    convolutions), and in float32.

Two machines whose lines agree make the same data and nets; where a line differs, the CPU
enters there.

    cpu_probe.py --data var/training/validation --seeds 8000-8007    (about a minute)
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

import data
import loop
import nifti

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = ["--patch", "48", "--norm", "batch", "--channels", "suv,suv_soft,ct_hu,ct_soft,anomaly_prior",
         "--labels", "truth", "--blob-weight", "1", "--base", "16", "--no-prior", "--threads", "1"]


def cpu():
    fields = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first core's
    flags = set(fields.get("flags", "").split())
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
    return (f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, "
            + " ".join(f for f in wanted if f in flags))


def onednn():
    """The ISA oneDNN reports and the convolution it picks in bfloat16 and in float32 (the
    training's layout, channels-last 3D)."""
    code = ("import torch\n"
            "x = torch.ones(2, 16, 48, 48, 48).to(memory_format=torch.channels_last_3d)\n"
            "w = torch.ones(16, 16, 3, 3, 3).to(memory_format=torch.channels_last_3d)\n"
            "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
            "    torch.nn.functional.conv3d(x, w)\n"
            "torch.nn.functional.conv3d(x, w)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                         capture_output=True, text=True).stdout.splitlines()
    isa = next((line.split("isa:", 1)[1] for line in out if ",isa:" in line), "not reported")
    convs = [line.split(",")[6] for line in out if ",exec,cpu,convolution," in line]
    return f"{isa}; convolution bfloat16 / float32: {' / '.join(convs) or 'not reported'}"


def volumes_hash(cases, sub, name):
    h = hashlib.sha256()
    for case in cases:
        image = nifti.read(os.path.join(case, sub, name))
        h.update(np.ascontiguousarray(image.array).tobytes())
        h.update(np.asarray(image.affine, np.float64).tobytes())
    return h.hexdigest()[:16]


def weights_hash(root, seeds, steps, bf16):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "net.pt")
        cmd = [sys.executable, os.path.join(HERE, "train_seg.py"), "--data", root, "--seeds", seeds, "--steps", str(steps),
               "--out", out] + TRAIN + (["--bf16"] if bf16 else [])
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
        if done.returncode != 0:
            sys.exit(f"train_seg.py failed:\n{done.stderr[-2000:]}")
        state = torch.load(out, map_location="cpu", weights_only=False)["state_dict"]
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--data", required=True, help="a folder of cases made by make_data.py")
    p.add_argument("--seeds", required=True, help="its cases to use, e.g. 8000-8007")
    args = p.parse_args()
    root = os.path.abspath(args.data)
    cases = data.folders(root, args.seeds)
    if not cases:
        sys.exit(f"no complete case of seeds {args.seeds} in {root}")
    print(f"cpu: {cpu()}")
    print(f"oneDNN: {onednn()}")
    print(f"cases: {', '.join(os.path.basename(c) for c in cases)}")
    for name in sorted(os.listdir(os.path.join(cases[0], "model_grid"))):
        print(f"data model_grid/{name}: {volumes_hash(cases, 'model_grid', name)}")
    for name in ("truth.nii.gz", "truth_fraction.nii.gz"):
        print(f"data labels/{name}: {volumes_hash(cases, 'labels', name)}")
    for bf16 in (True, False):
        if bf16 and not loop.bf16_convolutions():
            print("weights in bfloat16: none, this CPU has no bfloat16 convolutions (train_seg.py refuses --bf16)")
            continue
        print(f"weights after {args.steps} steps, {'bfloat16' if bf16 else 'float32'}: "
              f"{weights_hash(root, args.seeds, args.steps, bf16)}", flush=True)


if __name__ == "__main__":
    main()
