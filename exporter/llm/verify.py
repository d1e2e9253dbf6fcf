"""The export's check: the package against the checkpoint in PyTorch (transformers).

onnxruntime's logits must match PyTorch's on a sample prompt, and greedy tokens generated
from the package by the runtime must equal transformers' `generate` on the checkpoint.
The package runs first and is released before the float32 reference loads, so the
check needs the larger of the two, not their sum.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from exporter.errors import ExportVerificationError
from exporter.llm.checkpoint import read_weights
from exporter.llm.int8_activation_reference import quantize_linear_inputs
from exporter.llm.weight_quant import BLOCK_FORMATS, INT8_ACTIVATIONS, EffectiveWeights
from exporter.memory import release_freed_memory

if TYPE_CHECKING:
    from exporter.llm.export import LLMExportOptions

log = logging.getLogger(__name__)
# With int8 activations (accuracy level 4) the package may differ from the emulating
# reference by this many times what float32 rounding alone moves the reference
# (_rounding_noise; onnxruntime's own difference measured 0.77x of it on the demo LLaMA
# and 1.04x on a 30-layer SmolLM2-shaped model).
FLIP_NOISE_FACTOR = 3.0
JITTER = 2.0 ** -22  # about two float32 ulps, relative
JITTER_RUNS = 3

SAMPLE_PROMPT = "The quick brown fox jumps over the lazy dog. To be, or not to be:"


@dataclass(frozen=True)
class Verification:
    """What the export check found (written to the manifest as it is)."""

    max_abs_logit_diff: float
    logits_tolerance: float  # the bound applied (it depends on the weights' arithmetic)
    greedy_tokens_checked: int
    # True: all equal; False: they parted at a near tie (near_tie_at); None: not compared
    greedy_tokens_match: bool | None
    near_tie_at: int | None = None


def _reference_model(model_dir: Path, effective: EffectiveWeights | None,
                     int8_block_size: int | None = None):
    """The checkpoint in PyTorch, with the package's dequantised or fp16-rounded weights;
    with `int8_block_size`, its quantised linears see int8-block inputs as MatMulNBits'
    accuracy level 4 computes them."""
    from exporter.llm.checkpoint import load_torch_model, torch_weight_name

    model = load_torch_model(model_dir, effective)
    if int8_block_size:
        weights = read_weights(model_dir)
        names = {torch_weight_name(weights, name) for name in effective or ()}
        quantize_linear_inputs(model, names, int8_block_size)
    return model


def _rounding_noise(model, ids: list[int], logits: np.ndarray) -> float:
    """How far float32 rounding alone moves the int8-activation reference's logits.

    Every embedding value is moved by about two float32 ulps (seeded random signs) and
    the logits' largest change is taken over a few such runs: each int8 code within
    float noise of a rounding boundary may flip, as it may between onnxruntime's float
    arithmetic and PyTorch's, and deep models carry such flips to the logits. (A
    float64 run measures the same, 0.013 vs 0.016 and 0.031 vs 0.036 on the demo
    LLaMA and the SmolLM2-shaped model, at twice the model's memory.)"""
    import torch

    embeddings = model.get_input_embeddings()
    noise = 0.0
    for seed in range(JITTER_RUNS):
        generator = torch.Generator().manual_seed(seed)

        def jitter(_module, _inputs, out, generator=generator):
            signs = torch.sign(torch.randn(out.shape, generator=generator))
            return out * (1 + JITTER * signs)

        handle = embeddings.register_forward_hook(jitter)
        try:
            with torch.no_grad():
                moved = model(torch.tensor([ids])).logits.numpy()
        finally:
            handle.remove()
        noise = max(noise, float(np.abs(moved - logits).max()))
    return noise


