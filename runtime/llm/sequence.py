"""One request's decoding state: sampling, EOS and stop strings, streaming text, timing.

The engine's single-stream loop and the continuous batcher both drive sequences
through this, one logits row per step, so a request behaves the same either way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.llm.sampling import Sampler, SamplingParams
from runtime.llm.tokenizer import StreamingDetokenizer, Tokenizer


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


class SequenceState:
    """The tokens of one request so far, and what to tell its client after each step."""

    def __init__(self, tokenizer: Tokenizer, eos_token_ids: Sequence[int], ids: list[int],
                 params: SamplingParams, started: float):
        self.params = params
        self.prompt_tokens = len(ids)
        self.history = list(ids)  # prompt + completion
        self.completion: list[int] = []
        self.started = started
        self.prefill_s = 0.0
        self.first_token_at = 0.0
        self.finished = False
        self._sampler = Sampler(params)
        self._text = _StopText(params.stop)
        self._detok = StreamingDetokenizer(tokenizer)
        self._eos = () if params.ignore_eos else tuple(eos_token_ids)
        self._banned = tuple(eos_token_ids) if params.ignore_eos else ()

    @property
    def last_token(self) -> int:
        return self.history[-1]

    def prefilled(self, seconds: float) -> None:
        self.prefill_s = seconds

    def advance(self, logits: np.ndarray) -> GenerationEvent:
        """Sample the next token from this step's logits row; the event says if it is over."""
        token = self._sampler(logits, self.history, self._banned)
        if not self.completion:
            self.first_token_at = time.monotonic()
        self.completion.append(token)
        self.history.append(token)
        if token in self._eos:
            return self._finish("eos", (token,), self._text.flush(self._detok.flush()))
        piece, stopped = self._text.push(self._detok.push(token))
        if stopped:
            return self._finish("stop", (token,), piece)
        if len(self.completion) >= self.params.max_new_tokens:
            return self._finish(
                "length", (token,), piece + self._text.flush(self._detok.flush()))
        return GenerationEvent((token,), piece)

    def cancel(self) -> GenerationEvent:
        return self._finish("cancelled", (), self._text.flush(self._detok.flush()))

    def _finish(self, reason: str, new: tuple[int, ...], piece: str) -> GenerationEvent:
        self.finished = True
        now = time.monotonic()
        n = len(self.completion)
        decode_s = now - self.first_token_at if n else 0.0
        stats = GenerationStats(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=n,
            time_to_first_token_s=(self.first_token_at - self.started) if n else 0.0,
            prefill_s=self.prefill_s,
            decode_s=decode_s,
            decode_tokens_per_s=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
            started_at=self.started,
            finished_at=now,
        )
        return GenerationEvent(new, piece, finish_reason=reason, stats=stats)


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
