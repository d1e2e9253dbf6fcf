"""The LLM engine: a package's decoder on a backend, generating token by token.

Two cache layouts, named by the package manifest (llm.kv_cache.mode):
- concat: the plain ONNX graph appends to the past and returns a new present; the
  present stays in the backend between steps (`keep=`), so no cache tensor is copied
  through numpy.
- shared_buffer: the GroupQueryAttention graph writes new keys/values in place into a
  preallocated buffer (runtime/llm/kv_buffer.py) bound as both past and present; rows
  of one buffer can be decoded together (runtime/llm/continuous_batching.py).

A prompt is text, token ids, or a Conversation of chat messages, which the package's
chat template renders (runtime/llm/chat_template.py); generation stops at EOS and at
the template's end-of-turn tokens.

In the daemon every forward pass (a prefill, a decode step) first waits for its turn
on the box (`gate`, runtime/server/core/scheduler.py), so other models get theirs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, create_backend
from runtime.backends.selection import kv_buffer_providers
from runtime.errors import InvalidRequest, PackageError
from runtime.llm.chat_template import ChatTemplate, Conversation, require_template
from runtime.llm.fp32_kernel import count as fp32_count
from runtime.llm.fp32_kernel import rewrite as fp32_rewrite
from runtime.llm.fp32_kernel import why_not as fp32_why_not
from runtime.llm.gqa_fp16 import fp16_attention
from runtime.llm.int4_kernel import rewrite as int4_rewrite
from runtime.llm.int4_kernel import why_not as int4_why_not
from runtime.llm.kv_buffer import SharedKVBuffer
from runtime.llm.sampling import SamplingParams
from runtime.llm.sequence import GenerationEvent, GenerationStats, SequenceState
from runtime.llm.tokenizer import Tokenizer
from runtime.package import ModelPackage, load_package
from runtime.step_gate import UNGATED, StepGate

log = logging.getLogger(__name__)

__all__ = ["DecoderLayout", "GenerationEvent", "GenerationStats", "LLMEngine", "Prompt"]
CACHE_MODES = ("concat", "shared_buffer")
Prompt = str | Sequence[int] | Conversation


@dataclass(frozen=True)
class DecoderLayout:
    """The decoder's IO facts from the manifest."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    eos_token_ids: tuple[int, ...]
    cache_mode: str = "concat"  # concat | shared_buffer

    def past_name(self, layer: int, part: str) -> str:
        return f"past_key_values.{layer}.{part}"

    def present_name(self, layer: int, part: str) -> str:
        return f"present.{layer}.{part}"

    def cache_names(self) -> list[tuple[str, str]]:
        """(past input, present output) per layer and part: each step's present feeds
        the next step's past (or, in a shared buffer, both are the same tensor)."""
        return [
            (self.past_name(i, part), self.present_name(i, part))
            for i in range(self.num_layers)
            for part in ("key", "value")
        ]

    @classmethod
    def from_manifest(cls, manifest: dict) -> DecoderLayout:
        try:
            llm = manifest["llm"]
            layout = cls(
                num_layers=int(llm["num_layers"]),
                num_kv_heads=int(llm["num_kv_heads"]),
                head_dim=int(llm["head_dim"]),
                vocab_size=int(llm["vocab_size"]),
                context_length=int(llm["context_length"]),
                eos_token_ids=tuple(llm.get("eos_token_ids") or ()),
                cache_mode=str((llm.get("kv_cache") or {}).get("mode", "concat")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PackageError(f"manifest.json: llm section is incomplete ({e})") from e
        if layout.cache_mode not in CACHE_MODES:
            raise PackageError(
                f"manifest.json: llm.kv_cache.mode {layout.cache_mode!r} is not one of "
                f"{CACHE_MODES}; a newer e2edge wrote this package")
        return layout


@dataclass(frozen=True)
class KernelRewrite:
    """A load-time rewrite onto one of e2edge's CPU kernels (int4_kernel.py, fp32_kernel.py)."""

    weights: str  # "int4" | "fp32": the setting it follows, the key of its note
    node: str  # the onnxruntime op it replaces
    op: str  # the e2edge op it writes
    count: Callable  # model -> how many nodes it could take
    why_not: Callable  # (providers, setting) -> None, or why not here
    rewrite: Callable  # (model, package_dir) -> AdaptedGraph, or None


KERNEL_REWRITES = (
    KernelRewrite("int4", "MatMulNBits", "MatMulInt4Packed",
                  lambda model: sum(n.op_type == "MatMulNBits" for n in model.graph.node),
                  int4_why_not, int4_rewrite),
    KernelRewrite("fp32", "MatMul", "MatMulF32Packed", fp32_count, fp32_why_not, fp32_rewrite),
)


def _adapt(model, providers: list[str], *, fp16: bool | None, kernels: dict[str, str | None],
           package_dir: Path, shared_cache: bool, notes: dict[str, str]):
    """The graph as the providers run it best: fp16 attention on CUDA (gqa_fp16.py, gqa
    packages), e2edge's int4 and fp32 kernels on a CPU that has them (int4_kernel.py,
    fp32_kernel.py), each as `kernels[weights]` sets it. None: as is. `notes["int4"]` and
    `notes["fp32"]` say what became of the int4 matmuls and the fp32 MatMuls."""
    adapted = None
    if fp16 is None:
        fp16 = bool(providers) and providers[0] == "CUDAExecutionProvider"
    if shared_cache and fp16:
        adapted = fp16_attention(model)
    for kernel in KERNEL_REWRITES:
        nodes = kernel.count(model)
        if not nodes:
            continue
        reason = kernel.why_not(providers, kernels.get(kernel.weights))
        rewritten = kernel.rewrite(adapted or model, package_dir) if reason is None else None
        if rewritten is None:
            why = reason or "no node fits the kernel"
            notes[kernel.weights] = f"onnxruntime {kernel.node} ({why})"
            log.info("%s kernel not used: %s", kernel.weights, notes[kernel.weights])
            continue
        taken = sum(n.op_type == kernel.op for n in rewritten.model.graph.node)
        notes[kernel.weights] = (f"e2edge {kernel.weights} kernel on {taken} of {nodes} "
                                 f"{kernel.node} nodes")
        adapted = rewritten
    return adapted


def _stream_goes_on() -> bool:
    """As a forward pass ends, the stream's next step is ready (after its last one the
    worker takes its next request, if any: close enough)."""
    return True


class LLMEngine:
    """Generates text from an llm package. generate() may run concurrently from threads."""

    kind = "llm"

    def __init__(self, package: ModelPackage, backend: Backend, tokenizer: Tokenizer,
                 chat_template: ChatTemplate | None = None):
        self.package = package
        self.backend = backend
        self.tokenizer = tokenizer
        self.chat_template = chat_template  # None: the package takes no chat messages
        self.layout = DecoderLayout.from_manifest(package.manifest)
        self.end_of_turn_ids = self._end_of_turn_ids()
        self.context_length = self.layout.context_length
        self.backend_name = backend.name
        self.providers = list(backend.providers)
        self.backend_reason = "as configured"  # the daemon's loader says more when it chose
        self.execution = ("shared KV buffer (GroupQueryAttention)" if self.shared_cache
                          else "KV cache concatenated per step")
        self.int4_matmuls = ""  # int4 packages: which kernel runs the MatMulNBits nodes
        self.fp32_matmuls = ""  # fp32 packages: which kernel runs the MatMul nodes
        self.gate: StepGate = UNGATED  # the daemon's scheduler: each forward pass waits its turn
        self._cache_names = self.layout.cache_names()
        self._present = [present for _, present in self._cache_names]

    @classmethod
    def load(
        cls,
        package_path: str | Path,
        *,
        backend: str = "onnxruntime",
        threads: int = 0,
        providers: Sequence[str] | None = None,
        fp16_attention: bool | None = None,
        spin: bool = True,
        int4_kernel: str | None = None,
        fp32_kernel: str | None = None,
    ) -> LLMEngine:
        """`fp16_attention` (gqa packages): GroupQueryAttention and the KV buffer in fp16
        (runtime/llm/gqa_fp16.py); None = when onnxruntime's CUDA provider runs the graph,
        whose attention kernel has no fp32 version. `spin`: onnxruntime's threads
        busy-wait between ops (runtime/backends/cpu_threads.py). `int4_kernel`: "auto"
        (None: $E2EDGE_INT4_KERNEL, else auto) runs int4 MatMulNBits on e2edge's own
        kernel where it is faster (runtime/llm/int4_kernel.py); "off" never. `fp32_kernel`:
        the same for fp32 MatMul ($E2EDGE_FP32_KERNEL; runtime/llm/fp32_kernel.py)."""
        package = load_package(package_path)
        if package.kind != "llm":
            raise PackageError(f"{package.root}: kind is {package.kind!r}, not 'llm'")
        llm = package.manifest.get("llm", {})
        tokenizer = Tokenizer(
            package.file("tokenizer.json"),
            bos_token_id=llm.get("bos_token_id"),
            add_bos=bool(llm.get("add_bos_token", False)),
        )
        shared_cache = DecoderLayout.from_manifest(package.manifest).cache_mode == "shared_buffer"
        if shared_cache:
            providers = kv_buffer_providers(package.root, backend, providers)
        notes: dict[str, str] = {}
        rewrite = partial(_adapt, fp16=fp16_attention,
                          kernels={"int4": int4_kernel, "fp32": fp32_kernel},
                          package_dir=package.root, shared_cache=shared_cache, notes=notes)
        runner = create_backend(backend, package.onnx_path, threads=threads,
                                providers=providers, package=package, rewrite=rewrite,
                                spin=spin)
        engine = cls(package, runner, tokenizer,
                     ChatTemplate.from_manifest(package.root, package.manifest))
        for weights, note in notes.items():  # int4, fp32: which kernel runs those matmuls
            setattr(engine, f"{weights}_matmuls", note)
            engine.execution += f"; {weights} matmuls: {note}"
        return engine

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """What ends a generation (unless ignore_eos): EOS, and the chat template's
        end-of-turn token, whether the prompt was chat messages or not."""
        return self.layout.eos_token_ids + self.end_of_turn_ids

    def _end_of_turn_ids(self) -> tuple[int, ...]:
        """The chat template's end-of-turn tokens that are not EOS already."""
        ids = []
        for token in self.chat_template.end_of_turn if self.chat_template else ():
            token_id = self.tokenizer.token_id(token)
            if token_id is None:
                raise PackageError(f"{self.package.root}: the chat template's end-of-turn "
                                   f"token {token!r} is not in tokenizer.json")
            if token_id not in self.layout.eos_token_ids and token_id not in ids:
                ids.append(token_id)
        return tuple(ids)

    def close(self) -> None:
        """Nothing of its own to stop: the backend's session goes with the last reference."""

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    # ---- one forward pass ---------------------------------------------------------
    @property
    def shared_cache(self) -> bool:
        return self.layout.cache_mode == "shared_buffer"

    def empty_cache(self, batch: int = 1, capacity: int | None = None):
        """A cache for `batch` sequences of up to `capacity` tokens (default: the context)."""
        if self.shared_cache:
            return SharedKVBuffer(self.layout, self.backend, batch,
                                  capacity or self.context_length)
        shape = (batch, self.layout.num_kv_heads, 0, self.layout.head_dim)
        empty = np.zeros(shape, dtype=np.float32)
        return {past: empty for past, _ in self._cache_names}

    def forward(self, input_ids: np.ndarray, past_length: int, cache):
        """input_ids (B, S) -> (logits (B, S, vocab), next cache); cache stays in the backend.

        Every row has `past_length` cached tokens; for rows of different lengths (shared
        buffer only) use step().
        """
        if self.shared_cache:
            totals = [past_length + input_ids.shape[1]] * input_ids.shape[0]
            return self.step(input_ids, totals, cache), cache
        total = past_length + input_ids.shape[1]
        batch = input_ids.shape[0]
        feeds = {
            "input_ids": input_ids,
            "attention_mask": np.ones((batch, total), dtype=np.int64),
            "position_ids": np.tile(np.arange(past_length, total, dtype=np.int64), (batch, 1)),
            **cache,
        }
        out = self.backend.run(feeds, keep=self._present)
        next_cache = {past: out[present] for past, present in self._cache_names}
        return out["logits"], next_cache

    def step(self, input_ids: np.ndarray, totals: Sequence[int], cache: SharedKVBuffer,
             first_slot: int = 0) -> np.ndarray:
        """One pass over slots first_slot.. of a shared buffer; returns the logits.

        Row b feeds input_ids[b] (all rows the same number S of new tokens) and ends at
        totals[b] tokens in its slot: its new tokens take positions totals[b] - S ..
        totals[b] - 1, attending to everything before them in that slot.
        """
        batch, new = input_ids.shape
        if max(totals) > cache.capacity:
            raise InvalidRequest(
                "max_new_tokens",
                f"{max(totals)} tokens do not fit the KV buffer of {cache.capacity}")
        if min(totals) < new:
            raise ValueError(f"totals {list(totals)} shorter than the {new} new tokens")
        past, present = cache.bindings(first_slot, batch)
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "seqlens_k": np.asarray(totals, dtype=np.int32) - 1,
            "total_sequence_length": np.array(max(totals), dtype=np.int32),
            **past,
        }
        return self.backend.run(feeds, into=present)["logits"]

    # ---- generation -----------------------------------------------------------------
    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, Conversation):
            return self.chat_ids(prompt)
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequest("prompt", "must not be empty")
            return self.encode(prompt)
        ids = [int(t) for t in prompt]
        if not ids:
            raise InvalidRequest("prompt", "must not be empty")
        bad = [t for t in ids if not 0 <= t < self.layout.vocab_size]
        if bad:
            raise InvalidRequest(
                "prompt",
                f"token id {bad[0]} is outside the vocabulary [0, {self.layout.vocab_size})",
            )
        return ids

    def chat_ids(self, conversation: Conversation) -> list[int]:
        """The conversation rendered by the package's template, then tokenized."""
        template = require_template(self.chat_template, self.package.name)
        if not conversation.messages:
            raise InvalidRequest("messages", "must hold at least one message")
        ids = self.tokenizer.encode(template.render(conversation.messages), add_bos=False)
        if not ids:
            raise InvalidRequest("messages", "the chat template rendered them as empty text")
        return ids

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[GenerationEvent]:
        """Validate now (raising InvalidRequest), then return the event stream."""
        ids = self.request_ids(prompt, params)
        return self._generate(ids, params, cancelled or (lambda: False))

    def request_ids(self, prompt: Prompt, params: SamplingParams,
                    limit: int | None = None, limit_text: str = "") -> list[int]:
        """Check a request (raising InvalidRequest) and return its prompt's token ids.

        Prompt + max_new_tokens must fit `limit` tokens (default: the context length,
        described by `limit_text` in the message).
        """
        params.validate()
        ids = self.prompt_ids(prompt)
        limit = limit or self.context_length
        if len(ids) + params.max_new_tokens > limit:
            raise InvalidRequest(
                "max_new_tokens",
                f"prompt ({len(ids)} tokens) + max_new_tokens ({params.max_new_tokens}) "
                f"exceeds {limit_text or f'the context length {limit}'}",
            )
        return ids

    def _generate(
        self, ids: list[int], params: SamplingParams, cancelled: Callable[[], bool]
    ) -> Iterator[GenerationEvent]:
        started = time.monotonic()
        sequence = SequenceState(self.tokenizer, self.stop_token_ids, ids, params, started)
        cache = self.empty_cache(capacity=len(ids) + params.max_new_tokens)
        step = self._in_turn(cancelled, np.asarray([ids], dtype=np.int64), 0, cache)
        if step is not None:
            sequence.prefilled(step[2])
        while True:
            if step is None or cancelled():
                yield sequence.cancel()
                return
            logits, cache, _ = step
            event = sequence.advance(logits[0, -1])
            yield event
            if event.finish_reason is not None:
                return
            past_length = len(sequence.history) - 1
            step = self._in_turn(cancelled, np.asarray([[sequence.last_token]], dtype=np.int64),
                                 past_length, cache)

    def _in_turn(self, cancelled: Callable[[], bool], input_ids: np.ndarray, past_length: int,
                 cache):
        """forward() once the gate gives this request its turn: (logits, cache, seconds it
        ran); None when the request was cancelled (deadline, client gone) while it waited:
        it is shed, nothing runs."""
        with self.gate.turn(cancelled, _stream_goes_on) as run:
            if run:
                began = time.monotonic()
                logits, cache = self.forward(input_ids, past_length, cache)
                return logits, cache, time.monotonic() - began
        self.gate.shed(1)
        return None