def verify_package(
    model_dir: Path,
    package_dir: Path,
    options: LLMExportOptions,
    effective: EffectiveWeights | None = None,
) -> Verification:
    """Compare the package with the checkpoint; raise ExportVerificationError on mismatch.

    A quantised package is compared with the checkpoint whose weights are replaced
    by the dequantised ones, an fp16 package with the checkpoint whose weights are
    rounded to fp16 and back, so the check stays exact: it tests the graph, and the
    rounding's own cost is measured by `e2edge eval ppl` instead. With int8
    activations (accuracy level 4) the checkpoint's quantised linears also see their
    inputs on onnxruntime's int8 grid (exporter/llm/int8_activation_reference.py), so
    that check is as exact as float rounding allows: a value within float noise of a
    rounding boundary may take the neighbouring int8 code, one step of 1/127 of its
    block, and deep models carry such flips to the logits. The logits may differ by one
    int8 step of their own scale, max|logit| / 127, or by FLIP_NOISE_FACTOR times what
    float32 rounding alone moves the reference (_rounding_noise), whichever is more.
    Levels 1-3 (float compute types this check does not emulate) are held to 2 % of
    the logits' range, without the greedy-token check.

    Greedy tokens must equal transformers' generate; they may part only at a step
    where the reference's own top two are within the logits tolerance (a near tie,
    which float noise may break either way), and the comparison ends there.

    The package runs as written (int4 on onnxruntime's MatMulNBits, fp32 on its MatMul),
    not on the runtime's load-time kernels (runtime/llm/int4_kernel.py, fp32_kernel.py),
    so a package checks the same on every workstation; the kernels are held to
    onnxruntime's by their own tests.
    """
    from runtime.llm.engine import LLMEngine

    engine = LLMEngine.load(package_dir, threads=options.threads, int4_kernel="off",
                            fp32_kernel="off")
    ids = engine.encode(SAMPLE_PROMPT)[: engine.context_length // 2]
    n = 0 if _not_emulated(options) else min(options.verify_tokens,
                                             engine.context_length - len(ids))
    package = _package_run(engine, ids, n)
    del engine  # the package's session goes before the float32 reference comes
    release_freed_memory()
    int8_activations = (options.weights in BLOCK_FORMATS
                        and options.accuracy_level == INT8_ACTIVATIONS)
    model = _reference_model(model_dir, effective,
                             options.block_size if int8_activations else None)
    diff, tolerance = _compare_logits(package, model, ids, options, int8_activations)
    if _not_emulated(options):
        return Verification(diff, tolerance, 0, None)
    return _compare_greedy(package, model, ids, diff, tolerance)


@dataclass(frozen=True)
class _PackageRun:
    """What the package computed on the sample prompt."""

    logits: np.ndarray  # (1, S, vocab)
    greedy: list[int]  # its greedy continuation
    pad_token_id: int


def _package_run(engine, ids: list[int], n: int) -> _PackageRun:
    """The package's logits on `ids` and its `n` greedy tokens after them."""
    from runtime.llm.sampling import SamplingParams

    cache = engine.empty_cache(capacity=len(ids))  # not the whole context's KV buffer
    logits, _ = engine.forward(np.asarray([ids], dtype=np.int64), 0, cache)
    greedy = []
    if n:
        params = SamplingParams(max_new_tokens=n, temperature=0.0, ignore_eos=True)
        greedy = [t for event in engine.generate(ids, params) for t in event.token_ids]
    eos = engine.layout.eos_token_ids
    return _PackageRun(logits, greedy, eos[0] if eos else 0)


def _compare_logits(package: _PackageRun, model, ids: list[int], options: LLMExportOptions,
                    int8_activations: bool) -> tuple[float, float]:
    """(max |logit difference| on the sample prompt, the tolerance it met); raises on more."""
    import torch

    with torch.no_grad():
        torch_logits = model(torch.tensor([ids])).logits.numpy()
    diff = float(np.abs(package.logits - torch_logits).max())
    tolerance = options.logits_tolerance
    if int8_activations:
        tolerance += max(float(np.abs(torch_logits).max()) / 127,
                         FLIP_NOISE_FACTOR * _rounding_noise(model, ids, torch_logits))
    if _not_emulated(options):
        tolerance = 0.02 * float(torch_logits.max() - torch_logits.min())
    if not diff <= tolerance:
        raise ExportVerificationError(
            f"onnxruntime logits differ from PyTorch by {diff:.3g} "
            f"(> tolerance {tolerance:g}) on the sample prompt"
        )
    return diff, tolerance


def _not_emulated(options: LLMExportOptions) -> bool:
    """MatMulNBits accuracy levels 1-3: float compute types the reference does not copy."""
    return options.weights in BLOCK_FORMATS and options.accuracy_level in (1, 2, 3)


def _compare_greedy(package: _PackageRun, model, ids: list[int], diff: float,
                    tolerance: float) -> Verification:
    """Greedy tokens of the package against transformers' generate (see verify_package)."""
    import torch

    ours, n = package.greedy, len(package.greedy)
    with torch.no_grad():
        generated = model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False, max_new_tokens=n, min_new_tokens=n,
            pad_token_id=package.pad_token_id, output_logits=True, return_dict_in_generate=True,
        )
    reference = generated.sequences[0, len(ids):].tolist()
    if ours != reference:
        first = next(i for i, (a, b) in enumerate(zip(ours, reference)) if a != b)
        step_logits = generated.logits[first][0]
        margin = float(step_logits[reference[first]] - step_logits[ours[first]])
        if not margin <= tolerance:
            raise ExportVerificationError(
                f"greedy tokens from the package differ from transformers generate at token "
                f"{first}: {ours[first:first + 4]} vs {reference[first:first + 4]} (the "
                f"reference prefers its token by {margin:.3g}, > tolerance {tolerance:g})"
            )
        log.info("verified: max |logit diff| %.3g; greedy tokens match up to token %d, "
                 "where the reference's top two are %.3g apart (a near tie)",
                 diff, first, margin)
        return Verification(diff, tolerance, n, False, near_tie_at=first)
    log.info("verified: max |logit diff| %.3g, %d greedy tokens match", diff, n)
    return Verification(diff, tolerance, n, True)
