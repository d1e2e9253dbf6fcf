"""BitMed ViT's whole forward on the GPU with the project's kernels for its ternary linears,
against the same network in fp16 through torch, for `e2edge bench kernels --vit`.

The 224 px / patch 7 students of exporter/vit (preset "bitmedvit": 1024 tokens of width
512, depth 3, multi-query attention, FFN 2048), ternary-FFN and ternary-all, with the
model's own seeded random initialisation. The forwards differ only in what replaces each
BitLinear (swapped in one place, swap_ternary_linears); patch embedding, LayerNorm,
scaled_dot_product_attention, GELU, pooling and head are the model's own torch code in fp16:

    kernels_w2a8    the W2A8 tensor-core kernel: BitLinear's per-token int8 activation grid
                    quantised in the kernel's prologue, the packed 2-bit weights
    kernels_w2a16   BitLinear's activation quantisation as torch fp16 ops, then the W2A16
                    kernel on the packed weights
    fp16_reference  the network in fp16 through torch: the same activation quantisation,
                    the same ternary weights dequantised to fp16, cuBLAS: the class scores
                    to match
    fp16_dense      plain fp16 linears with those weights and no activation quantisation:
                    what runs without the 2-bit kernels, the speed baseline

Class scores must lie within the package's verification tolerance of fp16_reference
(exporter.vit.onnx_export.tolerance: one int8 step of the logit scale) with the same top-1;
the fp32 network (what an exported package computes) is compared too. Times are GPU time per
image at batch 1 and 16 (launch overhead hidden, e2edge/bench/gpu_timing.py), next to the
paper's 16.9 ms per image on a Jetson Orin Nano.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exporter.vit.config import PRESETS, ViTConfig
from exporter.vit.model import ViT
from exporter.vit.ternary import BitLinear, quantize_activations

PRESET = "bitmedvit"
N_CLASSES = 5  # RetinaMNIST's grades; any count gives the same network body
STUDENTS = ("ffn", "all")  # which linears are ternary
BATCHES = (1, 16)
MAX_BLOCK_SIZE = 128  # what `e2edge export vit` writes by default
PAPER_ORIN_NANO_MS = 16.9  # BitMedViT's time per image on a Jetson Orin Nano
W2A8_MIN_SPEEDUP_BATCH16 = 1.2  # fp16_dense time / kernels_w2a8 time the kernels should reach


@dataclass(frozen=True)
class PackedLinear:
    """A BitLinear's ternary weight in the package layout (runtime/ternary_layout.py)."""

    packed: np.ndarray  # (N, n_blocks, block_size / 4) uint8, 4 codes a byte, low bits first
    scales: np.ndarray  # (N, n_blocks) float32
    k: int
    n: int
    block_size: int

    def dequantized(self) -> np.ndarray:
        from runtime.ternary_layout import dequantize

        return dequantize(self.packed, self.scales, self.k)  # (N, K) float32


def pack_bitlinear(layer: BitLinear) -> PackedLinear:
    """What the exporter writes for the layer: absmean ternary codes, the scale per block."""
    from exporter.vit.onnx_graph import block_size_for
    from runtime.ternary_layout import pack_ternary

    ternary, scale = layer.ternary_weight()  # (N, K) in {-1, 0, 1}, () float
    block = block_size_for(layer.in_features, MAX_BLOCK_SIZE)
    packed, scales = pack_ternary(ternary.cpu().numpy().astype(np.int8), float(scale), block)
    return PackedLinear(packed, scales, layer.in_features, layer.out_features, block)


class DequantizedLinear(nn.Module):
    """torch's linear on the dequantised ternary weight, with or without BitLinear's
    activation quantisation (fp16_reference / fp16_dense)."""

    def __init__(self, layer: PackedLinear, quantize: bool, dtype: torch.dtype, device: str):
        super().__init__()
        weight = torch.from_numpy(layer.dequantized()).to(device=device, dtype=dtype)
        self.register_buffer("weight", weight)  # (N, K)
        self.quantize = quantize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(quantize_activations(x) if self.quantize else x, self.weight)


# (layer, x (M, K) contiguous) -> (M, N): one ternary matmul
TernaryMatmul = Callable[["KernelLinear", torch.Tensor], torch.Tensor]


class KernelLinear(nn.Module):
    """A ternary linear run by `matmul` on the packed weights, tokens flattened to rows.

    The words and scales are plain attributes, not buffers: a model's .to(float16) must
    leave the float32 scales alone."""

    def __init__(self, layer: PackedLinear, matmul: TernaryMatmul, device: str):
        super().__init__()
        from plugins_trt.reference import packed_to_words

        self.layer = layer
        self.matmul = matmul
        words = torch.from_numpy(packed_to_words(layer.packed).copy())
        self.words = words.to(device)  # (N, K_pad/16) int32, 16 codes a word
        self.scales = torch.from_numpy(layer.scales).to(device)  # (N, n_blocks) float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.matmul(self, x.reshape(-1, self.layer.k).contiguous())
        return y.reshape(*lead, self.layer.n)


def kernel_w2a8(module: KernelLinear, x: torch.Tensor) -> torch.Tensor:
    from e2edge.bench import kernels_torch

    layer = module.layer
    return kernels_torch.ternary_matmul(
        x, module.words, module.scales, layer.k, layer.block_size, activation_bits=8
    )


def kernel_w2a16(module: KernelLinear, x: torch.Tensor) -> torch.Tensor:
    from e2edge.bench import kernels_torch

    layer = module.layer
    return kernels_torch.ternary_matmul(
        quantize_activations(x), module.words, module.scales, layer.k, layer.block_size
    )


