"""The package's tokenizer (the `tokenizers` library only) and streaming detokenisation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from runtime.errors import PackageError

REPLACEMENT_CHAR = "\ufffd"


class Tokenizer:
    """Encodes like the exported checkpoint's Hugging Face tokenizer did at export time."""

    def __init__(self, path: Path, bos_token_id: int | None, add_bos: bool):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise PackageError(f"{path}: cannot load tokenizer ({e})") from e
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos and bos_token_id is not None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.special_ids = frozenset(
            i for i, token in self._tok.get_added_tokens_decoder().items() if token.special)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """`add_bos=False` for text that already holds its BOS (a rendered chat template)."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *ids] if add_bos and self.add_bos else ids

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def leading_special_token(self, text: str) -> str | None:
        """The special token `text` starts with; None when it starts otherwise."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return self._tok.id_to_token(ids[0]) if ids and ids[0] in self.special_ids else None

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


class StreamingDetokenizer:
    """Turns a growing list of token ids into text pieces, one call per new token.

    A token can end in the middle of a UTF-8 character (byte-level BPE); such a
    piece decodes to U+FFFD, so it is held back until the character completes.
    Decoding a short window (from `prefix`) keeps each step O(1) and lets
    tokenizers that strip a leading space per call (SentencePiece) still be right.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window decoded for context
        self.read = 0  # ids[:read] have been emitted as text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if after.endswith(REPLACEMENT_CHAR) or len(after) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return after[len(before) :] if len(after) > len(before) else ""
