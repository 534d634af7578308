"""Calibrates the anomaly detector's residual on lesion-free studies that it was not trained on:
z = (x - mean) * exp(-logvar / 2) inside the body, with the hidden (above-threshold) voxels
reconstructed from their surroundings. z_low is the `--low` quantile of the body voxels' z in
these normal studies, z_high lies `--margin` times as far above z_low as their `--high`
quantile; p = clamp((z - z_low) / (z_high - z_low)). A margin above 1 leaves headroom for
normal studies hotter than the calibration ones, so that their score does not saturate at 1 and
tie with the lesion studies. With --prior-low and --prior-high (quantiles of the same z) the
voxel map, the segmentation models' prior, gets a lower range of its own (prior_z_low,
prior_z_high): over the score's range it is 0 in most lesions. Prints the calibration as JSON
(export_model.py --calibration reads it) and, with --check DIR, the study scores of other studies for a look at the separation; with
--manifest it also writes the calibration into an exported model's manifest.

    calibrate_anomaly.py --onnx models/anomaly-ae.onnx --data var/training/normal --cases 2032-2063 \
        --high 1.0 --margin 1.5 [--prior-low 0.99 --prior-high 0.9999] [--manifest models/anomaly-ae.model.toml]
"""
import argparse
import json
import re
import sys

import numpy as np

import data
import window


def reconstruct(session, case, patch, threshold=data.MASK_THRESHOLD_SUV, norm="instance", served_window=None):
    """The detector's mean and log-variance of the normalised SUV, by sliding window as the node
    (`patch` the training patch, `served_window` the manifest's patch_size; data.serve_window)."""
    x = data.anomaly_inputs(case.suv, case.ct, case.suv > threshold)
    served, fit = data.serve_window(norm, patch, served_window)
    return window.infer(window.onnx(session), x, patch=served, pad_values=data.air_values(data.ANOMALY_CHANNELS),
                        batch_size=1 if fit else 2, fit=fit)


def z_of(case, out):
    return (data.normalise("suv", case.suv) - out[0]) * np.exp(-out[1] / 2)


def z_map(session, case, patch, norm="instance", served_window=None):
    return z_of(case, reconstruct(session, case, patch, norm=norm, served_window=served_window))


PRIOR_KEYS = ("prior_z_low", "prior_z_high")


def top_mean(values, volume_ml):
    """The mean of the largest values over `volume_ml` of the model grid."""
    return float(np.sort(values)[-data.voxels_in(volume_ml):].mean())


def probability(z, z_low, z_high):
    """The node's p = clamp((z - z_low) / (z_high - z_low), 0, 1) (docs/models.md)."""
    return np.clip((z - z_low) / (z_high - z_low), 0, 1)


def score(z, body, z_low, z_high, volume_ml):
    return top_mean(probability(z[body != 0], z_low, z_high), volume_ml)


def hottest_z(z, body, volume_ml):
    """The mean z of the body's hottest `volume_ml`: where a study's score comes from."""
    return top_mean(z[body != 0], volume_ml)