def reference_w2a8(module: KernelLinear, x: torch.Tensor) -> torch.Tensor:
    """The W2A8 kernel's NumPy reference in its place (CPU: checks everything around it)."""
    from plugins_trt.reference import ternary_matmul_int8

    layer = module.layer
    y = ternary_matmul_int8(x.detach().cpu().numpy(), layer.packed, layer.scales, layer.k)
    return torch.from_numpy(y).to(x.device)


def student(ternary: str, seed: int = 0, preset: str = PRESET) -> ViT:
    config: ViTConfig = PRESETS[preset].model.for_data(N_CLASSES, 3).for_role("student", ternary)
    torch.manual_seed(seed)
    return ViT(config).eval()


def swap_ternary_linears(model: nn.Module, make: Callable[[PackedLinear], nn.Module]) -> int:
    """Replace every BitLinear of `model` by make(its packed weight); returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BitLinear):
                setattr(parent, name, make(pack_bitlinear(child)))
                swapped += 1
    return swapped


def variant(base: ViT, make: Callable[[PackedLinear], nn.Module], dtype: torch.dtype,
            device: str) -> ViT:
    """A copy of `base` in `dtype` on `device` with its BitLinears swapped by `make`."""
    import copy

    model = copy.deepcopy(base)
    swap_ternary_linears(model, make)  # packs from the fp32 weights, before the cast
    return model.to(device=device, dtype=dtype).eval()


def forwards(base: ViT, device: str = "cuda") -> dict[str, ViT]:
    """The four fp16 networks of the module docstring, built from the fp32 `base`."""
    f16 = torch.float16
    makers: dict[str, Callable[[PackedLinear], nn.Module]] = {
        "fp16_dense": lambda p: DequantizedLinear(p, False, f16, device),
        "fp16_reference": lambda p: DequantizedLinear(p, True, f16, device),
        "kernels_w2a16": lambda p: KernelLinear(p, kernel_w2a16, device),
        "kernels_w2a8": lambda p: KernelLinear(p, kernel_w2a8, device),
    }
    return {name: variant(base, make, f16, device) for name, make in makers.items()}


def compare_logits(got: torch.Tensor, want: torch.Tensor) -> dict[str, Any]:
    """max |logit difference| against the package's verification tolerance, and top-1."""
    from exporter.vit.onnx_export import tolerance

    got64, want64 = got.double().cpu(), want.double().cpu()
    diff = float((got64 - want64).abs().max())
    tol = tolerance(float(want64.abs().max()), ternary=True)
    top1 = bool((got64.argmax(1) == want64.argmax(1)).all())
    return {"max_abs_logit_diff": diff, "tolerance": tol, "top1_equal": top1,
            "passed": diff <= tol and top1}


def run_student(ternary: str, batch: int, seed: int = 0) -> dict[str, Any]:
    from e2edge.bench.gpu_timing import gpu_time_us

    base = student(ternary, seed)
    nets = forwards(base)
    fp32 = base.to("cuda")
    gen = torch.Generator(device="cuda").manual_seed(seed + batch)
    size = base.config.image_size
    images32 = torch.randn(batch, 3, size, size, device="cuda", generator=gen)
    images = images32.half()
    with torch.no_grad():
        logits = {name: net(images).float() for name, net in nets.items()}
        logits32 = fp32(images32)
        times = {
            name: gpu_time_us(lambda i, net=net: net(images), iters=20 if batch == 1 else 5,
                              reps=3)["us"]
            for name, net in nets.items()
        }
    tokens = batch * base.config.n_tokens
    row: dict[str, Any] = {"ternary": ternary, "batch": batch, "tokens": tokens}
    for name in ("kernels_w2a8", "kernels_w2a16"):
        row[f"{name}_vs_fp16_reference"] = compare_logits(logits[name], logits["fp16_reference"])
        row[f"{name}_vs_fp32"] = compare_logits(logits[name], logits32)
    row["fp16_reference_vs_fp32"] = compare_logits(logits["fp16_reference"], logits32)
    row["ms_per_image"] = {name: us / batch / 1e3 for name, us in times.items()}
    for name in ("kernels_w2a8", "kernels_w2a16"):
        row[f"speedup_{name}_vs_fp16_dense"] = times["fp16_dense"] / times[name]
    row["passed"] = all(row[f"{n}_vs_fp16_reference"]["passed"]
                        for n in ("kernels_w2a8", "kernels_w2a16"))
    return row


def bench_vit(report: dict[str, Any], write: Callable[[dict[str, Any]], None]) -> None:
    section = report.setdefault("vit", {"preset": PRESET, "n_classes": N_CLASSES,
                                        "paper_orin_nano_ms_per_image": PAPER_ORIN_NANO_MS,
                                        "rows": []})
    for ternary in STUDENTS:
        for batch in BATCHES:
            section["rows"].append(run_student(ternary, batch))
            write(report)
            torch.cuda.empty_cache()


def summarise(report: dict[str, Any], summary: dict[str, Any]) -> None:
    rows = report.get("vit", {}).get("rows", [])
    if not rows:
        return
    summary["vit_passed"] = sum(bool(r["passed"]) for r in rows)
    summary["vit_total"] = len(rows)
    batch16 = [r["speedup_kernels_w2a8_vs_fp16_dense"] for r in rows if r["batch"] == 16]
    if batch16:
        summary["vit_w2a8_batch16_speedup_min"] = min(batch16)
        summary["vit_w2a8_batch16_min_speedup"] = W2A8_MIN_SPEEDUP_BATCH16
        summary["vit_w2a8_batch16_meets_min_speedup"] = min(batch16) >= W2A8_MIN_SPEEDUP_BATCH16
