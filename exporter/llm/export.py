"""`e2edge export llm`: a Hugging Face decoder checkpoint -> an llm model package.

The export verifies itself before the package is moved into place (verify.py):
onnxruntime's logits must match PyTorch's on a sample prompt, and greedy tokens
generated from the package by the runtime must equal transformers' `generate` on the
checkpoint.

Memory: weights are read one tensor at a time and the graph takes them over one by
one; the check runs the package and releases it before the PyTorch reference loads,
so an export needs about the larger of the graph, the package's session and the
reference, not their sum.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter.llm.checkpoint import CheckpointError, read_config, read_weights
from exporter.llm.decoder_spec import DecoderSpec, check_architecture, decoder_spec
from exporter.llm.verify import verify_package
from exporter.llm.weight_quant import (
    BLOCK_FORMATS,
    INT8_ACTIVATIONS,
    WEIGHT_FORMATS,
    EffectiveWeights,
    WeightQuantConfig,
    weight_quant_config,
)
from exporter.memory import release_freed_memory
from exporter.package_writer import PackageWriter
from runtime.package import sha256_file

if TYPE_CHECKING:
    import onnx

@dataclass(frozen=True)
class LLMExportOptions:
    name: str | None = None  # package name; default: the checkpoint directory's name
    verify: bool = True
    logits_tolerance: float = 1e-4  # max |logit difference| allowed (fp32)
    verify_tokens: int = 32  # greedy tokens that must equal transformers' generate
    threads: int = 0
    weights: str = "fp32"  # fp32 | fp16 (Cast to fp32) | int8 | int4 (MatMulNBits)
    block_size: int = 32
    accuracy_level: int = 0  # MatMulNBits: 4 = int8 activations (faster on CPU)
    # gqa: onnxruntime's fused GroupQueryAttention over a shared KV buffer (fastest on
    # onnxruntime); standard: plain ONNX that TensorRT's parser also reads
    attention: str = "gqa"


@dataclass(frozen=True)
class LLMExportResult:
    package: Path
    max_logit_diff: float | None
    greedy_tokens_match: bool | None
    parameters: int
    weight_bytes: int


def export_llm(
    model_dir: str | Path, out: str | Path, options: LLMExportOptions
) -> LLMExportResult:
    import onnx

    quant = _weight_quant(options)
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    check_architecture(config)
    weights = read_weights(model_dir, config)
    spec = decoder_spec(config, weights)
    with PackageWriter(out) as writer:
        add_bos, chat = _write_tokenizer(model_dir, writer.dir, spec)
        weight_dtype = np.float16 if options.weights == "fp16" else np.float32
        model, effective = build_decoder_onnx(spec, weights, quant, options.attention,
                                              weight_dtype)
        onnx_path = writer.dir / "model.onnx"
        onnx.save_model(
            model, str(onnx_path), save_as_external_data=True, all_tensors_to_one_file=True,
            location="model.onnx.data", size_threshold=1024,
        )
        del model  # the weights now live in model.onnx.data only
        release_freed_memory()
        onnx.checker.check_model(str(onnx_path))
        parameters = weights.parameters()
        manifest = _manifest(model_dir, options, spec, config, add_bos, parameters, writer.dir)
        manifest["chat"] = chat
        writer.seal(manifest)
        verification = None
        if options.verify:
            verification = verify_package(model_dir, writer.dir, options, effective)
            manifest["verification"] = dataclasses.asdict(verification)
            writer.seal(manifest)
        package = writer.commit()
    return LLMExportResult(
        package,
        verification.max_abs_logit_diff if verification else None,
        verification.greedy_tokens_match if verification else None,
        parameters, manifest["weight_bytes"],
    )


ATTENTION_KINDS = ("gqa", "standard")


def build_decoder_onnx(
    spec: DecoderSpec,
    weights: Mapping[str, np.ndarray],
    quant: WeightQuantConfig | None = None,
    attention: str = "standard",
    weight_dtype: type = np.float32,
) -> tuple[onnx.ModelProto, EffectiveWeights]:
    """The ONNX decoder with KV cache for `spec`, and the weights it computes with.

    attention: "standard" is plain opset-17 ONNX (onnxruntime and TensorRT,
    onnx_graph.py); "gqa" uses onnxruntime's fused contrib ops and a shared KV buffer
    (onnx_graph_gqa.py).
    weight_dtype: float16 stores the float weight matrices in half precision, each
    widened to float32 by a Cast in the graph.
    The second value maps HF weight names to the float32 weights the graph computes with
    where they differ from the checkpoint's (dequantised, or rounded to fp16; empty for
    fp32; each computed when read), so a PyTorch reference with the same weights can
    check the export.
    """
    from exporter.llm.onnx_graph import DecoderGraphBuilder
    from exporter.llm.onnx_graph_gqa import GqaDecoderGraphBuilder

    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
    builder_class = GqaDecoderGraphBuilder if attention == "gqa" else DecoderGraphBuilder
    builder = builder_class(spec, weights, quant, weight_dtype)
    return builder.build(), builder.effective


def default_accuracy_level(weights: str) -> int:
    """The command's MatMulNBits accuracy level: int8 activations (4) for int8/int4
    weights, as onnxruntime-genai's builder picks for CPU; 0 (none) for float weights."""
    return INT8_ACTIVATIONS if weights in BLOCK_FORMATS else 0


