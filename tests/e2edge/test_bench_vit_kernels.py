"""The whole-ViT harness of `e2edge bench kernels --vit` where there is no GPU: which layers
it swaps and how it packs them for the BitMed ViT students, and the whole forward on the CPU
with the W2A8 kernel's NumPy reference in the kernel's place (everything around the kernel,
end to end). The kernels themselves run in it on a GPU only."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from e2edge.bench import vit_kernels  # noqa: E402
from exporter.vit.ternary import BitLinear  # noqa: E402


@pytest.mark.parametrize(("ternary", "count"), [("ffn", 6), ("all", 18)])
def test_bitmed_vit_students_swap_every_ternary_linear(ternary, count):
    model = vit_kernels.student(ternary)
    assert model.config.n_tokens == 1024 and model.config.width == 512
    shapes = []

    def record(layer: vit_kernels.PackedLinear):
        n_blocks = -(-layer.k // layer.block_size)
        assert layer.packed.shape == (layer.n, n_blocks, layer.block_size // 4)
        assert layer.scales.shape == (layer.n, n_blocks) and layer.scales.dtype == np.float32
        shapes.append((layer.k, layer.n, layer.block_size))
        return torch.nn.Identity()

    assert vit_kernels.swap_ternary_linears(model, record) == count
    assert not any(isinstance(m, BitLinear) for m in model.modules())
    ffn = [(512, 2048, 128), (2048, 512, 128)] * 3
    attention = [(512, 512, 128), (512, 64, 128), (512, 64, 128), (512, 512, 128)]
    want = ffn if ternary == "ffn" else (attention + ffn[:2]) * 3
    assert shapes == want


@pytest.mark.parametrize("ternary", ["ffn", "all"])
def test_the_forward_with_the_w2a8_reference_in_the_kernels_place_is_the_network(ternary):
    model = vit_kernels.student(ternary, preset="mnist28")
    swapped = vit_kernels.variant(
        model, lambda p: vit_kernels.KernelLinear(p, vit_kernels.reference_w2a8, "cpu"),
        torch.float32, "cpu",
    )
    images = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(images), swapped(images)
    check = vit_kernels.compare_logits(got, want)  # BitLinear's straight-through forward
    assert check["passed"], check  # rounds x + (q(x) - x): a rare flip of one int8 step


@pytest.mark.parametrize("quantize", [True, False])
def test_the_torch_networks_it_times_against(quantize):
    """fp16_reference (BitLinear's activation grid on the dequantised weights) is the
    network; fp16_dense (no activation quantisation) is a different one, off by about the
    quantisation noise. Checked in float32 on the CPU."""
    model = vit_kernels.student("all", preset="mnist28")
    rebuilt = vit_kernels.variant(
        model, lambda p: vit_kernels.DequantizedLinear(p, quantize, torch.float32, "cpu"),
        torch.float32, "cpu",
    )
    images = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        check = vit_kernels.compare_logits(rebuilt(images), model(images))
    if quantize:
        assert check["passed"], check
    else:
        assert check["max_abs_logit_diff"] > 1e-5, check
