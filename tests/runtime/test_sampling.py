"""The numpy sampler and the streaming detokenizer."""

from __future__ import annotations

import numpy as np

from runtime.llm.sampling import Sampler, SamplingParams
from runtime.llm.tokenizer import StreamingDetokenizer, Tokenizer


def test_top_k_and_top_p_restrict_the_support():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    top_k = Sampler(SamplingParams(temperature=1.0, top_k=2, seed=0))
    assert {top_k(logits, []) for _ in range(200)} == {0, 1}
    top_p = Sampler(SamplingParams(temperature=1.0, top_p=0.9, seed=0))
    assert {top_p(logits, []) for _ in range(300)} == {0, 1, 2}


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([0.7, 0.2, 0.1], dtype=np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, seed=1))
    counts = np.bincount([sampler(logits, []) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.7, 0.2, 0.1], atol=0.03)


def test_repetition_penalty_and_banned_tokens():
    logits = np.array([2.0, 1.9, -1.0], dtype=np.float32)
    assert Sampler(SamplingParams())(logits, []) == 0
    assert Sampler(SamplingParams(repetition_penalty=1.2))(logits, [0]) == 1
    assert Sampler(SamplingParams())(logits, [], banned=[0, 1]) == 2


def test_streaming_detokenizer_reassembles_multibyte_text(tiny_llama_package):
    tokenizer = Tokenizer(tiny_llama_package / "tokenizer.json", bos_token_id=1, add_bos=False)
    text = "Energy ⚡ per token — ça coûte 🙂 the lazy dog."
    ids = tokenizer.encode(text)
    stream = StreamingDetokenizer(tokenizer)
    pieces = [stream.push(t) for t in ids] + [stream.flush()]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)
