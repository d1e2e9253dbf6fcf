"""Perplexity and multiple-choice evaluation: checkpoint (PyTorch) and package (onnxruntime)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exporter.llm.evaluation import (
    EvaluationError,
    PackageScorer,
    TorchScorer,
    choice_accuracy,
    choice_logprob,
    open_scorer,
    perplexity,
    read_choice_tasks,
    text_perplexity,
)
from exporter.text import TokenStream

TEXT = ("First Citizen: Before we proceed any further, hear me speak. "
        "To be, or not to be, that is the question. The quick brown fox jumps over the lazy dog.")


@pytest.fixture(scope="module")
def scorers(tiny_llama_checkpoint, tiny_llama_package):
    return TorchScorer.from_checkpoint(tiny_llama_checkpoint), PackageScorer(tiny_llama_package)


def test_checkpoint_and_package_give_the_same_perplexity(scorers):
    torch_scorer, package_scorer = scorers
    a = text_perplexity(torch_scorer, TEXT * 3, window=48, stride=16)
    b = text_perplexity(package_scorer, TEXT * 3, window=48, stride=16)
    assert a.tokens == b.tokens and a.windows == b.windows > 1
    assert abs(a.perplexity - b.perplexity) / a.perplexity < 0.005
    assert abs(a.perplexity - b.perplexity) / a.perplexity < 1e-4  # fp32 parity, in fact


def test_sliding_window_scores_each_token_once_with_its_window_context(scorers):
    scorer = scorers[0]
    ids = np.asarray(scorer.tokenizer.encode(TEXT)[:60])
    window, stride = 24, 10
    result = perplexity(scorer, TokenStream(ids, None), window, stride)
    # reference: token k is scored by the first window whose end passes k, with context
    # from that window's start (a window starting at k itself has no context for it)
    starts = list(range(0, len(ids), stride))
    expected = []
    for k in range(1, len(ids)):
        begin = next(b for b in starts if b + window > k and b < k)
        expected.append(scorer.token_logprobs(ids[begin : k + 1])[-1])
    assert result.tokens == len(ids) - 1
    assert result.mean_nll == pytest.approx(-np.mean(expected), rel=1e-6)
    # the whole text in one window: exactly the full-context perplexity
    whole = perplexity(scorer, TokenStream(ids, None), window=len(ids), stride=len(ids))
    assert whole.mean_nll == pytest.approx(-scorer.token_logprobs(ids).mean(), rel=1e-6)
    with_bos = perplexity(scorer, TokenStream(ids, 1), window=len(ids) + 1)
    assert with_bos.tokens == len(ids)  # BOS gives the first text token a context


def test_bad_windows_are_rejected(scorers):
    ids = TokenStream(np.arange(20), None)
    with pytest.raises(EvaluationError, match="stride"):
        perplexity(scorers[0], ids, window=8, stride=9)
    with pytest.raises(EvaluationError, match="context length"):
        perplexity(scorers[0], ids, window=10_000)


def test_multiple_choice_agrees_between_checkpoint_and_package(tmp_path, scorers):
    torch_scorer, package_scorer = scorers
    rows = [
        {"context": "To be, or not to", "choices": [" be", " fox", " dog"], "label": 0},
        {"context": "The quick brown", "choices": [" question", " fox"], "label": 1},
        {"context": "hear me ", "choices": ["speak.", "jumps over"], "label": 0},
    ]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_choice_tasks(tasks)
    a, b = choice_accuracy(torch_scorer, records), choice_accuracy(package_scorer, records)
    assert (a.accuracy, a.accuracy_norm, a.records) == (b.accuracy, b.accuracy_norm, 3)
    # a choice's score is the sum of its own tokens' log-probabilities after the context
    total, n = choice_logprob(torch_scorer, "hear me ", "speak.")
    context = torch_scorer.tokenizer.encode("hear me")
    whole = torch_scorer.tokenizer.encode("hear me speak.")
    assert n == len(whole) - len(context)
    assert total == pytest.approx(torch_scorer.token_logprobs(whole)[-n:].sum(), rel=1e-6)


def test_bad_inputs_name_the_problem(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "a", "choices": ["b", "c"], "label": 0}\n{"context": "a"}\n')
    with pytest.raises(EvaluationError, match=r"bad.jsonl:2"):
        read_choice_tasks(bad)
    bad.write_text('{"context": "a", "choices": ["b", "c"], "label": 5}\n')
    with pytest.raises(EvaluationError, match="label"):
        read_choice_tasks(bad)
    with pytest.raises(EvaluationError, match="neither a model package"):
        open_scorer(tmp_path)


def test_eval_ppl_cli_gives_one_number_for_checkpoint_and_package(
        tmp_path, capsys, tiny_llama_checkpoint, tiny_llama_package):
    from e2edge.cli import main

    text = tmp_path / "text.txt"
    text.write_text(TEXT * 4)
    numbers = []
    for model in (tiny_llama_checkpoint, tiny_llama_package):
        out = tmp_path / f"{model.name}.json"
        assert main(["eval", "ppl", "--model", str(model), "--text", str(text),
                     "--window", "64", "--json", str(out)]) == 0
        numbers.append(json.loads(out.read_text())["perplexity"])
    assert "perplexity" in capsys.readouterr().out
    assert numbers[0] == pytest.approx(numbers[1], rel=0.005)
    assert main(["eval", "ppl", "--model", str(tiny_llama_package),
                 "--text", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt" in capsys.readouterr().err
