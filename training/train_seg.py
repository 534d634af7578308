"""Trains a lesion segmentation network (early fusion of SUV, CT and, unless --no-prior, the
anomaly prior; --channels adds e.g. the soft-tissue CT window) on one annotation source of the
phantoms (make_data.py --models, so the prior is the node's own). Loss: binary cross-entropy plus
soft Dice, and with --blob-weight each lesion's own soft Dice (loss_fn). 60 % of the patches are
centred near a labelled voxel, 20 % on a hot unlabelled one (SUV above 3: brain, heart, kidneys,
bladder, the confounders the readers leave out), the rest anywhere in the body (including
lesion-free studies).

    train_seg.py --data var/training/lesion --labels high_specificity --out var/training/seg-hspec.pt \
        [--validate var/training/validation --validate-every 500] [--norm batch]

With --validate it prints, every so many steps, the Dice of each validation study against the
trained labels on the model grid (the node's windows: the training patch under instance
normalisation, data.SERVE_PATCH fitted to the grid under --norm batch; overlap 0.5; within the body's
bounding box)
and keeps the checkpoint with the best mean beside the last one (`-best.pt`).
"""
import argparse
import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

import data
import loop
import nets
import window

# Hot unlabelled voxels, where false positives come from.
HOT_SUV = 3.0
# A lesion of SUVmax under this on the model grid is faint: the truth's borderline lesions
# (1.3-1.7 times their background) and the low-uptake ones, what the nets miss (item 49).
FAINT_SUV = 3.5


def regions(mask, structure=None):
    """The voxels of each connected region of `mask`."""
    labelled, _ = ndimage.label(mask, structure)
    return [(np.argwhere(labelled[box] == i) + [s.start for s in box]).astype(np.int16)
            for i, box in enumerate(ndimage.find_objects(labelled), start=1)]


def hot_regions(case, label):
    """The voxels of each connected region above HOT_SUV in the body, outside `label`."""
    return regions((case.suv > HOT_SUV) & (label == 0) & (case.body != 0))


def lesion_ids(label):
    """Each lesion of `label` numbered from 1 (18-connectivity, as the evaluation counts them)."""
    return ndimage.label(label != 0, ndimage.generate_binary_structure(3, 2))[0].astype(np.int16)


def lesions(label):
    """The voxels of each lesion of `label` (18-connectivity)."""
    return regions(label != 0, ndimage.generate_binary_structure(3, 2))


def confounder_lesions(case):
    """The voxels of each lesion that truth.json places beside a hot organ (its `confounder`: the
    bladder, a kidney, the heart), as numbered in `case.ids`; its centre voxel alone when the
    labels trained on leave it out."""
    out = []
    for lesion in truth_lesions(case):
        zyx = centre_voxel(case, lesion)
        if lesion["confounder"] and zyx is not None:
            k = case.ids[zyx]
            out.append(np.argwhere(case.ids == k).astype(np.int16) if k else np.array([zyx], dtype=np.int16))
    return out


def truth_lesions(case):
    """truth.json's lesions of `case` (centre, kind, borderline flag)."""
    if case.truth is None:
        raise SystemExit(f"{case.folder}: no truth.json (make_data.py --relabel writes it)")
    return case.truth["lesions"]


def centre_voxel(case, lesion):
    """The model-grid voxel at a truth.json lesion's centre, or None where it lies outside the grid."""
    zyx = data.voxel_of(case, lesion["centre_mm"])
    return zyx if all(0 <= v < n for v, n in zip(zyx, case.ids.shape)) else None


def faint_lesions(case, label):
    """The voxels of each lesion of `label` whose SUVmax on the model grid is under FAINT_SUV."""
    return [v for v in lesions(label) if case.suv[tuple(v.T)].max() < FAINT_SUV]


