"""Trains the dual-branch anomaly autoencoder on lesion-free studies (make_data.py --normal).

Voxels above the manifest's mask_threshold_suv are hidden from the PET branch, as the node
hides them at inference, and so are many blobs of normal tissue (hide_spheres), so that the
network learns to fill in any tissue (liver, lung, bone, nodes) from its surroundings and the
CT. The decoder predicts the mean and log-variance of the normalised SUV; the loss is L1 on the
mean plus the Gaussian negative log-likelihood of the log-variance, weighted towards the hidden
voxels.

    train_anomaly.py --data var/training/normal --seeds 2000-2031 --out var/training/anomaly.pt --steps 2100 --hot-l2 1
"""
import argparse

import numpy as np
import torch
from scipy import ndimage

import data
import loop
import nets


def hide_spheres(mask, body, rng):
    """Hides blobs of normal tissue: 4-12 per patch, spheres of 4-24 mm radius centred in the
    body where the SUV is below the threshold, some lobulated as lesions are. They make up most
    of the hidden volume, so that a hidden region no longer says "hot" (in normal studies the
    above-threshold voxels are all hot organs) and the network has to predict it from its
    surroundings and the CT, which is what a lesion hidden in liver, lung, bone or a node needs."""
    candidates = np.argwhere((body != 0) & ~mask)
    if not len(candidates):
        return mask
    hidden = mask.copy()
    for _ in range(rng.integers(4, 13)):
        centre = candidates[rng.integers(len(candidates))].astype(float)
        r = rng.uniform(1.0, 6.0)  # voxels of 4 mm
        lobes = [(centre, r)]
        for _ in range(rng.integers(0, 3) if rng.random() < 0.3 else 0):
            d = rng.normal(size=3)
            lobes.append((centre + d / np.linalg.norm(d) * r * 0.7, r * rng.uniform(0.5, 0.9)))
        for c, rr in lobes:
            lo = np.maximum(np.floor(c - rr).astype(int), 0)
            hi = np.minimum(np.ceil(c + rr).astype(int) + 1, mask.shape)
            if np.any(hi <= lo):
                continue
            zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            inside = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= rr * rr
            hidden[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= inside
    return hidden


# Voxel kinds of a training patch, for the loss weights and the log line.
OUTSIDE, BODY, BLOB, HOT, URINE = 0, 1, 2, 3, 4


def hot_organs(case, min_voxels=64):
    """The voxels of each hot region of a study (connected, above the mask threshold, in the body,
    at least 4 mL: brain, heart, kidneys, bladder and a few hot vessels or glands, not noise)."""
    labels, n = ndimage.label((case.suv > data.MASK_THRESHOLD_SUV) & (case.body != 0))
    order = np.argsort(labels, axis=None, kind="stable")
    starts = np.searchsorted(labels.ravel()[order], np.arange(1, n + 2))
    regions = [np.column_stack(np.unravel_index(order[a:b], labels.shape)) for a, b in zip(starts[:-1], starts[1:])]
    return [r for r in regions if len(r) >= min_voxels]


def patch_centre(case, organs, rng, hot_centre):
    """A body voxel, or with probability `hot_centre` a voxel of one of the study's hot regions
    chosen with weight sqrt(size). Centred anywhere, a patch holds the brain (20 000 voxels) far
    more often than the bladder (2 000-10 000), whose SUV (10-36, varying per study) the detector
    has to learn from the CT and the pelvis around it."""
    if organs and rng.random() < hot_centre:
        weights = np.sqrt([len(r) for r in organs])
        voxels = organs[rng.choice(len(organs), p=weights / weights.sum())]
        return voxels[rng.integers(len(voxels))]
    return case.body_voxels[rng.integers(len(case.body_voxels))]


def batch(cases, organs, rng, size, n, hot_balance, hot_centre):
    """Inputs, targets, loss weights and voxel kinds of `n` random patches."""
    xs, ys, ws, kinds = [], [], [], []
    for _ in range(n):
        i = rng.integers(len(cases))
        case = cases[i]
        centre = patch_centre(case, organs[i], rng, hot_centre)
        suv = data.crop(case.suv, centre, size, 0.0)
        ct = data.crop(case.ct, centre, size, -1000.0)
        body = data.crop(case.body, centre, size, 0)
        hot = suv > data.MASK_THRESHOLD_SUV
        mask = hide_spheres(hot, body, rng)
        kind = np.where(hot, HOT, np.where(mask, BLOB, np.where(body != 0, BODY, OUTSIDE))).astype(np.uint8)
        xs.append(data.anomaly_inputs(suv, ct, mask))
        ys.append(data.normalise("suv", suv)[None])
        # Hidden voxels are what the detector is for, the body matters more than the air. The hot
        # organs (the brain alone is 20 000 voxels) weigh at most `hot_balance` times the hidden
        # normal tissue of the patch, or "hidden" would still mean "hot" to the loss.
        n_hot, n_blob = int((kind == HOT).sum()), int((kind == BLOB).sum())
        w_hot = min(1.0, hot_balance * n_blob / n_hot) if n_hot and hot_balance > 0 else 1.0
        ws.append(np.array([0.01, 0.1, 1.0, w_hot], dtype=np.float32)[kind][None])
        # Urine (hot and of fluid density: bladder, renal pelvis) is logged apart from the other
        # hot organs; the kind is only for the log line and weighs as HOT.
        kinds.append(np.where((kind == HOT) & (ct < data.FLUID_HU), URINE, kind)[None])
    return [torch.from_numpy(np.stack(a)) for a in (xs, ys, ws, kinds)]


def loss_fn(out, y, w, hot, hot_l2):
    """L1 for the mean, and the Gaussian negative log-likelihood for the log-variance around the
    mean with its gradient stopped: with the plain likelihood a large variance starves the mean of
    gradient and training settles on "everything is uncertain" (Seitzer et al., ICLR 2022).
    `hot_l2` adds a squared error over the hot voxels at full weight: L1's constant gradient at
    the balanced weight leaves the bladder (SUV 10-24) reconstructed at 4-7 (README, attempt 7),
    a squared term pulls hardest where the error is largest."""
    out = out.float()  # under --bf16: the sums over the batch need float32
    mean, logvar = out[:, 0:1], out[:, 1:2]
    l1 = (w * (y - mean).abs()).sum() / w.sum()
    nll = (w * 0.5 * (logvar + (y - mean.detach()) ** 2 * torch.exp(-logvar))).sum() / w.sum()
    l2 = (hot * (y - mean) ** 2).sum() / w.sum() if hot_l2 > 0 else 0.0
    return l1 + nll + hot_l2 * l2


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", help="train on these seeds only, e.g. 2000-2031")
    p.add_argument("--out", required=True)
    p.add_argument("--hot-balance", type=float, default=2.0,
                   help="hot organs weigh at most this many times a patch's hidden normal tissue (0: no limit)")
    p.add_argument("--hot-centre", type=float, default=0.5,
                   help="the fraction of patches centred in a hot region, chosen with weight sqrt(size)")
    p.add_argument("--hot-l2", type=float, default=0.0,
                   help="weight of a squared error over the hot voxels, added to the loss (0: none)")
    p.add_argument("--norm", choices=["instance", "batch"], default="instance",
                   help="batch: one fixed function of the input, served on windows fitted to the grid "
                        "(nets.norm_layer); instance: on the training patch")
    loop.add_args(p)
    args = p.parse_args()
    rng = loop.seeded(args)
    cases = data.load(args.data, seeds=args.seeds)
    organs = [hot_organs(c) for c in cases]
    print(f"{len(cases)} normal studies, {sum(map(len, organs))} hot regions", flush=True)
    size = (args.patch,) * 3

    def step(net, report):
        x, y, w, kind = (t.to(args.device) for t in batch(cases, organs, rng, size, args.batch, args.hot_balance,
                                                          args.hot_centre))
        out = net(x)
        loss = loss_fn(out, y, w, ((kind == HOT) | (kind == URINE)).float(), args.hot_l2)
        if not report:
            return loss, ""
        # The learned sigma and the absolute residual (SUV) in the body, hidden voxels apart:
        # the two should meet, and stay well under the lesions' contrast.
        with torch.no_grad():
            sigma = 10 * torch.exp(0.5 * out[:, 1:2])
            resid = 10 * (y - out[:, 0:1]).abs()
            groups = (("urine", kind == URINE), ("hot", kind == HOT), ("blobs", kind == BLOB), ("body", kind == BODY))
            text = " ".join(f"{n} sigma {sigma[m].median():.2f} |r| {resid[m].median():.2f}"
                            for n, m in groups if m.any())
        return loss, text

    def checkpoint(net, steps):
        return {"task": "anomaly", "channels": data.ANOMALY_CHANNELS, "state_dict": net.state_dict(),
                "base": args.base, "norm": args.norm, "steps": steps, "args": vars(args),
                "mask_threshold_suv": data.MASK_THRESHOLD_SUV}

    loop.train(nets.DualBranchAE(base=args.base, norm=args.norm), args, step, checkpoint)

if __name__ == "__main__":
    main()
