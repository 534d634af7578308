"""Why found lesions come out small (item 44 a), and how the CT draws them (item 53): a
segmentation model's probability on validation cases, mapped onto the CT grid as the node maps
it (linear interpolation) and cut in several ways, against the CT-grid truth. For each way: the
study's Dice (autoPET's, over the whole CT grid), false-positive volume, and the volume each true
lesion that is found is drawn with against its true volume, by size; against the truth, also the
true lesions found by kind (borderline, SUVmax under 3.5 or not: missed_lesions.py's count). Beside the net, the same
for the truth's own fraction on the model grid (the soft target): what a perfect net on that grid
would give.

Ways of cutting (p: the probability on the CT grid):
  p>=T      the node's rule at threshold T
  grow L    p >= L where 18-connected to a voxel of p >= 0.5 (hysteresis: no new components)
  expected  each part of the model-grid map (p >= 0.2 and the 5x5x5 voxels around each such
            voxel, 18-connected) that reaches 0.5, drawn with as many CT voxels, the highest p
            first, as the sum of its probability makes: the volume a calibrated net expects
            (the node's `draw = "expected_volume"`)
  ct refined  the same parts, each drawn where its probability and its CT together say lesion
            (the node's `draw = "ct_refined"`, item 53; needs the CT kept with the truth)

    drawn_volume.py --manifest models/seg-truth.model.toml var/training/validation/case0800[0-7]
        (cases made with make_data.py --keep-ct-grid; --reference reader_high_specificity.nii.gz
        scores a reader's net against its own reader instead of the truth)
"""
import argparse
import json
import os
import tomllib

import numpy as np
from scipy import ndimage

import data
import nifti
import window
from make_data import fraction_on_grid, sample_at
from missed_lesions import by_kind
from train_seg import inputs

EIGHTEEN = ndimage.generate_binary_structure(3, 2)
SIZES = [(0, 1), (1, 4), (4, 16), (16, 1e9)]  # true volume, mL
WAYS = ["p>=0.5", "p>=0.4", "p>=0.3", "grow 0.3", "grow 0.2", "expected", "ct refined"]


def channel_of(i):
    """The training channel (data.CHANNELS) a manifest's [[inputs]] entry is."""
    key = (i["source"], tuple(i["clip"]), i["offset"], i["scale"])
    return next(name for name, c in data.CHANNELS.items() if c == key)


def net_probability(case, manifest, onnx, channels, threads):
    box = tuple(slice(s.start, s.stop) for s in ndimage.find_objects(case.body)[0])
    predict = window.mirrored(window.onnx(window.session(onnx, threads)), window.mirror_axes(manifest))
    logits = window.infer(predict, inputs(case, channels)[(slice(None),) + box], patch=manifest["patch_size"],
                          batch_size=1, pad_values=data.air_values(channels),
                          fit=manifest.get("patch_fits_grid", False))
    p = np.zeros(case.suv.shape, np.float32)
    p[box] = 0.5 * (1 + np.tanh(0.5 * logits[0]))  # the logistic function without overflow
    return p


def on_ct(p, grid_affine, ct_affine, ct_shape):
    """`p` (model grid) linearly sampled on the CT grid, only around its parts (as the node's
    `draw = "expected_volume"` finds them: p >= 0.2 dilated by a 5x5x5 box), and the part each CT voxel's nearest model voxel belongs to (0: none)."""
    parts, n = ndimage.label(ndimage.binary_dilation(p >= 0.2, np.ones((5, 5, 5), bool)), EIGHTEEN)
    to_ct = np.linalg.inv(ct_affine) @ grid_affine
    prob, part = np.zeros(ct_shape, np.float32), np.zeros(ct_shape, np.int32)
    for k, sl in enumerate(ndimage.find_objects(parts), start=1):
        corners = np.array([[i, j, z, 1.0] for z in (sl[0].start - 1, sl[0].stop) for j in (sl[1].start - 1, sl[1].stop)
                            for i in (sl[2].start - 1, sl[2].stop)]).T
        ijk = (to_ct @ corners)[:3]
        lo = np.maximum(np.floor(ijk.min(1)).astype(int)[::-1], 0)
        hi = np.minimum(np.ceil(ijk.max(1)).astype(int)[::-1] + 1, ct_shape)
        here = sample_at((parts == k).astype(np.float32), grid_affine, ct_affine, lo, hi) >= 0.5
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        prob[box][here] = sample_at(p, grid_affine, ct_affine, lo, hi)[here]
        part[box][here] = k
    return prob, part, parts, n


