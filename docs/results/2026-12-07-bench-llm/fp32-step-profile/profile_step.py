"""One fp32 decode step of each side under onnxruntime's profiler: kernel time per op type.

Each graph runs as its runtime runs it: one KV buffer per layer of max length 256 bound
as both past and present (e2edge's runtime; onnxruntime-genai's with its genai_config's
past_present_share_buffer, the position given by the attention mask). Position 100, 2
intra-op threads, 10 warm-up and 30 profiled steps each; writes per-step kernel time by
op type and the LM head's as JSON.

    python profile_step.py E2EDGE_MODEL_ONNX ORTGENAI_MODEL_ONNX OUT.json
"""

import collections
import json
import sys
import tempfile

import numpy as np
import onnxruntime as ort

POSITION, MAX_LENGTH, STEPS = 100, 256, 30


def session(path: str, prefix: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def e2edge_step(s: ort.InferenceSession):
    binding = s.io_binding()
    binding.bind_cpu_input("input_ids", np.array([[5]], np.int64))
    binding.bind_cpu_input("seqlens_k", np.array([POSITION], np.int32))
    binding.bind_cpu_input("total_sequence_length", np.array(POSITION + 1, np.int32))
    bind_shared_kv(s, binding)
    binding.bind_output("logits")
    return lambda: s.run_with_iobinding(binding)


def ortgenai_step(s: ort.InferenceSession):
    binding = s.io_binding()
    binding.bind_cpu_input("input_ids", np.array([[5]], np.int64))
    binding.bind_cpu_input("attention_mask", np.ones((1, POSITION + 1), np.int64))
    bind_shared_kv(s, binding)
    binding.bind_output("logits")
    return lambda: s.run_with_iobinding(binding)


def bind_shared_kv(s: ort.InferenceSession, binding) -> None:
    """Each layer's past and present: one buffer of MAX_LENGTH positions."""
    for i in s.get_inputs():
        if i.name.startswith("past_key_values."):
            kv = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 3, MAX_LENGTH, 64), np.float32))
            binding.bind_ortvalue_input(i.name, kv)
            binding.bind_ortvalue_output(i.name.replace("past_key_values", "present"), kv)


def profile(path: str, make_step) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        s = session(path, f"{tmp}/p")
        step = make_step(s)
        for _ in range(10):
            step()
        for _ in range(STEPS):
            step()
        events = json.load(open(s.end_profiling()))
    per_op: dict[str, list[float]] = collections.defaultdict(list)
    runs = [e["dur"] for e in events if e.get("name") == "model_run"][-STEPS:]
    nodes: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            nodes[e["name"]].append(e["dur"])
            per_op[e["args"]["op_name"]].append(e["dur"])
    total_steps = len(runs) + 10  # the warm-up steps are in the node events too
    op_us = {op: round(sum(d) / total_steps, 1) for op, d in per_op.items()}
    biggest = max(nodes, key=lambda n: np.median(nodes[n]))
    return {"model_run_us_median": float(np.median(runs)),
            "kernel_us_per_step": round(sum(op_us.values()), 1),
            "kernel_us_per_step_by_op": dict(sorted(op_us.items(), key=lambda kv: -kv[1])),
            "lm_head": {"node": biggest.removesuffix("_kernel_time"),
                        "us_median": float(np.median(nodes[biggest]))}}


if __name__ == "__main__":
    ours, peer, out = sys.argv[1:4]
    report = {"e2edge": profile(ours, e2edge_step),
              "onnxruntime_genai": profile(peer, ortgenai_step),
              "position": POSITION, "threads": 2, "steps": STEPS,
              "onnxruntime": ort.__version__}
    json.dump(report, open(out, "w"), indent=2)
    print(json.dumps(report, indent=2))
