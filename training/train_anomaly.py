"""Trains the dual-branch anomaly autoencoder on lesion-free studies (make_data.py --normal).

Voxels above the manifest's mask_threshold_suv are hidden from the PET branch, as the node
hides them at inference, and so are random spheres in the body, so that the network learns to
fill in any tissue (liver, lung, bone, nodes) from its surroundings and the CT. The decoder
predicts the mean and log-variance of the normalised SUV; the loss is L1 on the mean plus the
Gaussian negative log-likelihood of the log-variance, weighted towards the hidden voxels.

    train_anomaly.py --data var/training/normal --out var/training/anomaly.pt [--steps 1500]
"""
import argparse

import numpy as np
import torch

import data
import loop
import nets


def masked_inputs(suv, ct, rng, spheres):
    """suv_masked, suv_mask, ct (normalised) for one patch; random spheres hidden too."""
    mask = suv > data.MASK_THRESHOLD_SUV
    if spheres:
        zz, yy, xx = np.meshgrid(*[np.arange(n) for n in suv.shape], indexing="ij")
        for _ in range(rng.integers(1, 6)):
            c = [rng.integers(8, n - 8) for n in suv.shape]
            r = rng.uniform(1.0, 5.0)  # voxels of 4 mm: 4-20 mm
            mask |= (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
    x = np.stack([
        data.normalise("suv_masked", np.where(mask, 0.0, suv)),
        mask.astype(np.float32),
        data.normalise("ct_hu", ct),
    ])
    return x, mask


def batch(cases, rng, size, n):
    xs, ys, ws = [], [], []
    for _ in range(n):
        case = cases[rng.integers(len(cases))]
        centre = case.body_voxels[rng.integers(len(case.body_voxels))]
        suv = data.crop(case.suv, centre, size, 0.0)
        ct = data.crop(case.ct, centre, size, -1000.0)
        body = data.crop(case.body, centre, size, 0)
        x, mask = masked_inputs(suv, ct, rng, spheres=True)
        xs.append(x)
        ys.append(data.normalise("suv", suv)[None])
        # Hidden voxels are what the detector is for; the body matters more than the air.
        ws.append(np.where(mask, 1.0, np.where(body != 0, 0.1, 0.01)).astype(np.float32)[None])
    return [torch.from_numpy(np.stack(a)) for a in (xs, ys, ws)]


def loss_fn(out, y, w):
    """L1 for the mean, and the Gaussian negative log-likelihood for the log-variance around the
    mean with its gradient stopped: with the plain likelihood a large variance starves the mean of
    gradient and training settles on "everything is uncertain" (Seitzer et al., ICLR 2022)."""
    mean, logvar = out[:, 0:1], out[:, 1:2]
    l1 = (w * (y - mean).abs()).sum() / w.sum()
    nll = (w * 0.5 * (logvar + (y - mean.detach()) ** 2 * torch.exp(-logvar))).sum() / w.sum()
    return l1 + nll


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--seeds", help="train on these seeds only, e.g. 2000-2031")
    p.add_argument("--out", required=True)
    loop.add_args(p)
    args = p.parse_args()
    rng = loop.seeded(args)
    cases = data.load(args.data, seeds=args.seeds)
    print(f"{len(cases)} normal studies", flush=True)
    size = (args.patch,) * 3

    def step(net, report):
        x, y, w = batch(cases, rng, size, args.batch)
        out = net(x)
        if not report:
            return loss_fn(out, y, w), ""
        # The learned sigma and the absolute residual (SUV) in the body, hidden voxels apart:
        # the two should meet, and stay well under the lesions' contrast.
        with torch.no_grad():
            sigma = 10 * torch.exp(0.5 * out[:, 1:2])
            resid = 10 * (y - out[:, 0:1]).abs()
            hidden, body = w == 1.0, w == 0.1
            text = " ".join(f"{n} sigma {sigma[m].median():.2f} |r| {resid[m].median():.2f}"
                            for n, m in (("hidden", hidden), ("body", body)) if m.any())
        return loss_fn(out, y, w), text

    def checkpoint(net, steps):
        return {"task": "anomaly", "channels": ["suv_masked", "suv_mask", "ct_hu"], "state_dict": net.state_dict(),
                "base": args.base, "steps": steps, "args": vars(args), "mask_threshold_suv": data.MASK_THRESHOLD_SUV}

    loop.train(nets.DualBranchAE(base=args.base), args, step, checkpoint)

if __name__ == "__main__":
    main()