CT_MAX = 2.0  # the node's MAX_CT_LOG_ODDS


def ct_refined(prob, hu, count):
    """The node's `draw = "ct_refined"` for one part (src/infer/draw.rs): which of the part's
    voxels (probability `prob`, CT value `hu`) are drawn, given the `count` its probabilities add
    up to. Two normal laws with one spread fitted to the part, the lesion's on the most probable
    half of `count`, the surroundings' on the voxels ranked beyond 1.5 times it; a voxel is drawn
    at even odds or better (the model's odds times the CT value's likelihood ratio, which moves
    the log-odds by at most CT_MAX) where it connects (18) to the core; if no core voxel is, the
    part is drawn as `expected` draws it. Returns the indices of the voxels at even odds and of
    the core (`cut` keeps what connects to it), or `expected`'s indices and None."""
    order = np.argsort(-prob, kind="stable")
    core, beyond = max(count // 2, 1), min(count * 3 // 2 + 1, prob.size)
    if core < 4 or prob.size - beyond < 4:
        return order[:count], None
    fit = [(np.median(v), 1.4826 * np.median(np.abs(v - np.median(v)))) for v in (hu[order[:core]], hu[order[beyond:]])]
    (lesion, sl), (around, sb) = fit
    sd = max(np.sqrt((sl * sl + sb * sb) / 2), 10.0, 0.15 * abs(lesion - around))
    v = np.clip(prob.astype(np.float64), 1e-4, 1 - 1e-4)
    odds = np.clip(((hu - around) ** 2 - (hu - lesion) ** 2) / (2 * sd * sd), -CT_MAX, CT_MAX)
    chosen = np.flatnonzero(np.log(v / (1 - v)) + odds >= 0)
    if not np.isin(order[:core], chosen).any():
        return order[:count], None  # what is found stays found
    return chosen, order[:core]


def cut(way, p, prob, part, parts, n, model_ml, ct_ml, hu):
    if way.startswith("p>="):
        return prob >= float(way[3:])
    if way.startswith("grow"):
        ids, _ = ndimage.label(prob >= float(way[5:]), EIGHTEEN)
        seeds = np.unique(ids[prob >= 0.5])
        return np.isin(ids, seeds[seeds != 0])
    out = np.zeros(prob.shape, bool)
    sums = ndimage.sum(p, parts, np.arange(1, n + 1))
    peaks = ndimage.maximum(p, parts, np.arange(1, n + 1))
    for k in range(1, n + 1):
        if peaks[k - 1] < 0.5:
            continue
        where = np.flatnonzero(part == k)
        count = min(int(round(sums[k - 1] * model_ml / ct_ml)), where.size)
        if way == "expected":
            out.flat[where[np.argsort(-prob.flat[where])[:count]]] = True
            continue
        chosen, core = ct_refined(prob.flat[where], hu.flat[where].astype(np.float64), count)
        # The connection to the core is looked for in the part's box, not the whole CT.
        at = np.unravel_index(where, prob.shape)
        box = tuple(slice(c.min(), c.max() + 1) for c in at)
        shape = tuple(b.stop - b.start for b in box)
        local = np.ravel_multi_index(tuple(c - b.start for c, b in zip(at, box)), shape)
        drawn = np.zeros(shape, bool)
        drawn.flat[local[chosen]] = True
        if core is not None:
            pieces, _ = ndimage.label(drawn, EIGHTEEN)
            touching = np.unique(pieces.flat[local[core]])
            drawn = np.isin(pieces, touching[touching != 0])
        out[box] |= drawn
    return out


def score(mask, truth, lesions, ct_ml):
    """Dice, false-positive mL, and (true mL, drawn mL) of every found true lesion."""
    ids, _ = ndimage.label(mask, EIGHTEEN)
    sizes = np.bincount(ids.ravel())
    hit = np.unique(ids[truth])
    fpv = (mask.sum() - sizes[hit[hit != 0]].sum()) * ct_ml
    dice = 2 * np.count_nonzero(mask & truth) / max(mask.sum() + truth.sum(), 1)
    found = []
    for k, sl in enumerate(ndimage.find_objects(lesions), start=1):
        own = ids[sl][lesions[sl] == k]
        touched = np.unique(own[own != 0])
        if touched.size:
            found.append((np.count_nonzero(lesions[sl] == k) * ct_ml, sizes[touched].sum() * ct_ml))
    return dice, fpv, found


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reference", default="lesions.nii.gz", help="the mask in each case's truth/ to score against")
    p.add_argument("cases", nargs="+")
    args = p.parse_args()
    with open(args.manifest, "rb") as f:
        manifest = tomllib.load(f)
    channels = [channel_of(c) for c in manifest["inputs"]]
    onnx = os.path.join(os.path.dirname(os.path.abspath(args.manifest)), manifest["file"])
    rows = {(source, way): [] for source in ("net", "fraction") for way in WAYS}
    for folder in args.cases:
        case = data.Case(folder, with_prior="anomaly_prior" in channels)
        grid = nifti.read(os.path.join(folder, "model_grid", "suv.nii.gz"))
        path = os.path.join(folder, "truth", args.reference)
        reference = nifti.read(path)
        truth = reference.array != 0
        lesions, _ = ndimage.label(truth, EIGHTEEN)
        model_ml, ct_ml = np.prod(grid.spacing) / 1000, np.prod(reference.spacing) / 1000
        ct_path = os.path.join(folder, "truth", "ct_hu.nii.gz")
        if not os.path.exists(ct_path):
            raise SystemExit(f"{ct_path} is missing: make the case again with make_data.py --keep-ct-grid, "
                             "which now keeps the CT beside the truth")
        hu = nifti.read(ct_path).array
        # Kinds only against the truth's own ids (truth.json's lesions), not a reader's mask.
        kinds_of = []
        if args.reference == "lesions.nii.gz":
            kinds_of = json.load(open(os.path.join(folder, "truth.json")))["lesions"]
        maps = {"net": net_probability(case, manifest, onnx, channels, args.threads),
                "fraction": fraction_on_grid(path, grid)}
        for source, m in maps.items():
            prob, part, parts, n = on_ct(m, grid.affine, reference.affine, truth.shape)
            line = []
            for way in WAYS:
                mask = cut(way, m, prob, part, parts, n, model_ml, ct_ml, hu)
                dice, fpv, found = score(mask, truth, lesions, ct_ml)
                tally = by_kind(set(np.unique(reference.array[mask]).tolist()), kinds_of) if kinds_of else {}
                rows[(source, way)].append((dice, fpv, found, tally))
                line.append(f"{way} {dice:.3f}")
            print(f"{os.path.basename(folder)} {source:<8}: " + ", ".join(line), flush=True)
    print(f"\nmean over {len(args.cases)} cases; drawn / true volume of the found lesions (median, by true size)")
    head = " ".join(f"{f'{a:g}-{b:g} mL' if b < 1e9 else f'>{a:g} mL':>10}" for a, b in SIZES)
    print(f"{'':<18} {'Dice':>6} {'FPV mL':>7} {'found':>5} {'drawn/true':>10} {head}")
    for (source, way), got in rows.items():
        found = [f for _, _, fs, _ in got for f in fs]
        by_size = []
        for a, b in SIZES:
            r = [d / t for t, d in found if a <= t < b]
            by_size.append(f"{np.median(r):.2f} ({len(r):2d})" if r else "-")
        # Normal studies have no lesion to find, so no ratio.
        ratio = f"{np.sum([d for _, d in found]) / np.sum([t for t, _ in found]):10.2f}" if found else f"{'-':>10}"
        print(f"{source + ' ' + way:<18} {np.mean([g[0] for g in got]):6.3f} {np.mean([g[1] for g in got]):7.2f} "
              f"{len(found):5d} {ratio} " + " ".join(f"{s:>10}" for s in by_size))
    kinds = sorted({k for got in rows.values() for g in got for k in g[3]})
    if kinds:
        print("\nfound of the true lesions by kind (found of all, missed mL), as missed_lesions.py counts them")
        for (source, way), got in rows.items():
            total = {k: np.sum([g[3][k] for g in got if k in g[3]], axis=0) for k in kinds}
            print(f"{source + ' ' + way:<18} " + "; ".join(
                f"{k} {int(t[0])} of {int(t[1])} ({t[2]:.1f} mL)" for k, t in total.items()))


if __name__ == "__main__":
    main()
