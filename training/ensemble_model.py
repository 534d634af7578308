"""Joins exported segmentation models of one recipe into one ONNX file whose output is the mean
of their logits (nnU-Net ensembles its folds the same way at inference), or with --combine max
their maximum (what any member finds stays found, training/README.md item 61), and writes its manifest:
the members' served keys (spacing, windows, mirroring, threshold), which must agree, with the new
file's sha256. A member may take some of the channels of the member with the most (a net without
the CT shape channel beside one with it, item 74): the ensemble takes the widest member's inputs
and hands each member its own. The node then serves the ensemble as any other model.

    ensemble_model.py --members models/seg-truth.model.toml var/training/models/seg-truth-b.model.toml \
        --name seg-truth --version 7.0.0 --out models --description "..."
"""
import argparse
import hashlib
import json
import os
import tomllib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

import export_model

# Keys that say what a model is, not how it is served: they may differ between members.
OWN_KEYS = {"name", "version", "file", "sha256", "description"}


def load(manifest_path):
    with open(manifest_path, "rb") as f:
        m = tomllib.load(f)
    if m["task"] != "segmentation":
        raise SystemExit(f"{manifest_path}: task {m['task']!r}; only segmentation models are ensembled")
    return m, os.path.join(os.path.dirname(manifest_path), m["file"])


def served(m):
    return {k: v for k, v in m.items() if k not in OWN_KEYS | {"inputs"}}


def picks(members):
    """The widest member's index and, per member, the indices of its channels among the widest's
    (None where it takes them all, in order)."""
    widest = max(range(len(members)), key=lambda i: len(members[i]["inputs"]))
    every = members[widest]["inputs"]
    out = []
    for m in members:
        if any(i not in every for i in m["inputs"]):
            raise SystemExit(f"{m['name']} {m['version']} takes channels that {members[widest]['name']} does not")
        index = [every.index(i) for i in m["inputs"]]
        out.append(None if index == list(range(len(every))) else index)
    return widest, out


def join(paths, input_name, output_name, combine, widest, chosen):
    """One graph: every member reads the one input (its own channels of it, `chosen`); the output
    is the members' mean, or their maximum (what any member finds stays found)."""
    models = [onnx.load(p) for p in paths]
    if any((m.ir_version, m.opset_import) != (models[0].ir_version, models[0].opset_import) for m in models):
        raise SystemExit("the members differ in ONNX IR version or opset: export them alike")
    nodes, inits, outs = [], [], []
    for i, (m, index) in enumerate(zip(models, chosen)):
        g = onnx.compose.add_prefix(m, f"m{i}/").graph
        own_input, own_output = f"m{i}/{input_name}", f"m{i}/{output_name}"
        if index is None:
            for n in g.node:
                n.input[:] = [input_name if x == own_input else x for x in n.input]
        else:
            inits.append(helper.make_tensor(f"m{i}/channels", onnx.TensorProto.INT64, [len(index)], index))
            nodes.append(helper.make_node("Gather", [input_name, f"m{i}/channels"], [own_input], axis=1))
        nodes += g.node
        inits += g.initializer
        outs.append(own_output)
        if i == widest:
            graph_input, graph_output = g.input[0], g.output[0]
    if combine == "max":
        nodes.append(helper.make_node("Max", outs, [output_name]))
    else:
        inits.append(helper.make_tensor("ensemble/scale", onnx.TensorProto.FLOAT, [], [1.0 / len(paths)]))
        nodes.append(helper.make_node("Sum", outs, ["ensemble/sum"]))
        nodes.append(helper.make_node("Mul", ["ensemble/sum", "ensemble/scale"], [output_name]))
    graph_input.name, graph_output.name = input_name, output_name
    graph = helper.make_graph(nodes, "ensemble", [graph_input], [graph_output], inits)
    # The members' IR version: onnx's newer default is more than onnxruntime 1.31 reads.
    model = helper.make_model(graph, opset_imports=models[0].opset_import, producer_name="petct-node ensemble_model.py",
                              ir_version=models[0].ir_version)
    onnx.checker.check_model(model)
    return model


def parity(members, chosen, path, channels, input_name, output_name, rng, combine):
    """Largest |ensemble - the members' mean (or maximum)| (onnxruntime both), relative above 1."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    singles = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for p in members]
    worst = 0.0
    for shape in [(1, 48, 48, 48), (1, 40, 72, 56), (2, 16, 8, 24)]:
        x = rng.uniform(-1, 1.5, size=(shape[0], channels) + shape[1:]).astype(np.float32)
        outs = [s.run([output_name], {input_name: x if c is None else x[:, c]})[0] for s, c in zip(singles, chosen)]
        want = np.max(outs, axis=0) if combine == "max" else np.mean(outs, axis=0)
        got = sess.run([output_name], {input_name: x})[0]
        worst = max(worst, float(np.abs(got - want).max() / max(1.0, np.abs(want).max())))
    return worst


def manifest(first_path, name, version, onnx_file, sha, description):
    """The first member's manifest with the ensemble's own keys: export_model.py writes one key a
    line, so those lines are replaced and every served key is kept as written."""
    own = {"name": name, "version": version, "file": os.path.basename(onnx_file), "sha256": sha,
           "description": description}
    lines = [f"# Written by training/ensemble_model.py; {description}"]
    with open(first_path) as f:
        for line in f.read().splitlines()[1:]:
            key = line.split("=", 1)[0].strip()
            lines.append(f"{key} = {export_model.toml_value(own[key])}" if key in own and "=" in line else line)
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", nargs="+", required=True, help="the members' manifests (two or more)")
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--out", required=True, help="folder for NAME.onnx and NAME.model.toml")
    p.add_argument("--description", required=True)
    p.add_argument("--combine", choices=["mean", "max"], default="mean",
                   help="the members' logits averaged, or their maximum (item 61: what any member finds)")
    args = p.parse_args()
    if len(args.members) < 2:
        raise SystemExit("--members: two or more manifests")
    loaded = [load(m) for m in args.members]
    widest, chosen = picks([m for m, _ in loaded])
    first = loaded[widest][0]
    for path, (m, _) in zip(args.members, loaded):
        differ = sorted(k for k in served(first).keys() | served(m).keys() if served(first).get(k) != served(m).get(k))
        if differ:
            raise SystemExit(f"{path} is served differently from {args.members[widest]}: {', '.join(differ)}")
    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, f"{args.name}.onnx")
    members = [f for _, f in loaded]
    if os.path.abspath(onnx_path) in {os.path.abspath(f) for f in members}:
        raise SystemExit(f"{onnx_path} is a member: write the ensemble elsewhere first")
    onnx.save(join(members, first["input_name"], first["output_name"], args.combine, widest, chosen), onnx_path)
    worst = parity(members, chosen, onnx_path, len(first["inputs"]), first["input_name"], first["output_name"],
                   np.random.default_rng(0), args.combine)
    if worst > 1e-5:
        raise SystemExit(f"the ensemble differs from its members' {args.combine} by {worst:.2e} (> 1e-5)")
    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    with open(os.path.join(args.out, f"{args.name}.model.toml"), "w") as f:
        f.write(manifest(args.members[widest], args.name, args.version, onnx_path, sha, args.description))
    print(json.dumps({"onnx": onnx_path, "sha256": sha, "bytes": os.path.getsize(onnx_path),
                      f"max_diff_vs_members_{args.combine}": worst}))


if __name__ == "__main__":
    main()
