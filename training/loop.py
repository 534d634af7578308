"""What the training scripts share: their command-line knobs, seeding, and the optimisation loop
(AdamW, cosine decay to 2 % of the learning rate, a running loss every 50 steps, a checkpoint
every 250 steps and at the end, and an optional look at validation data every so many steps)."""
import math
import time

import numpy as np
import torch


def add_args(p):
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--base", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, or cuda where a GPU is (the same steps, faster)")
    p.add_argument("--bf16", action="store_true",
                   help="forward passes in bfloat16 (autocast; the weights, the loss and validation stay float32)")


def bf16_convolutions():
    """Whether oneDNN has bfloat16 convolutions on this CPU (avx512, natively with avx512_bf16 or
    amx). On an avx2-only CPU it has none, and a --bf16 step of the chain takes about a minute, not
    half a second (training/README.md item 66)."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def seeded(args):
    """Seeds torch, sets its threads; the numpy generator for sampling patches."""
    if args.bf16 and torch.device(args.device).type == "cpu" and not bf16_convolutions():
        raise SystemExit(f"--bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bfloat16 "
                         "convolutions, so each step would take forty times as long as in float32; train without "
                         "--bf16 (float32: another path of arithmetic, so another draw of the chain, "
                         "training/README.md item 58) or on a CPU with avx512")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    return np.random.default_rng(args.seed)


def train(net, args, step_fn, checkpoint, validate=None):
    """`step_fn(net, report)` returns the loss of one batch and, when `report`, a text for the log
    line; `checkpoint(net, steps)` the dict saved to `args.out`; `validate(net, steps)`, if given,
    runs every `args.validate_every` steps and at the end."""
    # Channels-last 3D: oneDNN's convolutions on the CPU run 1.4-1.75x faster a step in this layout
    # (training/README.md, item 27); the arithmetic is the same up to float rounding.
    net.to(args.device, memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    t0, step, running = time.time(), 0, None
    while step < args.steps:
        frac = step / args.steps  # cosine decay
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        report = (step + 1) % 50 == 0
        # bfloat16 convolutions: 1.4x faster a step on this CPU (avx512_bf16; training/README.md, item 29).
        with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16):
            loss, text = step_fn(net, report)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if report:
            print(f"step {step} loss {running:.4f} {time.time() - t0:.0f} s {text}".rstrip(), flush=True)
        if step % 250 == 0 or step == args.steps:
            # Also along the way, to look at a partly trained model.
            torch.save(checkpoint(net, step), args.out)
        if validate and (step % args.validate_every == 0 or step == args.steps):
            net.eval()
            with torch.no_grad():
                validate(net, step)
            net.train()
    print(f"saved {args.out} after {step} steps, {time.time() - t0:.0f} s", flush=True)
