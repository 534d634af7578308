"""Where a model's onnxruntime time goes, by operator: one input of SHAPE (random, float32) run
ROUNDS times on two threads without the CPU arena, as the node serves it, with onnxruntime's
profiler on; prints each operator type's mean milliseconds a run and its share.

    profile_ops.py MODEL.onnx N,C,D,H,W [ROUNDS]
      e.g. models/anomaly-ae.onnx 2,4,64,64,64 (one batch of its windows) or
      models/seg-high-specificity.onnx 1,5,232,96,128 (the benchmark study's one window)
"""
import collections
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

path, shape = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
options = ort.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
options.enable_cpu_mem_arena = False
options.enable_profiling = True
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random(shape, dtype=np.float32)
for _ in range(rounds):
    t = time.time()
    session.run(None, {session.get_inputs()[0].name: x})
    print(f"run {time.time() - t:.3f} s")
profile = session.end_profiling()
by_op, nodes = collections.Counter(), collections.Counter()
with open(profile) as f:
    for event in json.load(f):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
os.remove(profile)
total = sum(by_op.values())
for op, us in by_op.most_common():
    print(f"{op:24s} {us / rounds / 1e3:8.1f} ms a run {100 * us / total:5.1f} %  ({nodes[op] // rounds} nodes)")
