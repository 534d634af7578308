"""Held-out evaluation of the shipped models against the phantoms' truth and both readers.

For every held-out seed (never used in training): `petct-node phantom` writes a study, the node
runs every model of CONFIG (the anomaly detector, both segmentation models, the no-prior
ablation) and the classical baseline (`run --config CONFIG --export-volumes`), each method's
mask goes to pred/<case>/<method>.nii.gz and the truth and reader masks to ref/<case>/, and
`petct-node evaluate` gives the cross-evaluation matrix. Lesion-free studies give the
abnormality score's AUROC (and the false-positive volume on normal studies).

    evaluate_heldout.py --config training/configs/evaluation.toml --work var/eval --out training/results
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import data
from anomaly_auroc import auroc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDORS = ["siemens", "ge", "philips-bqml", "philips-cnts"]
REFERENCES = {"truth": "lesions.nii.gz", "reader_high_sensitivity": "reader_high_sensitivity.nii.gz",
              "reader_high_specificity": "reader_high_specificity.nii.gz"}
# Never trained on, calibrated on, validated on or used to choose a threshold (sweep_threshold.py).
HELD_OUT_LESION, HELD_OUT_NORMAL = "9000-9019", "9500-9519"
BULKY = ["ct_hu.nii.gz", "suv.nii.gz", "suv_on_ct.nii.gz", "lesions.nii.gz", "seg.dcm", "mip.dcm"]


def case(binary, config, seed, normal, work):
    name = f"{'normal' if normal else 'lesion'}{seed:05d}"
    run_dir = os.path.join(work, "runs", name)
    if os.path.exists(os.path.join(run_dir, "run.json")):
        return name, json.load(open(os.path.join(run_dir, "run.json")))
    study = os.path.join(work, "studies", name)
    shutil.rmtree(study, ignore_errors=True)
    cmd = [binary, "phantom", "--profile", "wholebody", "--seed", str(seed), "--out", study,
           "--vendor", VENDORS[seed % len(VENDORS)]] + (["--normal"] if normal else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(run_dir, ignore_errors=True)
    subprocess.run([binary, "run", study, "--out", run_dir, "--config", config, "--export-volumes"], check=True,
                   stdout=subprocess.DEVNULL)
    for f in BULKY:  # only the masks are needed here
        if os.path.exists(os.path.join(run_dir, f)):
            os.remove(os.path.join(run_dir, f))
    pred, ref = os.path.join(work, "pred", name), os.path.join(work, "ref", name)
    os.makedirs(pred, exist_ok=True)
    os.makedirs(ref, exist_ok=True)
    for f in os.listdir(run_dir):
        if f.startswith("mask_") and f.endswith(".nii.gz"):
            shutil.copy(os.path.join(run_dir, f), os.path.join(pred, f[len("mask_"):]))
    for source, f in REFERENCES.items():
        shutil.copy(os.path.join(study, "truth", f), os.path.join(ref, f"{source}.nii.gz"))
    shutil.copy(os.path.join(study, "truth", "truth.json"), os.path.join(run_dir, "truth.json"))
    shutil.rmtree(study)
    return name, json.load(open(os.path.join(run_dir, "run.json")))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--lesion-seeds", default=HELD_OUT_LESION)
    p.add_argument("--normal-seeds", default=HELD_OUT_NORMAL)
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "petct-node"))
    p.add_argument("--runs-only", action="store_true",
                   help="only the node's runs: for streams side by side in one WORK, whose evaluations would "
                        "share its pred_*/ref_* folders; a last call without it evaluates them all")
    args = p.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release` first")
    runs = {}
    for normal, spec in [(False, args.lesion_seeds), (True, args.normal_seeds)]:
        for seed in sorted(data.seed_set(spec)):
            name, summary = case(args.binary, os.path.abspath(args.config), seed, normal, args.work)
            runs[name] = summary
            print(f"{name}: score {summary.get('anomaly_score')}, infer {summary['seconds']['infer']:.1f} s", flush=True)
    if args.runs_only:
        return
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for subset, prefix in [("lesion", "lesion"), ("normal", "normal")]:
        pred, ref = os.path.join(args.work, f"pred_{subset}"), os.path.join(args.work, f"ref_{subset}")
        for side, target in [("pred", pred), ("ref", ref)]:
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(target)
            for name in runs:
                if name.startswith(prefix):
                    os.symlink(os.path.abspath(os.path.join(args.work, side, name)), os.path.join(target, name))
        out = subprocess.run([args.binary, "evaluate", "--pred", pred, "--ref", ref, "--json", "--out",
                              os.path.join(args.out, f"evaluation_{subset}")], check=True, capture_output=True)
        results[subset] = json.loads(out.stdout)["summary"]
    scores = {k: v.get("anomaly_score") for k, v in runs.items()}
    lesion = [s for k, s in scores.items() if k.startswith("lesion")]
    normal = [s for k, s in scores.items() if k.startswith("normal")]
    infer_s = [v["seconds"]["infer"] for v in runs.values()]
    report = {"summary_lesion_studies": results["lesion"], "summary_normal_studies": results["normal"],
              "anomaly_scores": scores, "auroc_abnormality_score": auroc(lesion, normal),
              "infer_seconds_mean": sum(infer_s) / len(infer_s), "cases": len(runs)}
    with open(os.path.join(args.out, "heldout.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({"auroc": report["auroc_abnormality_score"], "infer_seconds_mean": report["infer_seconds_mean"]}))


if __name__ == "__main__":
    main()
