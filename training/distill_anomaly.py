"""Distils the shipped anomaly detector (instance-normalised, served on 42 overlapping 64³ windows
a study) into a batch-normalised net of the same architecture, which the node serves on one
window a study (patch_fits_grid): about a quarter of the voxels run.

The student starts from the teacher's weights (the ONNX file's initialisers; its instance
normalisations' scales and shifts become the batch normalisations') and learns the teacher's
output on each training patch, a 64³ window placed anywhere, as the node might place one: the
mean and log-variance of the normalised SUV and the z that the node's probability is made of.
The inputs hide what the node hides (voxels above the threshold) and, as the teacher's own
training did, blobs of normal tissue (train_anomaly.hide_spheres), so that "hidden" does not
come to mean "hot". The calibration, the study score and the segmentation nets' prior are to keep
their meaning; a detector trained anew with batch normalisation did not separate the studies
(training/README.md item 38). --check compares the student on whole grids with the teacher as
the node serves it (its Gaussian-blended windows, calibrate_anomaly.reconstruct). --hot-weight
weighs the voxels the prior and the study score are made of more (training/README.md item 78);
--init goes on from a student checkpoint. --served-targets learns the teacher as the node serves
it instead (its blended windows on the whole grid, cached beside each case) from the node's own
inputs, no blobs hidden: the map the score and the prior are read from, not one window's answer
(item 81). --check also gives the study scores' AUROC of both where it holds lesion and normal
studies.

    distill_anomaly.py --teacher models/anomaly-ae.onnx --data var/training/normal var/training/lesion-plain \\
        --seeds 1000-1027,2000-2031 --out var/training/anomaly-distilled.pt --steps 2500 --lr 1e-3 --bf16 \\
        --check 2032-2039,1028-1031
"""
import argparse
import hashlib
import os
import tomllib

import numpy as np
import onnx
import torch
from onnx import numpy_helper

import anomaly_auroc
import calibrate_anomaly
import data
import loop
import nets
import train_anomaly
import window

# The range of z that the node's two probabilities use (prior_z_low 1.9 to z_high 12.5 for the
# shipped detector), with room on both sides: beyond it only the sign of the error matters.
Z_RANGE = (-4.0, 16.0)


def teacher_weights(path):
    """The teacher's parameters by their PyTorch names (export keeps them as initialiser names)."""
    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(path).graph.initializer}


def carrying(weights, base, norm):
    """A DualBranchAE carrying every teacher weight. Batch-normalised (the student), each instance
    normalisation's affine scale and shift become its batch normalisation's, the running statistics
    start at 0 / 1; instance-normalised, it is the teacher itself."""
    net = nets.DualBranchAE(base=base, norm=norm)
    state = net.state_dict()
    missing = [k for k in state if k not in weights and not k.endswith(("running_mean", "running_var",
                                                                       "num_batches_tracked"))]
    if missing:
        raise SystemExit(f"the teacher has no {missing[0]} ({len(missing)} parameters missing): another architecture")
    for k, v in weights.items():
        if k not in state or state[k].shape != v.shape:
            raise SystemExit(f"the teacher's {k} {tuple(v.shape)} does not fit the student")
        state[k] = v
    net.load_state_dict(state)
    return net


def targets(session, case, cache_dir, teacher_sha):
    """The teacher's [2, D, H, W] output on the case's whole grid as the node serves it (its blended
    64³ windows), cached beside the case: what --check compares the student with."""
    path = os.path.join(cache_dir, f"teacher_{teacher_sha[:12]}.npy")
    if os.path.exists(path):
        return np.load(path)
    out = calibrate_anomaly.reconstruct(session, case, 64).astype(np.float32)
    np.save(path + ".tmp.npy", out)
    os.replace(path + ".tmp.npy", path)
    return out


def z_of(x, out):
    """z = (x - mean) * exp(-logvar / 2), as the node computes it (infer::anomaly_probability)."""
    return (x - out[:, 0:1]) * torch.exp(-out[:, 1:2] / 2)


def hot_voxels(case):
    """The body's voxels above the threshold (organs and lesions), found once a case."""
    return np.argwhere((case.suv > data.MASK_THRESHOLD_SUV) & (case.body != 0))


