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


def auroc(positive, negative):
    """Probability that a random positive scores above a random negative (ties count half)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lesion", required=True)
    p.add_argument("--normal", required=True)
    args = p.parse_args()
    lesion, normal = scores(args.lesion), scores(args.normal)
    print(json.dumps({
        "auroc": auroc(list(lesion.values()), list(normal.values())),
        "lesion_studies": len(lesion), "normal_studies": len(normal),
        "lesion_scores": lesion, "normal_scores": normal,
    }, indent=1))


if __name__ == "__main__":
    main()
