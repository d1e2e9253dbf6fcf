"""The two tokenizer options: ids and round trips checked against their references."""

from __future__ import annotations

import pytest
import sentencepiece
from tokenizers import Tokenizer

from exporter.llm.tokenizer import (
    BPE_SPECIAL_TOKENS,
    BPE_SPECIALS,
    TokenizerChoice,
    convert_sentencepiece,
    save_tokenizer,
    train_bpe,
)

TRICKY = [
    "",
    "a",
    " leading space",
    "\nleading newline",
    "two  spaces,\ttab, trailing space ",
    "unicode: é ß ✓ 日本語 😀\r\n",
]


@pytest.fixture(scope="module")
def shakespeare(data_dir):
    return (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")


def test_sentencepiece_conversion_matches_sentencepiece(data_dir, shakespeare):
    model = data_dir / "llama2_tokenizer.model"
    reference = sentencepiece.SentencePieceProcessor(model_file=str(model))
    converted = convert_sentencepiece(model)
    assert converted.get_vocab_size() == 32000

    for text in [shakespeare[:50_000], shakespeare[-20_000:], *TRICKY]:
        ids = converted.encode(text, add_special_tokens=False).ids
        assert ids == reference.encode(text), text[:40]
        assert converted.decode(ids) == text
    assert converted.encode("Hi").ids == [1, *reference.encode("Hi")]  # <s> first


def test_bpe_has_specials_first_and_round_trips(shakespeare):
    tokenizer = train_bpe(shakespeare[:100_000], vocab_size=600)
    assert tokenizer.get_vocab_size() == 600
    assert [tokenizer.token_to_id(t) for t in BPE_SPECIAL_TOKENS] == [0, 1, 2, 3]
    for text in [shakespeare[-5_000:], *TRICKY]:
        encoding = tokenizer.encode(text)
        assert encoding.ids[0] == 0  # <s>
        assert tokenizer.decode(encoding.ids) == text


def test_bpe_training_is_deterministic(shakespeare):
    first = train_bpe(shakespeare[:50_000], vocab_size=700)
    second = train_bpe(shakespeare[:50_000], vocab_size=700)
    assert first.to_str() == second.to_str()


def test_incremental_decoding_reassembles_the_text(data_dir, shakespeare):
    """The runtime streams text by decoding growing prefixes; the pieces must add up."""
    text = "Then art thou mad? — No, sir: 'tis 😀!\n"
    for tokenizer in (convert_sentencepiece(data_dir / "llama2_tokenizer.model"),
                      train_bpe(shakespeare[:50_000], vocab_size=500)):
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        prefixes = [tokenizer.decode(ids[:n]) for n in range(len(ids) + 1)]
        assert prefixes[-1] == text
        complete = [p for p in prefixes if "\ufffd" not in p]  # half a UTF-8 character
        assert all(b.startswith(a) for a, b in zip(complete, complete[1:]))


def test_saved_tokenizer_reloads(tmp_path, shakespeare):
    tokenizer = train_bpe(shakespeare[:20_000], vocab_size=400)
    save_tokenizer(tokenizer, BPE_SPECIALS, tmp_path, context_length=128)
    reloaded = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert reloaded.encode(TRICKY[5]).ids == tokenizer.encode(TRICKY[5]).ids


def test_unsupported_sentencepiece_settings_are_named(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world, this is a tiny corpus for a unigram model.\n" * 50)
    prefix = tmp_path / "uni"
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=25, model_type="unigram",
        hard_vocab_limit=False, minloglevel=2,
    )
    with pytest.raises(ValueError, match="model_type=UNIGRAM"):
        convert_sentencepiece(prefix.with_suffix(".model"))


def test_choice_validation():
    with pytest.raises(ValueError, match="vocab-size"):
        TokenizerChoice("bpe", vocab_size=10)
    with pytest.raises(ValueError, match="only to the byte-level BPE"):
        TokenizerChoice("spm", vocab_size=1000, spm_model="x.model")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        TokenizerChoice("wordpiece")
