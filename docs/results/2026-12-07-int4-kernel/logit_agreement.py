"""How far the int4 kernel's logits are from MatMulNBits', next to how far MatMulNBits'
own two paths (its GEMM for a prompt, its GEMV for a decode step) are from each other.

Both compute the same int8-activation arithmetic; they differ in float summation order,
and an activation that lands near a rounding boundary of its int8 grid then rounds the
other way in a later layer. On the random-weight SmolLM2-135M-shaped package this moves
logits by about 1 %. Writes logit-agreement.json beside this file.

    python logit_agreement.py PACKAGE
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from e2edge.bench.llm import prompt_ids  # noqa: E402
from runtime.llm.engine import LLMEngine  # noqa: E402
from runtime.llm.sampling import SamplingParams  # noqa: E402


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.abs(a - b).max() / np.abs(b).max()), 6)


def main(package: str) -> dict:
    engines = {name: LLMEngine.load(package, threads=2, int4_kernel=name)
               for name in ("off", "auto")}
    first = engines["off"]
    ids = prompt_ids(first.tokenizer.encode, first.layout.vocab_size, 32)
    report: dict = {"package": package, "prompt_tokens": len(ids),
                    "int4_matmuls": {k: e.int4_matmuls for k, e in engines.items()}}
    params = SamplingParams(max_new_tokens=128, ignore_eos=True)
    tokens = {k: [t for ev in e.generate(ids, params) for t in ev.token_ids]
              for k, e in engines.items()}
    mismatch = next((i for i in range(128) if tokens["off"][i] != tokens["auto"][i]), None)
    report["greedy_first_mismatch_of_128"] = mismatch
    sequence = np.asarray([ids + tokens["off"][:mismatch or 128]])
    logits = {k: e.forward(sequence, 0, e.empty_cache())[0][0] for k, e in engines.items()}
    report["kernel_vs_matmulnbits_relative_max_diff"] = relative(logits["auto"], logits["off"])
    if mismatch is not None:
        last = logits["off"][-1]
        top = np.argsort(last)[-2:][::-1]
        report["matmulnbits_top2_margin_at_mismatch"] = round(float(last[top[0]] - last[top[1]]), 5)
        report["logit_std_at_mismatch"] = round(float(last.std()), 4)
    for name, engine in engines.items():  # the last position, as one prompt or one step
        cache = engine.empty_cache(capacity=sequence.shape[1] + 1)
        _, cache_after = engine.forward(sequence[:, :-1], 0, cache)
        step, _ = engine.forward(sequence[:, -1:], sequence.shape[1] - 1,
                                 cache if cache_after is None else cache_after)
        report[f"{name}_prompt_vs_step_relative_max_diff"] = relative(step[0, -1],
                                                                       logits[name][-1])
    return report


if __name__ == "__main__":
    result = main(sys.argv[1])
    Path(__file__).with_name("logit-agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
