"""Does the anomaly detector see the lesions? For an exported ONNX file (calibration not
needed): the z of the hottest `--volume-ml` of the body in normal studies against the largest z
inside the truth lesions of lesion studies, where each study's hottest voxel is (SUV, HU), and
how the largest urine region (hot and of fluid density: the bladder) is reconstructed. A detector that
works puts the lesions' z above every normal study's hottest volume.

    diagnose_anomaly.py --onnx var/training/m/anomaly-ae.onnx \\
        --normal var/training/normal --normal-seeds 2032-2039 --lesion var/training/lesion_check
"""
import argparse

import numpy as np
from scipy import ndimage

import calibrate_anomaly
import data
import window


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True)
    p.add_argument("--normal", required=True)
    p.add_argument("--normal-seeds")
    p.add_argument("--lesion", required=True)
    p.add_argument("--volume-ml", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patch", type=int, default=64, help="the patch it was trained on (train_anomaly.py --patch)")
    p.add_argument("--window", help="the window it is served on, Z,Y,X (its manifest's patch_size)")
    args = p.parse_args()
    session = window.session(args.onnx, args.threads)
    k = data.voxels_in(args.volume_ml)
    served_window = data.window_arg(args.window)
    for kind, cases in (("normal", data.load(args.normal, seeds=args.normal_seeds)), ("lesion", data.load(args.lesion))):
        for c in cases:
            out = calibrate_anomaly.reconstruct(session, c, args.patch, served_window=served_window)
            z = calibrate_anomaly.z_of(c, out)
            body = np.where(c.body != 0, z, -np.inf)
            hottest = np.sort(body.ravel())[-k:]
            at = np.unravel_index(int(np.argmax(body)), z.shape)
            line = (f"{kind} {c.meta['seed']}: hottest {args.volume_ml} mL z {hottest.mean():.2f}, max z {hottest[-1]:.2f} "
                    f"at SUV {c.suv[at]:.1f}, {c.ct[at]:.0f} HU")
            urine, n = ndimage.label((c.suv > data.MASK_THRESHOLD_SUV) & (c.ct < data.FLUID_HU) & (c.body != 0))
            if n:
                bladder = urine == 1 + int(np.argmax(ndimage.sum(urine > 0, urine, range(1, n + 1))))
                mean, sigma = 10 * out[0][bladder], 10 * np.exp(out[1][bladder] / 2)
                line += (f"; bladder SUV median {np.median(c.suv[bladder]):.1f}, reconstructed {np.median(mean):.1f} "
                         f"(p10-p90 {np.percentile(mean, 10):.1f}-{np.percentile(mean, 90):.1f}), sigma {np.median(sigma):.2f}")
            truth = c.labels.get("truth")
            if truth is not None and truth.any():
                line += f"; in lesions max z {z[truth != 0].max():.2f} (max SUV {c.suv[truth != 0].max():.1f})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