def sample(cases, rng, size, channels, prior_dropout=0.0, per_lesion=False, confounders=0.0, faint=0.0):
    """A patch's normalised channels, its lesion ids (0 outside the lesions; `lesion_ids`) and its
    target (`case.target`). `confounders`: the share of the hot-region draws centred on a lesion
    beside a hot organ instead (`confounder_lesions`); `faint`: the share of the lesion draws
    centred on a faint lesion (`faint_lesions`), where the study has one."""
    case = cases[rng.integers(len(cases))]
    # Per voxel, a 27 mL lesion draws as many patches as 45 nodes of 0.6 mL; per lesion, as one.
    fg = case.lesions[rng.integers(len(case.lesions))] if per_lesion and case.lesions else case.fg
    u = rng.random()
    if len(fg) and u < 0.6:
        # Drawn by voxel, faint lesions get a third of these patches (36 % of the truth's voxels in
        # studies 1000-1019) and the nets still pass many by, plain in the CT as they are (item
        # 49); here a lesion first, then a voxel in it.
        if faint and case.faint and rng.random() < faint:
            fg = case.faint[rng.integers(len(case.faint))]
        centre = fg[rng.integers(len(fg))] + rng.integers(-size[0] // 3, size[0] // 3 + 1, 3)
    elif len(case.hot) and u < 0.8:
        # A hot region first, then a voxel in it: else the brain and the bladder fill the draw.
        # Only hot regions would teach the net to leave their neighbourhood out (item 29).
        regions_here = case.confounders if case.confounders and rng.random() < confounders else case.hot
        region = regions_here[rng.integers(len(regions_here))]
        centre = region[rng.integers(len(region))]
    else:
        centre = case.body_voxels[rng.integers(len(case.body_voxels))]
    x = np.stack([data.normalise(c, data.crop(v, centre, size, data.AIR[data.CHANNELS[c][0]]))
                  for c, v in zip(channels, case_inputs(case, channels))])
    if prior_dropout and "anomaly_prior" in channels and rng.random() < prior_dropout:
        # The prior is 0 in many lesions (large, low-contrast ones); a net that always sees it
        # learns to wait for it. Without it now and then, SUV and CT must carry the decision.
        x[channels.index("anomaly_prior")] = data.air_values(["anomaly_prior"])[0]
    ids, y = data.crop(case.ids, centre, size, 0), data.crop(case.target, centre, size, 0)
    if rng.random() < 0.5:  # left-right flip: lesions occur on both sides
        x, ids, y = x[..., ::-1], ids[..., ::-1], y[..., ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(ids[None]), np.ascontiguousarray(y[None], dtype=np.float32)


def case_inputs(case, channels):
    """Each channel's source volume (before normalisation) in `case`."""
    sources = {"suv": case.suv, "ct_hu": case.ct, "anomaly_prior": case.prior, "ct_blob": case.blob}
    missing = [c for c in channels if sources[data.CHANNELS[c][0]] is None]
    if missing:
        raise SystemExit(f"{case.folder}: no {', '.join(missing)} (ct_blob: made by make_data.py since item 74)")
    return [sources[data.CHANNELS[c][0]] for c in channels]


def inputs(case, channels):
    return np.stack([data.normalise(c, v) for c, v in zip(channels, case_inputs(case, channels))])


def dice(pred, ref):
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else float(2 * (pred & ref).sum() / total)


def validation_dice(net, case, channels, labels, served, device):
    """Dice of the net's mask (probability 0.5) against `labels` within the body's bounding box, on
    the node's windows (`served`: data.serve_window's window and fit; overlap 0.5)."""
    box = tuple(slice(s.start, s.stop) for s in ndimage.find_objects(case.body)[0])
    predict = lambda batch: net(torch.from_numpy(batch).to(device)).cpu().numpy()
    logits = window.infer(predict, inputs(case, channels)[(slice(None),) + box], patch=served[0],
                          batch_size=1, pad_values=data.air_values(channels), fit=served[1])
    return dice(logits[0] > 0, case.labels[labels][box] != 0)


def initialise(net, path, channels, norm, base):
    """Loads the checkpoint at `path` into `net`. Input channels the checkpoint lacks (e.g. the
    prior, on a no-prior net) get zero weights in the first convolution, so the net starts as
    exactly that net and learns only what the new channels add (training/README.md, item 24)."""
    ck = torch.load(path, map_location="cpu")
    if (ck["norm"], ck["base"]) != (norm, base):
        raise SystemExit(f"--init {path}: norm {ck['norm']}, base {ck['base']}; this run: norm {norm}, base {base}")
    missing = [c for c in ck["channels"] if c not in channels]
    if missing:
        raise SystemExit(f"--init {path}: channels {missing} are not among this run's {channels}")
    state = dict(ck["state_dict"])
    first = "encoder.blocks.0.0.weight"
    weight = torch.zeros_like(net.state_dict()[first])
    for i, c in enumerate(ck["channels"]):
        weight[:, channels.index(c)] = state[first][:, i]
    state[first] = weight
    net.load_state_dict(state)
    print(f"initialised from {path} ({ck['steps']} steps, channels {ck['channels']})", flush=True)


@contextlib.contextmanager
def pet_blank(net, x, channels):
    """Blanks the PET channels of batch `x` (SUV in any window, and the prior, which is made from
    the SUV) as outside the body, and keeps that batch out of batch normalisation's running
    statistics, which the served net uses and which must stay those of PET and CT together. The
    nets give lesions plain in the CT but faint in the PET a probability of 0.00 (training/README.md
    items 31, 49, 72): they decide on the PET; a batch without it makes the CT decide."""
    pet = [i for i, c in enumerate(channels) if data.CHANNELS[c][0] in ("suv", "anomaly_prior")]
    for i, value in zip(pet, data.air_values([channels[i] for i in pet])):
        x[:, i] = float(value)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * this batch's: unchanged
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def mark_faint(case, kind="suvmax"):
    """Negates the ids of the faint lesions of `case.ids`, so that loss_fn can weigh them
    (--faint-weight); returns how many of how many. Faint (--faint-kind): SUVmax on the model grid
    under FAINT_SUV, or those truth.json flags borderline (the lesion at each one's centre voxel),
    which hold most of the volume the nets miss: 92 of the 445 training lesions, 88 of them also
    under FAINT_SUV (training/README.md item 71)."""
    n = int(case.ids.max())
    if kind == "borderline":
        centres = [centre_voxel(case, lesion) for lesion in truth_lesions(case) if lesion["borderline"]]
        faint = np.unique([case.ids[zyx] for zyx in centres if zyx is not None and case.ids[zyx] > 0])
    else:
        peaks = ndimage.maximum(case.suv, case.ids, index=np.arange(1, n + 1)) if n else []
        faint = np.flatnonzero(np.asarray(peaks) < FAINT_SUV) + 1
    case.ids[np.isin(case.ids, faint)] *= -1
    return len(faint), n


def loss_fn(logits, ids, y, blob_weight=0.0, faint_weight=1.0):
    """Binary cross-entropy plus soft Dice over the batch against `y` (0/1, or the label
    fraction); with `blob_weight`, plus that times the mean soft Dice of each lesion of `ids`
    alone (blob loss, Kofler et al. 2022: each lesion scored with the other lesions' voxels left
    out), so that a missed 0.5 mL lesion costs as much as a missed 20 mL one rather than 1/40th
    of it. With `faint_weight`, the voxels and the own Dice of a faint lesion (a negative id,
    `mark_faint`) count that many times: what the nets miss are these, given a probability near
    0 (training/README.md item 55), not near misses."""
    logits = logits.float()  # under --bf16: the Dice's sums over a whole batch need float32
    weight = torch.where(ids < 0, faint_weight, 1.0) if faint_weight != 1 else None
    bce = F.binary_cross_entropy_with_logits(logits, y, weight=weight)
    p = torch.sigmoid(logits)
    inter = (p * y).sum()
    loss = bce + 1 - (2 * inter + 1) / (p.sum() + y.sum() + 1)
    if not blob_weight:
        return loss
    blobs = []
    for b in range(ids.shape[0]):
        for k in torch.unique(ids[b]).tolist():
            if k == 0:
                continue
            own = y[b] * (ids[b] == k)
            pk = p[b] * ((ids[b] == 0) | (ids[b] == k))
            blobs.append((faint_weight if k < 0 else 1) * (1 - 2 * (pk * own).sum() / (pk.sum() + own.sum())))
    return loss + blob_weight * torch.stack(blobs).mean() if blobs else loss


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, nargs="+", help="case roots (lesion and normal studies)")
    p.add_argument("--seeds", help="train on these seeds only, e.g. 1000-1079,2000-2009")
    p.add_argument("--labels", required=True, choices=["high_sensitivity", "high_specificity", "truth"])
    p.add_argument("--out", required=True)
    p.add_argument("--no-prior", action="store_true", help="the ablation: without the anomaly prior")
    p.add_argument("--channels", default="suv,ct_hu,anomaly_prior",
                   help="input channels in order (data.CHANNELS); --no-prior drops anomaly_prior")
    p.add_argument("--prior-dropout", type=float, default=0.0,
                   help="the fraction of patches whose prior channel is blanked (as outside the body)")
    p.add_argument("--pet-dropout", type=float, default=0.0,
                   help="the fraction of batches whose PET channels (SUV and the prior) are blanked, so the CT "
                        "alone must find the lesions it shows (pet_blank)")
    p.add_argument("--per-lesion", action="store_true",
                   help="patches on the labels: a lesion first, then a voxel in it (default: any labelled voxel)")
    p.add_argument("--confounders", type=float, default=0.0,
                   help="the share of the hot-region patches centred on a lesion beside a hot organ (truth.json)")
    p.add_argument("--faint", type=float, default=0.0,
                   help="the share of the lesion patches centred on a lesion of SUVmax under FAINT_SUV")
    p.add_argument("--faint-weight", type=float, default=1.0,
                   help="how many times a faint lesion (--faint-kind) counts in the loss (loss_fn)")
    p.add_argument("--faint-kind", choices=["suvmax", "borderline"], default="suvmax",
                   help="the lesions --faint-weight weighs: SUVmax under FAINT_SUV on the model grid, or "
                        "those truth.json flags borderline (mark_faint)")
    p.add_argument("--soft-labels", action="store_true",
                   help="train on the label fraction on the model grid (make_data.py), not its 0/1 label")
    p.add_argument("--blob-weight", type=float, default=0.0,
                   help="weight of the per-lesion Dice (loss_fn); 0: the batch's loss alone")
    p.add_argument("--norm", choices=["batch", "instance"], default="instance",
                   help="batch: served on data.SERVE_PATCH windows, larger than the patch (nets.norm_layer)")
    p.add_argument("--init", help="start from this checkpoint (same norm and base); channels it lacks start at zero weight")
    p.add_argument("--validate", nargs="*", default=[], help="case roots to validate on (never trained on)")
    p.add_argument("--validate-every", type=int, default=500)
    loop.add_args(p)
    args = p.parse_args()
    if args.faint_kind != "suvmax" and args.faint_weight == 1:
        p.error("--faint-kind chooses the lesions --faint-weight weighs; give --faint-weight too")
    if not 0 <= args.pet_dropout <= 1:
        p.error(f"--pet-dropout is a share of the batches, from 0 to 1 (not {args.pet_dropout})")
    rng = loop.seeded(args)
    channels = [c for c in args.channels.split(",") if not (args.no_prior and c == "anomaly_prior")]
    with_prior = "anomaly_prior" in channels
    fraction = args.labels if args.soft_labels else None
    cases = [c for root in args.data for c in data.load(root, with_prior, args.seeds, fraction)]
    for c in cases:
        # Only for the labels trained on.
        c.fg = np.argwhere(c.labels[args.labels] != 0).astype(np.int16)
        c.hot = hot_regions(c, c.labels[args.labels])
        # Soft targets: each lesion with the fringe of its fraction below 0.5.
        c.target = c.fraction if args.soft_labels else c.labels[args.labels]
        c.ids = lesion_ids(c.target > (0.02 if args.soft_labels else 0))
        c.lesions = lesions(c.labels[args.labels]) if args.per_lesion else []
        c.confounders = confounder_lesions(c) if args.confounders else []
        c.faint = faint_lesions(c, c.labels[args.labels]) if args.faint else []
        c.faint_of = mark_faint(c, args.faint_kind) if args.faint_weight != 1 else (0, 0)
    print(f"{len(cases)} studies, channels {channels}, labels {args.labels}", flush=True)
    if args.faint:
        print(f"faint lesions: {sum(len(c.faint) for c in cases)} in {sum(bool(c.faint) for c in cases)} studies", flush=True)
    if args.faint_weight != 1:
        faint, total = np.sum([c.faint_of for c in cases], axis=0)
        print(f"lesions weighed {args.faint_weight} times as faint ({args.faint_kind}): {faint} of {total}", flush=True)
    if args.pet_dropout:
        print(f"PET channels blanked in {args.pet_dropout:.0%} of the batches (pet_blank)", flush=True)
    size = (args.patch,) * 3

    def step(net, report):
        patches = [sample(cases, rng, size, channels, args.prior_dropout, args.per_lesion, args.confounders,
                          args.faint)
                   for _ in range(args.batch)]
        x, ids, y = (torch.from_numpy(np.stack(a)).to(args.device) for a in zip(*patches))
        blank = args.pet_dropout and rng.random() < args.pet_dropout
        with pet_blank(net, x, channels) if blank else contextlib.nullcontext():
            return loss_fn(net(x), ids, y, args.blob_weight, args.faint_weight), ""

    def checkpoint(net, steps):
        return {"task": "segmentation", "channels": channels, "labels": args.labels, "state_dict": net.state_dict(),
                "base": args.base, "norm": args.norm, "steps": steps, "args": vars(args)}

    validation = [c for root in args.validate for c in data.load(root, with_prior=with_prior)]
    best = {"dice": -1.0, "path": args.out.removesuffix(".pt") + "-best.pt"}

    def validate(net, steps):
        served = data.serve_window(args.norm, args.patch)
        dices = [validation_dice(net, c, channels, args.labels, served, args.device) for c in validation]
        mean = float(np.mean(dices))
        if mean > best["dice"]:
            best["dice"] = mean
            torch.save(checkpoint(net, steps), best["path"])
        cases = ", ".join(f"{c.meta['seed']} {d:.3f}" for c, d in zip(validation, dices))
        print(f"validation step {steps}: Dice {mean:.3f} ({cases}); best {best['dice']:.3f}", flush=True)

    net = nets.UNet(len(channels), 1, base=args.base, norm=args.norm)
    if args.init:
        initialise(net, args.init, channels, args.norm, args.base)
    loop.train(net, args, step, checkpoint, validate if validation else None)

if __name__ == "__main__":
    main()
