"""How well the node's study-level abnormality score separates lesion studies from normal ones:
the AUROC (Mann-Whitney: the chance that a lesion study scores above a normal one, ties counted
half) over cases made by `make_data.py --models training/configs/anomaly.toml`, whose done.json
holds the score the node itself reported (`findings.json` `anomaly_score`).

    anomaly_auroc.py --lesion var/eval/lesion --normal var/eval/normal
"""
import argparse
import glob
import json
import os


def scores(root):
    out = {}
    for f in sorted(glob.glob(os.path.join(root, "case*", "done.json"))):
        meta = json.load(open(f))
        if meta.get("anomaly_score") is None:
            raise SystemExit(f"{f}: no anomaly_score (made without --models?)")
        out[meta["seed"]] = meta["anomaly_score"]
    if not out:
        raise SystemExit(f"no cases under {root}")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lesion", required=True)
    p.add_argument("--normal", required=True)
    args = p.parse_args()
    lesion, normal = scores(args.lesion), scores(args.normal)
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in lesion.values() for b in normal.values()]
    print(json.dumps({
        "auroc": sum(pairs) / len(pairs),
        "lesion_studies": len(lesion), "normal_studies": len(normal),
        "lesion_scores": lesion, "normal_scores": normal,
    }, indent=1))


if __name__ == "__main__":
    main()