def write_manifest(path, cal, command):
    """Replaces the [anomaly] calibration values and the calibration command of the description;
    the prior's range is added after z_high, or removed, as the calibration has it."""
    text = open(path).read()
    text = re.sub(r"(?m)^prior_z_(low|high) = .*\n", "", text)
    prior = "".join(f"\n{key} = {cal[key]!r}" for key in PRIOR_KEYS if key in cal)
    for key in ("z_low", "z_high", "score_volume_ml"):
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {cal[key]!r}" + (prior if key == "z_high" else ""), text)
        if n != 1:
            raise SystemExit(f"{path}: expected one `{key} = ` line, found {n}")
    text, n = re.subn(r"calibrate_anomaly\.py [^;(\"]*", command + " ", text)
    if n == 0:
        raise SystemExit(f"{path}: the description names no calibrate_anomaly.py command to replace")
    open(path, "w").write(text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True)
    p.add_argument("--data", required=True, help="normal studies (make_data.py --normal)")
    p.add_argument("--cases", required=True, help="seeds to calibrate on, e.g. 2032-2039")
    p.add_argument("--low", type=float, default=0.999)
    p.add_argument("--high", type=float, default=0.99999,
                   help="quantile of the normal body z for z_high; 1.0 (their maximum) keeps normal study scores below 1")
    p.add_argument("--margin", type=float, default=1.0,
                   help="z_high = z_low + margin * (the --high quantile - z_low)")
    p.add_argument("--prior-low", type=float, help="quantile of the normal body z for prior_z_low (with --prior-high)")
    p.add_argument("--prior-high", type=float, help="quantile of the normal body z for prior_z_high")
    p.add_argument("--manifest", help="an exported model's manifest to write the calibration into")
    p.add_argument("--score-volume-ml", type=float, default=1.0)
    p.add_argument("--check", nargs="*", default=[], help="case roots to print scores for")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patch", type=int, default=64, help="the patch it was trained on (train_anomaly.py --patch)")
    p.add_argument("--norm", choices=["instance", "batch"], default="instance",
                   help="the detector's normalisation (train_anomaly.py --norm): the windows it is served on")
    p.add_argument("--window", help="instance normalisation: the window it is served on, Z,Y,X (its manifest's "
                   "patch_size; default the trained patch)")
    args = p.parse_args()
    window_zyx = data.window_arg(args.window)
    session = window.session(args.onnx, args.threads)
    wanted = data.seed_set(args.cases)
    cases = data.load(args.data, seeds=args.cases)
    zs = [z_map(session, c, args.patch, args.norm, window_zyx) for c in cases]
    body_z = np.concatenate([z[c.body != 0] for z, c in zip(zs, cases)])
    z_low, quantile = (float(np.quantile(body_z, q)) for q in (args.low, args.high))
    z_high = z_low + args.margin * (quantile - z_low)
    if (args.prior_low is None) != (args.prior_high is None):
        raise SystemExit("--prior-low and --prior-high go together")
    prior = {} if args.prior_low is None else dict(
        zip(PRIOR_KEYS, (float(np.quantile(body_z, q)) for q in (args.prior_low, args.prior_high))))
    prior_range = [prior.get("prior_z_low", z_low), prior.get("prior_z_high", z_high)]
    cal = {"z_low": z_low, "z_high": z_high, **prior, "score_volume_ml": args.score_volume_ml,
           "calibration_seeds": sorted(wanted), "voxels": int(body_z.size),
           "body_z_quantiles": {q: float(np.quantile(body_z, q)) for q in (0.9, 0.99, 0.995, 0.999, 0.9999)},
           "normal_hottest_z": {c.meta["seed"]: hottest_z(z, c.body, args.score_volume_ml) for z, c in zip(zs, cases)},
           "normal_scores": {c.meta["seed"]: score(z, c.body, z_low, z_high, args.score_volume_ml)
                             for z, c in zip(zs, cases)}}
    for root in args.check:
        for c in data.load(root):
            z = z_map(session, c, args.patch, args.norm, window_zyx)
            seen = {"score": score(z, c.body, z_low, z_high, args.score_volume_ml)}
            truth = c.labels.get("truth")
            if truth is not None and truth.any():
                # What a segmentation model would see in the lesions, over the map's range.
                p_map = probability(z, *prior_range) * (c.body != 0)
                seen["mean_prior_in_lesions"] = float(p_map[truth != 0].mean())
                seen["mean_prior_elsewhere_in_body"] = float(p_map[(truth == 0) & (c.body != 0)].mean())
                seen["lesion_z_quartiles"] = [float(q) for q in np.quantile(z[truth != 0], [0.25, 0.5, 0.75])]
            cal.setdefault("check", {}).setdefault(root, {})[c.meta["seed"]] = seen
    print(json.dumps(cal, indent=1))
    if args.manifest:
        argv, kept = iter(sys.argv[1:]), []
        for a in argv:
            if a == "--manifest":
                next(argv)
            elif not a.startswith("--manifest="):
                kept.append(a)
        write_manifest(args.manifest, cal, " ".join(["calibrate_anomaly.py"] + kept))


if __name__ == "__main__":
    main()