def _weight_quant(options: LLMExportOptions):
    """The MatMulNBits config of an int8/int4 export; None for float weights."""
    if options.weights not in WEIGHT_FORMATS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHT_FORMATS)}, "
                         f"got {options.weights!r}")
    if options.weights in BLOCK_FORMATS:
        return weight_quant_config(options.weights, options.block_size, options.accuracy_level)
    if options.accuracy_level:
        raise ValueError(f"--accuracy-level applies to int8/int4 weights (MatMulNBits), "
                         f"not {options.weights}")
    return None


def _write_tokenizer(model_dir: Path, out_dir: Path,
                     spec: DecoderSpec) -> tuple[bool, dict[str, Any] | None]:
    """Write tokenizer.json and the chat template; return whether the runtime must
    prepend BOS itself, and the manifest's `chat` section (None: no template).

    A checkpoint with only a SentencePiece tokenizer.model is converted through
    transformers' fast tokenizer. BOS: the HF tokenizer's own encoding is the truth;
    if it has BOS where the bare `tokenizers` encoding (no special tokens) has not,
    the runtime adds it. The chat template: exporter/llm/chat_package.py.
    """
    from transformers import AutoTokenizer

    from exporter.llm.chat_package import write_chat_template

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: no loadable tokenizer ({e})") from e
    source = model_dir / "tokenizer.json"
    if source.is_file():
        shutil.copyfile(source, out_dir / "tokenizer.json")
    else:
        hf_tokenizer.backend_tokenizer.save(str(out_dir / "tokenizer.json"))
    from tokenizers import Tokenizer

    bare = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    probe = "Hello world"
    hf_ids = hf_tokenizer(probe)["input_ids"]
    bare_ids = bare.encode(probe, add_special_tokens=False).ids
    chat = write_chat_template(hf_tokenizer, model_dir, out_dir)
    if hf_ids == bare_ids:
        return False, chat
    if spec.bos_token_id is not None and hf_ids == [spec.bos_token_id, *bare_ids]:
        return True, chat
    raise CheckpointError(
        f"{model_dir}: tokenizer.json does not encode like the checkpoint's tokenizer "
        f"({hf_ids[:8]} vs {bare_ids[:8]})"
    )


