"""Tokenizers for the small language models: a byte-level BPE trained on the corpus, or the
LLaMA-2 SentencePiece model converted to a `tokenizers` tokenizer.json.

Either way the result is one `tokenizers.Tokenizer` that
- adds `<s>` in front of every encoded text (post-processor), like LLaMA's tokenizer, so the
  runtime, which uses `tokenizers` alone, gets the ids the model was trained with;
- decodes back to the exact text it encoded (byte-level BPE, or SentencePiece's byte fallback).

`save_tokenizer` writes tokenizer.json plus a tokenizer_config.json naming the generic
`PreTrainedTokenizerFast`, so `transformers.AutoTokenizer` loads the very same tokenizer.json.
No transformers import here: this module only needs `tokenizers` (and `sentencepiece` to read a
.model file).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

BPE_SPECIAL_TOKENS = ("<s>", "</s>", "<unk>", "<pad>")  # ids 0..3 in a trained BPE
MIN_BPE_VOCAB = 256 + len(BPE_SPECIAL_TOKENS)  # the byte alphabet plus the specials
MAX_BPE_VOCAB = 65536
SPM_SPACE = "\u2581"  # SentencePiece's visible space, "▁"


@dataclass(frozen=True)
class TokenizerChoice:
    """How to get the tokenizer: train a byte-level BPE ("bpe") or convert a .model ("spm")."""

    kind: str  # "bpe" | "spm"
    vocab_size: int | None = None  # bpe only
    spm_model: Path | None = None  # spm only

    def __post_init__(self):
        if self.kind == "bpe":
            if self.vocab_size is None or not MIN_BPE_VOCAB <= self.vocab_size <= MAX_BPE_VOCAB:
                raise ValueError(
                    f"--vocab-size must be between {MIN_BPE_VOCAB} and {MAX_BPE_VOCAB}, "
                    f"got {self.vocab_size}"
                )
        elif self.kind == "spm":
            if self.spm_model is None:
                raise ValueError("a SentencePiece tokenizer needs the path of its .model file")
            if self.vocab_size is not None:
                raise ValueError("--vocab-size applies only to the byte-level BPE tokenizer")
        else:
            raise ValueError(f"unknown tokenizer kind {self.kind!r}: use 'bpe' or 'spm'")


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens a checkpoint's config and generation config refer to."""

    bos: str
    eos: str
    unk: str
    pad: str

    def ids(self, tokenizer: Tokenizer) -> dict[str, int]:
        found = {}
        for role in ("bos", "eos", "unk", "pad"):
            token = getattr(self, role)
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise ValueError(f"tokenizer has no {role} token {token!r}")
            found[role] = token_id
        return found


BPE_SPECIALS = SpecialTokens(bos="<s>", eos="</s>", unk="<unk>", pad="<pad>")
# LLaMA-2 has no padding token; padding is never trained on, so <unk> stands in and the
# vocabulary stays at the original 32000 entries.
SPM_SPECIALS = SpecialTokens(bos="<s>", eos="</s>", unk="<unk>", pad="<unk>")


def build_tokenizer(choice: TokenizerChoice, train_text: str) -> tuple[Tokenizer, SpecialTokens]:
    """The tokenizer `choice` asks for; a BPE is trained on `train_text` only."""
    if choice.kind == "bpe":
        return train_bpe(train_text, choice.vocab_size), BPE_SPECIALS
    return convert_sentencepiece(choice.spm_model), SPM_SPECIALS


def byte_level_bpe(texts: list[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """A GPT-2 style byte-level BPE trained on `texts`: `vocab_size` entries, the special
    tokens first (ids 0, 1, ...); any text round-trips through it."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_bpe(text: str, vocab_size: int) -> Tokenizer:
    """A byte-level BPE with `vocab_size` entries, specials first (ids 0..3), BOS prepended."""
    tokenizer = byte_level_bpe([text], vocab_size, list(BPE_SPECIAL_TOKENS))
    _add_bos(tokenizer, BPE_SPECIALS.bos)
    return tokenizer


def convert_sentencepiece(model_path: Path) -> Tokenizer:
    """The LLaMA-2 style SentencePiece BPE model at `model_path` as a `tokenizers` Tokenizer.

    Encodes exactly like `SentencePieceProcessor.encode` (tested on the corpus): merges are
    ranked by the score of the merged piece, as SentencePiece's BPE picks them; characters
    outside the vocabulary fall back to <0xNN> byte pieces; a "▁" is prepended (dummy prefix)
    and spaces become "▁". Only that family of models is supported; others raise.
    """
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(model_path).read_bytes())
    except Exception as e:  # protobuf's DecodeError has no stable import path
        raise ValueError(f"{model_path}: not a SentencePiece model ({e})") from e
    _check_llama_style(proto, model_path)

    pieces = proto.pieces
    vocab = {piece.piece: i for i, piece in enumerate(pieces)}  # piece -> id
    normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == p.NORMAL}
    ranked = []  # (-score of merged piece, its id, left, right)
    for merged, (score, merged_id) in normal.items():
        for cut in range(1, len(merged)):
            left, right = merged[:cut], merged[cut:]
            if left in normal and right in normal:
                ranked.append((-score, merged_id, left, right))
    merges = [(left, right) for _, _, left, right in sorted(ranked)]

    unk = pieces[proto.trainer_spec.unk_id].piece
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPM_SPACE), normalizers.Replace(" ", SPM_SPACE)]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace(SPM_SPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),  # undo the dummy prefix
        ]
    )
    controls = [p.piece for p in pieces if p.type in (p.CONTROL, p.UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in controls])
    _add_bos(tokenizer, SPM_SPECIALS.bos)
    return tokenizer


def _check_llama_style(proto, model_path: Path) -> None:
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if spec.model_type != spec.BPE:
        problems.append(f"model_type={spec.ModelType.Name(spec.model_type)} (need BPE)")
    if not spec.byte_fallback:
        problems.append("byte_fallback is off")
    if norm.precompiled_charsmap:
        problems.append(f"normalizer {norm.name!r} rewrites characters")
    if norm.remove_extra_whitespaces or not norm.add_dummy_prefix:
        problems.append("whitespace handling differs from LLaMA's")
    if any(p.type == p.USER_DEFINED for p in proto.pieces):
        problems.append("it has user-defined pieces")
    if problems:
        raise ValueError(
            f"{model_path}: only LLaMA-style SentencePiece BPE models are supported: "
            + "; ".join(problems)
        )


def _add_bos(tokenizer: Tokenizer, bos: str) -> None:
    bos_id = tokenizer.token_to_id(bos)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )


def save_tokenizer(
    tokenizer: Tokenizer, specials: SpecialTokens, out_dir: Path, context_length: int
) -> None:
    """Write tokenizer.json and a tokenizer_config.json that AutoTokenizer reads."""
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": specials.bos,
        "eos_token": specials.eos,
        "unk_token": specials.unk,
        "pad_token": specials.pad,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
