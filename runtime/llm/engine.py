"""The LLM engine: a package's decoder on a backend, generating token by token.

The KV cache lives in the backend between steps (`keep=` the present outputs),
so a decode step feeds one token and the previous step's cache handles back in;
no cache tensor is copied through numpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.backends.base import Backend, create_backend
from runtime.errors import InvalidRequest, PackageError
from runtime.llm.sampling import Sampler, SamplingParams
from runtime.llm.tokenizer import StreamingDetokenizer, Tokenizer
from runtime.package import ModelPackage, load_package


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token_s: float  # request start -> first token ready
    prefill_s: float
    decode_s: float  # first token -> last token
    decode_tokens_per_s: float  # (completion_tokens - 1) / decode_s; 0 with < 2 tokens
    started_at: float  # time.monotonic()
    finished_at: float


@dataclass(frozen=True)
class GenerationEvent:
    token_ids: tuple[int, ...]  # new token(s); may be empty on the final event
    text: str  # new text piece ("" while a character or a possible stop string is held)
    finish_reason: str | None = None  # last event only: length | stop | eos | cancelled
    stats: GenerationStats | None = None  # last event only


@dataclass(frozen=True)
class DecoderLayout:
    """The decoder's IO facts from the manifest."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    eos_token_ids: tuple[int, ...]

    def past_name(self, layer: int, part: str) -> str:
        return f"past_key_values.{layer}.{part}"

    def present_name(self, layer: int, part: str) -> str:
        return f"present.{layer}.{part}"

    @classmethod
    def from_manifest(cls, manifest: dict) -> DecoderLayout:
        try:
            llm = manifest["llm"]
            return cls(
                num_layers=int(llm["num_layers"]),
                num_kv_heads=int(llm["num_kv_heads"]),
                head_dim=int(llm["head_dim"]),
                vocab_size=int(llm["vocab_size"]),
                context_length=int(llm["context_length"]),
                eos_token_ids=tuple(llm.get("eos_token_ids") or ()),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PackageError(f"manifest.json: llm section is incomplete ({e})") from e


class LLMEngine:
    """Generates text from an llm package. generate() may run concurrently from threads."""

    def __init__(self, package: ModelPackage, backend: Backend, tokenizer: Tokenizer):
        self.package = package
        self.backend = backend
        self.tokenizer = tokenizer
        self.layout = DecoderLayout.from_manifest(package.manifest)
        self.context_length = self.layout.context_length
        self.backend_name = backend.name
        self.providers = list(backend.providers)
        # (present output, past input) name pairs: each step's cache feeds the next
        self._cache_names = [
            (self.layout.present_name(i, part), self.layout.past_name(i, part))
            for i in range(self.layout.num_layers)
            for part in ("key", "value")
        ]
        self._present = [present for present, _ in self._cache_names]

    @classmethod
    def load(
        cls,
        package_path: str | Path,
        *,
        backend: str = "onnxruntime",
        threads: int = 0,
        providers: Sequence[str] | None = None,
    ) -> LLMEngine:
        package = load_package(package_path)
        if package.kind != "llm":
            raise PackageError(f"{package.root}: kind is {package.kind!r}, not 'llm'")
        llm = package.manifest.get("llm", {})
        tokenizer = Tokenizer(
            package.file("tokenizer.json"),
            bos_token_id=llm.get("bos_token_id"),
            add_bos=bool(llm.get("add_bos_token", False)),
        )
        runner = create_backend(
            backend, package.onnx_path, threads=threads, providers=providers, package=package
        )
        return cls(package, runner, tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    # ---- one forward pass ---------------------------------------------------------
    def empty_cache(self, batch: int = 1) -> dict[str, np.ndarray]:
        shape = (batch, self.layout.num_kv_heads, 0, self.layout.head_dim)
        empty = np.zeros(shape, dtype=np.float32)
        return {
            self.layout.past_name(i, part): empty
            for i in range(self.layout.num_layers)
            for part in ("key", "value")
        }

    def forward(self, input_ids: np.ndarray, past_length: int, cache: dict):
        """input_ids (1, S) -> (logits (1, S, vocab), next cache); cache stays in the backend."""
        total = past_length + input_ids.shape[1]
        feeds = {
            "input_ids": input_ids,
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "position_ids": np.arange(past_length, total, dtype=np.int64)[None, :],
            **cache,
        }
        out = self.backend.run(feeds, keep=self._present)
        next_cache = {past: out[present] for present, past in self._cache_names}
        return out["logits"], next_cache

    # ---- generation -----------------------------------------------------------------
    def prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
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

    def generate(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams,
        cancelled: Callable[[], bool] | None = None,
    ) -> Iterator[GenerationEvent]:
        """Validate now (raising InvalidRequest), then return the event stream."""
        params.validate()
        ids = self.prompt_ids(prompt)
        if len(ids) + params.max_new_tokens > self.context_length:
            raise InvalidRequest(
                "max_new_tokens",
                f"prompt ({len(ids)} tokens) + max_new_tokens ({params.max_new_tokens}) "
                f"exceeds the context length {self.context_length}",
            )
        return self._generate(ids, params, cancelled or (lambda: False))

    def _generate(
        self, ids: list[int], params: SamplingParams, cancelled: Callable[[], bool]
    ) -> Iterator[GenerationEvent]:
        started = time.monotonic()
        sampler = Sampler(params)
        text = _StopText(params.stop)
        detok = StreamingDetokenizer(self.tokenizer)
        eos = () if params.ignore_eos else self.layout.eos_token_ids
        banned = self.layout.eos_token_ids if params.ignore_eos else ()
        history = list(ids)
        logits, cache = self.forward(np.asarray([ids], dtype=np.int64), 0, self.empty_cache())
        prefill_s = time.monotonic() - started
        first_token_at = 0.0
        completion: list[int] = []

        def finish(reason: str, new: tuple[int, ...], piece: str) -> GenerationEvent:
            now = time.monotonic()
            decode_s = now - first_token_at if completion else 0.0
            n = len(completion)
            stats = GenerationStats(
                prompt_tokens=len(ids),
                completion_tokens=n,
                time_to_first_token_s=(first_token_at - started) if n else 0.0,
                prefill_s=prefill_s,
                decode_s=decode_s,
                decode_tokens_per_s=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
                started_at=started,
                finished_at=now,
            )
            return GenerationEvent(new, piece, finish_reason=reason, stats=stats)

        while True:
            if cancelled():
                yield finish("cancelled", (), text.flush(detok.flush()))
                return
            token = sampler(logits[0, -1], history, banned)
            if not completion:
                first_token_at = time.monotonic()
            completion.append(token)
            history.append(token)
            if token in eos:
                yield finish("eos", (token,), text.flush(detok.flush()))
                return
            piece, stopped = text.push(detok.push(token))
            if stopped:
                yield finish("stop", (token,), piece)
                return
            if len(completion) >= params.max_new_tokens:
                yield finish("length", (token,), piece + text.flush(detok.flush()))
                return
            yield GenerationEvent((token,), piece)
            past_length = len(history) - 1
            logits, cache = self.forward(
                np.asarray([[token]], dtype=np.int64), past_length, cache
            )


class _StopText:
    """Streams text while watching for stop strings.

    Text that could still be the start of a stop string is held back, so a client
    never receives part of a stop string; on a match, the text ends before it.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.full = ""
        self.emitted = 0

    def push(self, piece: str) -> tuple[str, bool]:
        """Add a piece; return (text safe to send now, whether a stop string matched)."""
        if not self.stops:
            return piece, False
        search_from = max(0, self.emitted - self.hold)
        self.full += piece
        hits = [i for i in (self.full.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            out = self.full[self.emitted : min(hits)]
            self.emitted = len(self.full)
            return out, True
        safe = max(self.emitted, len(self.full) - self.hold)
        out = self.full[self.emitted : safe]
        self.emitted = safe
        return out, False

    def flush(self, piece: str = "") -> str:
        """The rest of the text at the end of generation (no stop string matched)."""
        out, stopped = self.push(piece)
        if stopped:
            return out
        rest = self.full[self.emitted :]
        self.emitted = len(self.full)
        return out + rest
