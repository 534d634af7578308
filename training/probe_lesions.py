"""Each true lesion of validation cases as a net sees it on the model grid: its kind (truth.json:
borderline, confounder), volume, SUVmax against the SUV around it, CT inside against around it,
the prior, and the net's highest probability in it; then the net's voxels outside every lesion.

    probe_lesions.py --onnx models/seg-truth.onnx var/training/validation/case08000 ...
        (cases with truth.json: make_data.py --keep-ct-grid or --relabel)
"""
import argparse
import json
import os

import numpy as np
from scipy import ndimage

import data
import window
from train_seg import inputs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True)
    p.add_argument("--channels", default="suv,suv_soft,ct_hu,ct_soft,anomaly_prior", help="the model's, in order")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("cases", nargs="+")
    args = p.parse_args()
    channels = args.channels.split(",")
    predict = window.onnx(window.session(args.onnx, args.threads))
    eighteen = ndimage.generate_binary_structure(3, 2)
    for folder in args.cases:
        case = data.Case(folder, with_prior="anomaly_prior" in channels)
        box = tuple(slice(s.start, s.stop) for s in ndimage.find_objects(case.body)[0])
        logits = window.infer(predict, inputs(case, channels)[(slice(None),) + box], patch=data.SERVE_PATCH,
                              batch_size=1, pad_values=data.air_values(channels), fit=True)
        prob = np.zeros(case.suv.shape, np.float32)
        prob[box] = 0.5 * (1 + np.tanh(0.5 * logits[0]))  # the logistic function without overflow
        label = case.labels["truth"] != 0
        ids, _ = ndimage.label(label, eighteen)
        truth = case.truth or json.load(open(os.path.join(folder, "truth", "truth.json")))
        for lesion in truth["lesions"]:
            zyx = data.voxel_of(case, lesion["centre_mm"])
            near = ids[tuple(slice(max(v - 3, 0), v + 4) for v in zyx)]
            k = ids[zyx] or next(iter(np.unique(near[near != 0])), 0)
            head = (f"{case.meta['seed']} lesion {lesion['id']:2d} {lesion['location']:<24} "
                    f"{'borderline' if lesion['borderline'] else '':<10} {lesion['confounder'] or '':<8} "
                    f"{lesion['volume_ml']:5.1f} mL")
            if not k:
                print(f"{head}: not on the model grid")
                continue
            m = ids == k
            ring = ndimage.binary_dilation(m, iterations=2) & ~ndimage.binary_dilation(m) & ~label
            print(f"{head}: SUVmax {case.suv[m].max():4.1f} around {np.median(case.suv[ring]):4.2f}, "
                  f"CT {case.ct[m].mean():5.0f} around {np.median(case.ct[ring]):5.0f} HU, "
                  f"prior {case.prior[m].max() if case.prior is not None else 0:.2f}, "
                  f"net {prob[m].max():.2f} (> 0.5 in {np.mean(prob[m] > 0.5):.2f})", flush=True)
        outside = (prob > 0.5) & ~ndimage.binary_dilation(label)
        print(f"{case.meta['seed']}: {np.count_nonzero(outside)} voxels of the net outside every lesion")


if __name__ == "__main__":
    main()
