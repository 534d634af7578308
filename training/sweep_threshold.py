"""Each segmentation model's Dice, false-positive and false-negative volume against the truth at
several probability thresholds, on validation studies (never the held-out ones), through the node
itself: every model is run once per threshold (a copy of its manifest under another name), beside
the anomaly detector that feeds the prior, and `petct-node evaluate` compares the masks.

    sweep_threshold.py --manifest var/training/models/seg-truth.model.toml \\
        --manifest var/training/models/seg-no-prior.model.toml --thresholds 0.4,0.5,0.6,0.7 \\
        --work var/sweep [--lesion-seeds 8000-8011 --normal-seeds 8500-8503 --streams 2]

The studies and the node's runs stay in WORK (evaluate_heldout.py's layout), so a second call with
other thresholds runs the node again but a call with the same ones only evaluates.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import data
from evaluate_heldout import HELD_OUT_LESION, HELD_OUT_NORMAL, ROOT

HERE = os.path.dirname(os.path.abspath(__file__))


def copy_manifest(path, threshold, out):
    """A copy of the manifest at `path` named `<name>-t<threshold>` with that threshold, its ONNX
    file given by absolute path; returns the copy's path."""
    text = open(path).read()
    name = re.search(r'^name = "(.*)"$', text, re.M).group(1)
    onnx = os.path.join(os.path.dirname(os.path.abspath(path)), re.search(r'^file = "(.*)"$', text, re.M).group(1))
    copy = f"{name}-t{threshold:g}"
    for key, value in [("name", f'"{copy}"'), ("file", json.dumps(onnx)), ("threshold", f"{threshold:g}")]:
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
        if n != 1:
            sys.exit(f"{path}: no `{key}` line")
    target = os.path.join(out, f"{copy}.model.toml")
    with open(target, "w") as f:
        f.write(text)
    return target


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", action="append", required=True, help="a segmentation model (repeatable)")
    p.add_argument("--thresholds", required=True, help="e.g. 0.4,0.5,0.6")
    p.add_argument("--anomaly", default=os.path.join(ROOT, "models", "anomaly-ae.model.toml"))
    p.add_argument("--work", required=True)
    p.add_argument("--lesion-seeds", default="8000-8011")
    p.add_argument("--normal-seeds", default="8500-8503")
    p.add_argument("--streams", type=int, default=2, help="node runs side by side")
    args = p.parse_args()
    lesion, normal = sorted(data.seed_set(args.lesion_seeds)), sorted(data.seed_set(args.normal_seeds))
    if args.streams > min(len(lesion), len(normal)):
        sys.exit(f"--streams {args.streams}: each stream needs a lesion and a normal study")
    if data.seed_set(f"{HELD_OUT_LESION},{HELD_OUT_NORMAL}") & set(lesion + normal):
        sys.exit(f"the held-out seeds ({HELD_OUT_LESION}, {HELD_OUT_NORMAL}) are not for choosing a threshold")
    work = os.path.abspath(args.work)
    models = os.path.join(work, "models")
    os.makedirs(models, exist_ok=True)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    copies = [copy_manifest(m, t, models) for m in args.manifest for t in thresholds]
    config = os.path.join(work, "config.toml")
    library = os.path.join(ROOT, ".tools", "onnxruntime", "libonnxruntime.so.1.31.1")
    with open(config, "w") as f:
        f.write(f'[inference]\nlibrary = {json.dumps(library)}\nthreads = 1\n\n[segmentation]\nclassical = "never"\n')
        for m in [os.path.abspath(args.anomaly)] + copies:
            f.write(f"\n[[models]]\nmanifest = {json.dumps(m)}\n")
    # A run made with another set of thresholds lacks some masks: run it again.
    runs = os.path.join(work, "runs")
    names = {os.path.basename(c)[: -len(".model.toml")] for c in copies}
    for case in os.listdir(runs) if os.path.isdir(runs) else []:
        have = {f[len("mask_"):-len(".nii.gz")] for f in os.listdir(os.path.join(runs, case)) if f.startswith("mask_")}
        if not names <= have:
            os.remove(os.path.join(runs, case, "run.json"))
            shutil.rmtree(os.path.join(work, "pred", case), ignore_errors=True)  # the other set's masks
    script = [sys.executable, os.path.join(HERE, "evaluate_heldout.py"), "--config", config, "--work", work]
    out = os.path.join(work, "all")
    streams = [subprocess.Popen(script + ["--runs-only", "--out", out,
                                          "--lesion-seeds", ",".join(map(str, lesion[i::args.streams])),
                                          "--normal-seeds", ",".join(map(str, normal[i::args.streams]))],
                                stdout=subprocess.DEVNULL)
               for i in range(args.streams)]
    if any(s.wait() for s in streams):
        sys.exit("a stream failed: run evaluate_heldout.py with its seeds to see why")
    subprocess.run(script + ["--out", out, "--lesion-seeds", args.lesion_seeds, "--normal-seeds", args.normal_seeds],
                   check=True, stdout=subprocess.DEVNULL)
    report = json.load(open(os.path.join(out, "heldout.json")))
    normal = {s["pred"]: s for s in report["summary_normal_studies"] if s["ref"] == "truth"}
    print("| model | threshold | Dice | FPV mL | FNV mL | sensitivity | precision | FPV mL, normal studies |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for s in sorted(report["summary_lesion_studies"], key=lambda s: s["pred"]):
        if s["ref"] != "truth":
            continue
        name, _, t = s["pred"].rpartition("-t")
        sd = "" if s["dice_sd"] is None else f" ± {s['dice_sd']:.2f}"  # None for one study
        print(f"| {name} | {t} | {s['dice_mean']:.3f}{sd} | {s['fpv_ml_mean']:.2f} | "
              f"{s['fnv_ml_mean']:.1f} | {s['sensitivity_mean']:.2f} | {s['precision_mean']:.2f} | "
              f"{normal[s['pred']]['fpv_ml_mean']:.2f} |")


if __name__ == "__main__":
    main()