def _source_checksum(model_dir: Path) -> str:
    """One sha256 over the checkpoint's weight files (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"{path.name} {sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _generation_eos(model_dir: Path, spec: DecoderSpec) -> list[int]:
    ids = list(spec.eos_token_ids)
    path = model_dir / "generation_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("eos_token_id")
        for token in value if isinstance(value, list) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def _manifest(
    model_dir: Path,
    options: LLMExportOptions,
    spec: DecoderSpec,
    config: dict[str, Any],
    add_bos: bool,
    parameters: int,
    package_dir: Path,
) -> dict[str, Any]:
    weight_bytes = (package_dir / "model.onnx.data").stat().st_size
    inputs, kv, kv_out, kv_cache = _decoder_io(spec, options.attention)
    outputs = [{"name": "logits", "dtype": "float32",
                "shape": ["batch", "sequence_length", spec.vocab_size]}]
    for i in range(spec.num_layers):
        for part in ("key", "value"):
            inputs.append({"name": f"past_key_values.{i}.{part}", "dtype": "float32", "shape": kv})
            outputs.append({"name": f"present.{i}.{part}", "dtype": "float32", "shape": kv_out})
    pruning = config.get("e2edge_pruning")
    if pruning is None and len(set(spec.ffn_widths)) > 1:
        pruning = {"method": "unknown", "ffn_widths": list(spec.ffn_widths)}
    return {
        "kind": "llm",
        "name": options.name or model_dir.resolve().name,
        "source": {
            "path": str(model_dir.resolve()),
            "sha256": _source_checksum(model_dir),
            "model_type": spec.model_type,
            "architectures": config.get("architectures"),
        },
        "io": {"inputs": inputs, "outputs": outputs},
        "llm": {
            "model_type": spec.model_type,
            "vocab_size": spec.vocab_size,
            "hidden_size": spec.hidden_size,
            "num_layers": spec.num_layers,
            "num_heads": spec.num_heads,
            "num_kv_heads": spec.num_kv_heads,
            "head_dim": spec.head_dim,
            "ffn_widths": list(spec.ffn_widths),
            "activation": spec.activation,
            "context_length": spec.context_length,
            **({"context_limit": spec.context_limit} if spec.context_limit else {}),
            "sliding_windows": [layer.window for layer in spec.layers],
            "bos_token_id": spec.bos_token_id,
            "eos_token_ids": _generation_eos(model_dir, spec),
            "add_bos_token": add_bos,
            "kv_cache": kv_cache,
            "attention": options.attention,
        },
        "pruning": pruning,
        "quantization": _quantization_facts(options),
        "parameters": parameters,
        "weight_bytes": weight_bytes,
    }


def _decoder_io(spec: DecoderSpec, attention: str):
    """(fixed inputs, past shape, present shape, kv_cache facts) of the exported graph."""
    ids = {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence_length"]}
    cache = {
        "layout": "batch, kv_heads, sequence, head_dim",
        "dtype": "float32",
        "past": "past_key_values.{layer}.{key|value}",
        "present": "present.{layer}.{key|value}",
    }
    if attention == "gqa":
        kv = ["batch", spec.num_kv_heads, "max_sequence_length", spec.head_dim]
        inputs = [
            ids,
            {"name": "seqlens_k", "dtype": "int32", "shape": ["batch"]},
            {"name": "total_sequence_length", "dtype": "int32", "shape": []},
        ]
        cache["mode"] = "shared_buffer"
        cache["note"] = ("past and present are one preallocated buffer per layer; "
                         "seqlens_k[b] = row b's total length - 1")
        return inputs, kv, kv, cache
    kv = ["batch", spec.num_kv_heads, "past_sequence_length", spec.head_dim]
    kv_out = ["batch", spec.num_kv_heads, "total_sequence_length", spec.head_dim]
    inputs = [
        ids,
        {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "total_sequence_length"]},
        {"name": "position_ids", "dtype": "int64", "shape": ["batch", "sequence_length"]},
    ]
    cache["mode"] = "concat"
    return inputs, kv, kv_out, cache


def _quantization_facts(options: LLMExportOptions) -> dict[str, Any]:
    if options.weights == "fp32":
        return {"weights": "fp32", "activations": "fp32"}
    if options.weights == "fp16":
        return {
            "weights": "fp16",
            "activations": "fp32",
            "storage": "float16 initializers, each widened by a Cast to float32 before its op",
            "layers": "attention and FFN projections, embedding, lm_head; norms, biases and "
                      "rotary tables fp32",
        }
    return {
        "weights": options.weights,
        "op": "com.microsoft::MatMulNBits",
        "bits": int(options.weights[3:]),
        "block_size": options.block_size,
        "scheme": "symmetric round-to-nearest per block, default zero point",
        "accuracy_level": options.accuracy_level,
        "activations": "int8 per block" if options.accuracy_level == 4 else "fp32",
        "layers": "attention and FFN projections, lm_head; embeddings and norms fp32",
    }