def batch(cases, hots, rng, size, n, hot_centre, served=None):
    """Inputs as the node gives them (voxels above the threshold hidden) with blobs of normal tissue
    hidden as well, and the normalised SUV and the body, for `n` random patches; a share centred on
    a hot voxel of `hots` (organs and lesions, where the prior has to hold). With `served` (each
    case's teacher map as the node serves it) no blob is hidden and the batch also holds that map's
    patch and where the patch lies inside the grid (the map's extent)."""
    xs, suvs, bodies, ys, inside = [], [], [], [], []
    for _ in range(n):
        i = rng.integers(len(cases))
        case, hot = cases[i], hots[i]
        if len(hot) and rng.random() < hot_centre:
            centre = hot[rng.integers(len(hot))]
        else:
            centre = case.body_voxels[rng.integers(len(case.body_voxels))]
        suv = data.crop(case.suv, centre, size, 0.0)
        ct = data.crop(case.ct, centre, size, -1000.0)
        body = data.crop(case.body, centre, size, 0)
        hidden = suv > data.MASK_THRESHOLD_SUV
        if served is None:
            hidden = train_anomaly.hide_spheres(hidden, body, rng)
        else:
            # NaN marks the patch beyond the grid's edge, where the served map has no value.
            y = np.stack([data.crop(c, centre, size, np.nan) for c in served[i]])
            inside.append(np.isfinite(y[:1]).astype(np.float32))
            ys.append(np.nan_to_num(y, nan=0.0))
        xs.append(data.anomaly_inputs(suv, ct, hidden))
        suvs.append(data.normalise("suv", suv)[None])
        bodies.append(body[None].astype(np.float32))
    return [torch.from_numpy(np.stack(a)) for a in (xs, suvs, bodies, ys, inside) if a]


def loss_fn(out, x, y, w, hot_z, hot_weight):
    """L1 of z over its working range, plus the mean and log-variance themselves, weighed by `w`
    (body_weight). Voxels where either z passes hot_z (the prior's lower end:
    those the prior and the study score are made of) weigh 1 + hot_weight in the z term, so that a
    few wrong hot voxels, which the score's hottest 1 mL hangs on, cost more than their share."""
    out = out.float()
    zs = z_of(x, out).clamp(*Z_RANGE)
    zt = z_of(x, y).clamp(*Z_RANGE)
    total = w.sum()
    dz = (zs - zt).abs()
    hot = (torch.maximum(zs, zt).detach() > hot_z).float() * w
    lz = (w * dz).sum() / total
    hot_sum = (hot * dz).sum()
    lh = hot_sum / hot.sum().clamp(min=1)
    lm = (w * (out[:, 0:1] - y[:, 0:1]).abs()).sum() / total
    lv = (w * (out[:, 1:2] - y[:, 1:2]).abs()).sum() / total
    loss = lz + hot_weight * hot_sum / total + 10 * lm + 0.5 * lv
    return loss, (lz, lh, lm, lv)


def body_weight(body, inside=None):
    """The body at full weight and the air around it at 1 %; nothing beyond the grid's edge, where
    a served map has no value (`inside`)."""
    w = 0.01 + 0.99 * body
    return w if inside is None else w * inside


def whole_grid(net, case):
    """The student's output on the case's whole grid, windowed as the node serves a
    batch-normalised net (patch_fits_grid: one window where the grid fits data.SERVE_PATCH)."""
    def predict(b):
        with torch.no_grad():
            return net(torch.from_numpy(b)).float().numpy()

    x = data.anomaly_inputs(case.suv, case.ct, case.suv > data.MASK_THRESHOLD_SUV)
    return window.infer(predict, x, patch=data.SERVE_PATCH, batch_size=1,
                        pad_values=data.air_values(data.ANOMALY_CHANNELS), fit=True)


