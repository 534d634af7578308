"""Held-out evaluation of the shipped models against the phantoms' truth and both readers.

For every held-out seed (never used in training): `petct-node phantom` writes a study, the node
runs every model of CONFIG (the anomaly detector, both segmentation models, the no-prior
ablation) and the classical baseline (`run --config CONFIG --export-volumes`), each method's
mask goes to pred/<case>/<method>.nii.gz and the truth and reader masks to ref/<case>/, and
`petct-node evaluate` gives the cross-evaluation matrix. Lesion-free studies give the
abnormality score's AUROC (and the false-positive volume on normal studies).

    evaluate_heldout.py --config training/configs/evaluation.toml --work var/eval --out training/results
    evaluate_heldout.py --markdown training/results/heldout.json    # its tables, for training/README.md

--carry OLD/heldout.json keeps OLD's rows of the methods this run does not have (a model no longer
at hand, e.g. an ablation from an earlier session): the node and the seeds being the same, a
method's rows do not change from one run to the next, and heldout.json says which rows were carried.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib

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


def methods(config):
    """Each segmentation method of a node config: the models' name, version, annotation source and
    whether the anomaly prior is one of its inputs; `classical` unless the config turns it off."""
    with open(config, "rb") as f:
        cfg = tomllib.load(f)
    out = {}
    for entry in cfg.get("models", []):
        path = os.path.join(os.path.dirname(config), entry["manifest"])
        with open(path, "rb") as f:
            m = tomllib.load(f)
        if m["task"] == "segmentation":
            out[m["name"]] = {"version": m["version"], "annotation_source": m["annotation_source"],
                              "prior": any(i["source"] == "anomaly_prior" for i in m["inputs"])}
    if cfg.get("segmentation", {}).get("classical", "auto") != "never":
        out["classical"] = {"version": None, "annotation_source": None, "prior": False}
    return out


def carry(report, old_path):
    """Adds OLD's rows (and method descriptions) of the methods this run lacks."""
    with open(old_path) as f:
        old = json.load(f)
    here = set(report["methods"])
    carried = sorted({r["pred"] for r in old["summary_lesion_studies"]} - here)
    for key in ["summary_lesion_studies", "summary_normal_studies"]:
        report[key] = sorted(report[key] + [r for r in old[key] if r["pred"] in carried],
                             key=lambda r: (r["pred"], r["ref"]))
    for m in carried:
        report["methods"][m] = old.get("methods", {}).get(m, {"version": None, "annotation_source": None,
                                                                "prior": None})
    report["carried"] = {"from": old_path, "methods": carried}


def label(name, m):
    if name == "classical":
        return "classical (SUV 2.5 + 41 %)"
    if m.get("version") is None:
        return name
    prior = {True: "prior", False: "no prior", None: "?"}[m["prior"]]
    return f"{name} {m['version']} ({m['annotation_source']}, {prior})"


def markdown(path):
    """training/README.md's tables from a heldout.json."""
    with open(path) as f:
        r = json.load(f)
    ms, carried = r.get("methods", {}), set(r.get("carried", {}).get("methods", []))

    def pm(row, key, digits):
        return f"{row[key + '_mean']:.{digits}f} ± {row[key + '_sd']:.{digits}f}"

    n = r["summary_lesion_studies"][0]["n"]
    print(f"Mean ± SD over the {n} lesion studies"
          + (f" (rows of {', '.join(sorted(carried))} carried from {r['carried']['from']})" if carried else "") + ":\n")
    print("| method (trained on) | reference | Dice | FPV mL | FNV mL | sensitivity | precision |")
    print("|---|---|---:|---:|---:|---:|---:|")
    refs = list(REFERENCES)
    for row in sorted(r["summary_lesion_studies"],
                      key=lambda row: (row["pred"] == "classical", row["pred"], refs.index(row["ref"]))):
        print(f"| {label(row['pred'], ms.get(row['pred'], {}))} | {row['ref']} | {pm(row, 'dice', 2)} | "
              f"{pm(row, 'fpv_ml', 2)} | {pm(row, 'fnv_ml', 1)} | {pm(row, 'sensitivity', 2)} | "
              f"{pm(row, 'precision', 2)} |")
    normal = [row for row in r["summary_normal_studies"] if row["ref"] == "truth"]
    print(f"\nFalse-positive volume on the {normal[0]['n']} normal studies (no lesions: FPV only): "
          + ", ".join(f"{row['pred']} {pm(row, 'fpv_ml', 2)} mL" for row in normal)
          + f". AUROC of the abnormality score {r['auroc_abnormality_score']:.3f}.")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--markdown", metavar="HELDOUT_JSON", help="print the tables of this result and exit")
    first, _ = p.parse_known_args()
    if first.markdown:
        return markdown(first.markdown)
    p.add_argument("--config", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--carry", metavar="OLD_HELDOUT_JSON", help="keep OLD's rows of methods this run lacks")
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
    # Each model's own share of the stage (runs of a node older than `infer_parts` have none).
    parts = {}
    for v in runs.values():
        for part in v["seconds"].get("infer_parts", []):
            parts.setdefault(part["part"], []).append(part["seconds"])
    report = {"summary_lesion_studies": results["lesion"], "summary_normal_studies": results["normal"],
              "anomaly_scores": scores, "auroc_abnormality_score": auroc(lesion, normal),
              "infer_seconds_mean": sum(infer_s) / len(infer_s),
              "infer_seconds_mean_by_part": {k: sum(s) / len(s) for k, s in parts.items()}, "cases": len(runs),
              "methods": methods(os.path.abspath(args.config))}
    if args.carry:
        carry(report, args.carry)
    with open(os.path.join(args.out, "heldout.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({"auroc": report["auroc_abnormality_score"], "infer_seconds_mean": report["infer_seconds_mean"]}))


if __name__ == "__main__":
    main()
