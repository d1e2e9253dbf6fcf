"""One int4 decode step under onnxruntime's profiler, three ways: the e2edge package as
written (MatMulNBits), the same package as the runtime now runs it (MatMulInt4Packed,
rewritten at load by runtime/llm/int4_kernel.py), and onnxruntime-genai's int4 model.

The step is set up as in ../2026-12-07-bench-llm/fp32-step-profile/profile_step.py
(imported from there: one KV buffer per layer bound as past and present, position
100, 2 intra-op threads, 10 warm-up and 30 profiled steps); only the session of the
rewritten graph is built differently.

    python step_budget.py E2EDGE_INT4_PACKAGE ORTGENAI_INT4_MODEL_ONNX OUT.json
"""

import importlib.util
import json
import sys
from pathlib import Path

import onnx
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from runtime.kernels.library import register_if_used  # noqa: E402
from runtime.llm.int4_kernel import rewrite  # noqa: E402

spec = importlib.util.spec_from_file_location(
    "profile_step", HERE.parent / "2026-12-07-bench-llm/fp32-step-profile/profile_step.py")
profile_step = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile_step)
as_packaged = profile_step.session
kept: list = []  # the packed weights' OrtValues, alive as long as their sessions


def kernel_session(path: str, prefix: str) -> ort.InferenceSession:
    """The package's graph as the runtime loads it on a CPU with AVX-512 VNNI."""
    adapted = rewrite(onnx.load(path, load_external_data=False), Path(path).parent)
    model = adapted.model
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    register_if_used(options, model)
    kept.extend(adapted.hand_over(options))
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(Path(path).parent))
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


if __name__ == "__main__":
    package, peer, out = sys.argv[1:4]
    model = str(Path(package) / "model.onnx")
    report = {"e2edge_matmulnbits": profile_step.profile(model, profile_step.e2edge_step)}
    profile_step.session = kernel_session
    report["e2edge_kernel"] = profile_step.profile(model, profile_step.e2edge_step)
    profile_step.session = as_packaged
    report["onnxruntime_genai"] = profile_step.profile(peer, profile_step.ortgenai_step)
    report.update(position=profile_step.POSITION, threads=2, steps=profile_step.STEPS,
                  onnxruntime=ort.__version__)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