def check(net, cases, teach, cal):
    """How far the student's z, prior and study score lie from the teacher's, case by case, and
    how well each one's score separates the lesion studies from the normal ones."""
    net.eval()
    scores = []
    prior = (cal["prior_z_low"], cal["prior_z_high"])
    score = (cal["z_low"], cal["z_high"])
    for case, t in zip(cases, teach):
        s = whole_grid(net, case)
        body = case.body != 0
        zt, zs = calibrate_anomaly.z_of(case, t)[body], calibrate_anomaly.z_of(case, s)[body]
        pt, ps = (calibrate_anomaly.probability(z, *prior) for z in (zt, zs))
        on_t, on_s = pt > 0.5, ps > 0.5
        dice = 2 * (on_t & on_s).sum() / max(on_t.sum() + on_s.sum(), 1)
        st, ss = (calibrate_anomaly.top_mean(calibrate_anomaly.probability(z, *score), cal["score_volume_ml"])
                  for z in (zt, zs))
        print(f"check {case.meta['seed']}: z corr {np.corrcoef(zt, zs)[0, 1]:.4f}, |dz| median "
              f"{np.median(np.abs(zt - zs)):.3f} p99 {np.quantile(np.abs(zt - zs), 0.99):.3f}; prior > 0.5 "
              f"{on_t.sum()} / {on_s.sum()} voxels (Dice {dice:.3f}), |dprior| mean {np.abs(pt - ps).mean():.4f}; "
              f"score {st:.3f} / {ss:.3f}", flush=True)
        scores.append((case.meta["normal"], st, ss))
    lesion, normal = ([s for s in scores if s[0] == n] for n in (False, True))
    if lesion and normal:
        aurocs = [anomaly_auroc.auroc([s[k] for s in lesion], [s[k] for s in normal]) for k in (1, 2)]
        print(f"check AUROC over {len(lesion)} lesion and {len(normal)} normal studies: teacher {aurocs[0]:.4f}, "
              f"student {aurocs[1]:.4f}", flush=True)
    net.train()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="the instance-normalised detector's ONNX file")
    p.add_argument("--manifest", help="its manifest, for the calibration --check uses (default: beside --teacher)")
    p.add_argument("--data", nargs="+", required=True, help="case roots (make_data.py), normal and lesion studies")
    p.add_argument("--seeds", help="train on these seeds only, e.g. 1000-1031,2000-2031")
    p.add_argument("--out", required=True)
    p.add_argument("--hot-centre", type=float, default=0.5, help="the share of patches centred on a hot voxel")
    p.add_argument("--hot-weight", type=float, default=0.0,
                   help="the extra weight of voxels whose z passes the prior's lower end (item 78: 20)")
    p.add_argument("--init", help="a student checkpoint of this script to go on from, instead of the teacher's weights")
    p.add_argument("--served-targets", action="store_true",
                   help="learn the teacher's map as the node serves it (cached), not its answer on each patch")
    p.add_argument("--check", help="seeds, not trained on, to compare with the teacher at the end, e.g. 2032-2039")
    loop.add_args(p)
    args = p.parse_args()
    rng = loop.seeded(args)
    sha = hashlib.sha256(open(args.teacher, "rb").read()).hexdigest()
    manifest = args.manifest or args.teacher.removesuffix(".onnx") + ".model.toml"
    cal = tomllib.load(open(manifest, "rb"))["anomaly"]
    weights = teacher_weights(args.teacher)
    teacher = carrying(weights, args.base, "instance").eval()
    cases = [data.Case(f) for root in args.data for f in data.folders(root, args.seeds)]
    hots = [hot_voxels(c) for c in cases]
    print(f"{len(cases)} studies, teacher sha256 {sha[:12]}", flush=True)
    net = carrying(weights, args.base, "batch")
    if args.init:
        net.load_state_dict(torch.load(args.init)["state_dict"])
    size = (args.patch,) * 3

    # The teacher as the node serves it (onnxruntime): the served targets' and the check's.
    session = window.session(args.teacher, args.threads) if args.served_targets or args.check else None
    served = None
    if args.served_targets:
        served = [targets(session, c, c.folder, sha) for c in cases]
        print(f"the teacher's served maps of {len(served)} studies at hand", flush=True)

    def step(net, report):
        parts = [t.to(args.device) for t in batch(cases, hots, rng, size, args.batch, args.hot_centre, served)]
        if served is None:
            (x, suv, body), inside = parts, None
            with torch.no_grad(), torch.autocast(torch.device(args.device).type, enabled=False):
                y = teacher(x)
        else:
            x, suv, body, y, inside = parts
        out = net(x)
        loss, (lz, lh, lm, lv) = loss_fn(out, suv, y, body_weight(body, inside), cal["prior_z_low"], args.hot_weight)
        return loss, (f"|dz| {lz.item():.3f} hot {lh.item():.3f} |dmean| {lm.item():.4f} "
                      f"|dlogvar| {lv.item():.3f}") if report else ""

    def checkpoint(net, steps):
        return {"task": "anomaly", "channels": data.ANOMALY_CHANNELS, "state_dict": net.state_dict(),
                "base": args.base, "norm": "batch", "steps": steps, "args": vars(args),
                "mask_threshold_suv": data.MASK_THRESHOLD_SUV, "teacher_sha256": sha}

    teacher.to(args.device)
    loop.train(net, args, step, checkpoint)
    if args.check:
        checked = [(data.Case(f), f) for root in args.data for f in data.folders(root, args.check)]
        net.to("cpu")
        check(net, [c for c, _ in checked], [targets(session, c, f, sha) for c, f in checked], cal)


if __name__ == "__main__":
    main()
