"""Training and evaluation data from the node itself.

For every seed: `petct-node phantom` writes a study, `petct-node run --model-spacing S` puts it
through the node's own preprocessing (assemble, SUVbw, resampling, model grid), and the
phantom's truth and reader masks are put on the same model grid here (Gaussian-filtered fraction
>= 0.5, as the node does with its body mask). With --models CONFIG the node also runs the
configured models (e.g. the anomaly detector) and exports their maps on the model grid.

    make_data.py --seeds 1000-1059 --out var/training/lesion [--normal] [--models CONFIG]

Each case folder holds model_grid/{suv,ct_hu,body[,anomaly_prior]}.nii.gz and
labels/{truth,high_sensitivity,high_specificity}.nii.gz. Existing complete cases are kept.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDORS = ["siemens", "ge", "philips-bqml", "philips-cnts"]
LABELS = {
    "truth": "lesions.nii.gz",
    "high_sensitivity": "reader_high_sensitivity.nii.gz",
    "high_specificity": "reader_high_specificity.nii.gz",
}
FWHM_PER_SIGMA = 2.354820045030949


def seeds(spec):
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def mask_to_grid(mask_path, reference):
    """Foreground fraction filtered to the grid's resolution, sampled, >= 0.5 (the node's rule).
    Only the masks' bounding box (plus the filter's reach) is filtered: they are sparse."""
    m = sitk.ReadImage(mask_path)
    a = sitk.GetArrayViewFromImage(m)
    nz = np.argwhere(a != 0)
    if len(nz) == 0:
        empty = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        empty.CopyInformation(reference)
        return empty
    fine, coarse = np.array(m.GetSpacing()), np.array(reference.GetSpacing())
    sigma = np.sqrt(np.maximum(coarse**2 - fine**2, 0.0)) / FWHM_PER_SIGMA
    margin = np.ceil((3 * sigma + coarse) / fine).astype(int)[::-1]  # z, y, x
    lo = np.maximum(nz.min(0) - margin, 0)
    hi = np.minimum(nz.max(0) + margin + 1, a.shape)
    box = m[int(lo[2]):int(hi[2]), int(lo[1]):int(hi[1]), int(lo[0]):int(hi[0])]
    fraction = sitk.Cast(sitk.NotEqual(box, 0), sitk.sitkFloat32)
    if sigma.max() > 0:
        fraction = sitk.SmoothingRecursiveGaussian(fraction, [float(max(s, 1e-3)) for s in sigma])
    on_grid = sitk.Resample(fraction, reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    return sitk.Cast(sitk.GreaterEqual(on_grid, 0.5), sitk.sitkUInt8)


def make_case(binary, seed, out, args):
    case = os.path.join(out, f"case{seed:05d}")
    if os.path.exists(os.path.join(case, "done.json")):
        return False
    shutil.rmtree(case, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        study = os.path.join(tmp, "study")
        cmd = [binary, "phantom", "--profile", args.profile, "--seed", str(seed), "--out", study,
               "--vendor", VENDORS[seed % len(VENDORS)]]
        if args.normal:
            cmd.append("--normal")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        run = os.path.join(tmp, "run")
        cmd = [binary, "run", study, "--out", run, "--model-spacing", str(args.spacing)]
        if args.models:
            cmd += ["--config", os.path.abspath(args.models)]
        summary = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
        os.makedirs(os.path.join(case, "labels"))
        shutil.copytree(os.path.join(run, "model_grid"), os.path.join(case, "model_grid"))
        reference = sitk.ReadImage(os.path.join(case, "model_grid", "suv.nii.gz"))
        for name, file in LABELS.items():
            sitk.WriteImage(mask_to_grid(os.path.join(study, "truth", file), reference),
                            os.path.join(case, "labels", f"{name}.nii.gz"), useCompression=True)
        truth = json.load(open(os.path.join(study, "truth", "truth.json")))
        if args.keep_ct_grid:
            # Evaluation on the CT grid: the reference masks as the phantom wrote them.
            shutil.copytree(os.path.join(study, "truth"), os.path.join(case, "truth"))
    with open(os.path.join(case, "done.json"), "w") as f:
        json.dump({"seed": seed, "normal": args.normal, "vendor": VENDORS[seed % len(VENDORS)],
                   "lesions": len(truth["lesions"]), "suv_bw_factor": summary["suv_bw_factor"],
                   "lesion_ml": sum(l["volume_ml"] for l in truth["lesions"]),
                   "anomaly_score": summary.get("anomaly_score")}, f)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", required=True, help="e.g. 1000-1059,1100")
    p.add_argument("--out", required=True)
    p.add_argument("--normal", action="store_true", help="lesion-free studies (phantom --normal)")
    p.add_argument("--profile", default="wholebody")
    p.add_argument("--spacing", type=float, default=4.0, help="model grid spacing, mm")
    p.add_argument("--models", help="node config with [[models]]: also export their maps")
    p.add_argument("--keep-ct-grid", action="store_true", help="also keep the CT-grid truth (evaluation)")
    p.add_argument("--scratch", default=None, help="temporary folder (default: system temp)")
    p.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "petct-node"))
    args = p.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release` first")
    os.makedirs(args.out, exist_ok=True)
    for seed in seeds(args.seeds):
        t0 = time.time()
        made = make_case(args.binary, seed, args.out, args)
        print(f"seed {seed}: {'made' if made else 'kept'} in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
