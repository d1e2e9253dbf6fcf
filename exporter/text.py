"""Text for the language models: name it (a spec), read it, turn it into tokens and windows.

A text spec is `PATH_OR_NAME` or `PATH_OR_NAME@A:B`, where A and B are fractions of
the file's characters: `tinyshakespeare.txt@0:0.9` is its first 90 %, `...@0.9:1`
the held-out rest. A name that is not an existing file is resolved by
`e2edge.data.resolve_data_file` (E2EDGE_DATA_DIR, then the download cache). Specs
joined by `+` name one text made of their parts, joined by a blank line
(`tinyshakespeare.txt@0:0.9+wikitext2_valid.txt@0:0.45`), unless the whole spec is
itself an existing file.

Training, pruning (calibration and fine-tune text) and evaluation all read text here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.llm.tokenizer import Tokenizer

PART_SEPARATOR = "\n\n"  # between the parts of a text made of several
_SLICE = re.compile(r"^(?P<path>.+)@(?P<a>\d*\.?\d*):(?P<b>\d*\.?\d*)$")


class TextError(ValueError):
    """A text (training, calibration or evaluation) cannot give what was asked of it."""


@dataclass(frozen=True)
class TextSpec:
    path: str
    start: float = 0.0  # fraction of the characters
    end: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> TextSpec:
        match = _SLICE.match(spec)
        if match is None:
            return cls(spec)
        start = float(match["a"]) if match["a"] else 0.0
        end = float(match["b"]) if match["b"] else 1.0
        if not 0.0 <= start < end <= 1.0:
            raise TextError(f"{spec}: slice @A:B needs 0 <= A < B <= 1")
        return cls(match["path"], start, end)

    def cut(self, text: str) -> str:
        """This spec's slice of the whole file's text."""
        return text[round(self.start * len(text)) : round(self.end * len(text))]

    def __str__(self) -> str:
        """The spec as a user writes it: the path, with @A:B for a slice."""
        if (self.start, self.end) == (0.0, 1.0):
            return self.path
        return f"{self.path}@{self.start}:{self.end}"


def resolve_text_path(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    try:
        from e2edge.data import resolve_data_file
    except ImportError:
        raise FileNotFoundError(f"{name}: no such text file") from None
    return Path(resolve_data_file(name))


def read_part(part: TextSpec) -> str:
    """The characters of one text part: its file (found by name if need be), cut to its slice."""
    path = resolve_text_path(part.path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TextError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    text = part.cut(text)
    if not text.strip():
        raise TextError(f"{part}: the text is empty")
    return text


def read_text(spec: str) -> str:
    """The text a spec names (see the module docstring)."""
    if "+" in spec and not Path(TextSpec.parse(spec).path).expanduser().is_file():
        return PART_SEPARATOR.join(read_text(part) for part in spec.split("+"))
    return read_part(TextSpec.parse(spec))


@dataclass(frozen=True)
class TokenStream:
    """A text's token ids without BOS, and the BOS id if the model starts texts with one.

    A model whose tokenizer starts every text with BOS was trained seeing BOS at
    position 0, so every window cut from the stream gets one.
    """

    ids: np.ndarray  # (T,) int64
    bos: int | None


def text_stream(tokenizer: Tokenizer, text: str) -> TokenStream:
    ids = tokenizer.encode(text)
    if tokenizer.add_bos:
        return TokenStream(np.asarray(ids[1:], dtype=np.int64), tokenizer.bos_token_id)
    return TokenStream(np.asarray(ids, dtype=np.int64), None)


def token_windows(stream: TokenStream, seq_len: int, samples: int) -> np.ndarray:
    """Up to `samples` non-overlapping windows, spread evenly over the text: (N, seq_len) int64.

    With `bos`, each window is BOS + seq_len - 1 text tokens. A corpus with fewer
    windows gives all it has; one too short for a single window is an error.
    """
    if seq_len < 2:
        raise TextError(f"sequence length must be >= 2, got {seq_len}")
    if samples < 1:
        raise TextError(f"sample count must be >= 1, got {samples}")
    bos = stream.bos
    span = seq_len - (bos is not None)
    available = len(stream.ids) // span
    if available == 0:
        raise TextError(
            f"the text has {len(stream.ids)} tokens, too short for one window of {seq_len} tokens: "
            "give a longer text or a smaller --seq-len"
        )
    picks = np.unique(np.linspace(0, available - 1, num=min(samples, available)).round())
    windows = np.stack([stream.ids[s : s + span] for s in picks.astype(np.int64) * span])
    if bos is not None:
        windows = np.concatenate([np.full((len(windows), 1), bos, np.int64), windows], axis=1)
    return windows  # (N, seq_len)
