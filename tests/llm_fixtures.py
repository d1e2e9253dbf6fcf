"""Tiny random-weight LLaMA and Gemma checkpoints (and packages) built in seconds.

They have a real byte-level BPE tokenizer trained on a few sentences, so every part
of export and generation runs for real; the weights are random (std 0.2 so the
logits are far from uniform and greedy decoding is not a tie-break lottery).
"""

from __future__ import annotations

from pathlib import Path


def make_tiny_checkpoint(
    out: Path,
    arch: str = "llama",
    ffn_widths: list[int] | None = None,
    seed: int = 0,
    num_layers: int = 2,
) -> Path:
    """A random tiny HF checkpoint of `arch` (llama|gemma) at `out`; returns `out`."""
    import torch
    from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM

    from exporter.llm.checkpoint import resize_mlp
    from exporter.llm.random_checkpoint import make_bpe_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    make_bpe_tokenizer(out)
    common = dict(
        vocab_size=300, hidden_size=64, num_hidden_layers=num_layers, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=2, pad_token_id=3, rms_norm_eps=1e-6,
    )
    widths = ffn_widths or [96] * num_layers
    if arch == "llama":
        config = LlamaConfig(intermediate_size=max(widths), tie_word_embeddings=False, **common)
        model_cls = LlamaForCausalLM
    elif arch == "gemma":
        config = GemmaConfig(intermediate_size=max(widths), **common)
        model_cls = GemmaForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = model_cls(config)
    for layer, width in zip(model.model.layers, widths):
        resize_mlp(layer.mlp, width)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    if len(set(widths)) > 1:
        model.config.intermediate_sizes = widths
    model.save_pretrained(out)
    return out


def make_tiny_package(tmp_path: Path, arch: str = "llama", **checkpoint_options) -> Path:
    """A verified llm package exported from a tiny checkpoint; returns the package dir."""
    from exporter.llm.export import LLMExportOptions, export_llm

    checkpoint = make_tiny_checkpoint(Path(tmp_path) / f"{arch}-checkpoint", arch,
                                      **checkpoint_options)
    out = Path(tmp_path) / f"{arch}-package"
    return export_llm(checkpoint, out, LLMExportOptions(name=f"tiny-{arch}")).package
