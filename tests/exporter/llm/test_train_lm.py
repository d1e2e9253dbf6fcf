"""`e2edge train lm`: real training steps on a slice of tinyshakespeare, real HF checkpoints."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from e2edge.cli import main

CORPUS_CHARS = 40_000
SAMPLE = "ROMEO:\nBut, soft! what light through yonder window breaks?\n  It is the east."


@pytest.fixture(scope="module")
def corpus(data_dir, tmp_path_factory):
    """The first 40 000 characters of tinyshakespeare (4 000 held out)."""
    text = (data_dir / "tinyshakespeare.txt").read_text(encoding="utf-8")[:CORPUS_CHARS]
    path = tmp_path_factory.mktemp("corpus") / "shakespeare_slice.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _train(out, corpus, *extra: str) -> dict:
    argv = ["train", "lm", "--corpus", str(corpus), "--out", str(out), "--threads", "1"]
    assert main([*argv, *extra]) == 0
    return json.loads((out / "train_report.json").read_text())


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_llama(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "llama"
    report = _train(out, corpus, "--arch", "llama", "--preset", "tiny", "--steps", "40")
    return out, report


def test_tiny_llama_learns(tiny_llama):
    _, report = tiny_llama
    assert report["steps"] == 40 and not report["stopped_early"]
    assert report["first_train_loss"] > 6.0  # about ln(512) at initialisation
    assert report["final_train_loss"] < report["first_train_loss"] - 1.0
    assert report["heldout_ppl"] < report["unigram_ppl"]


def test_checkpoint_loads_with_transformers(tiny_llama):
    out, report = tiny_llama
    assert {p.name for p in out.iterdir()} >= {
        "config.json", "model.safetensors", "generation_config.json",
        "tokenizer.json", "tokenizer_config.json", "train_report.json",
    }
    assert not list(out.parent.glob(f".{out.name}.*"))  # the temporary directory was renamed

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.max_position_embeddings == 64
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 3)
    assert model.generation_config.eos_token_id == 1
    assert sum(p.numel() for p in model.parameters()) == report["params"]

    # The runtime uses tokenizers alone: it must see exactly what transformers sees.
    ids = tokenizer(SAMPLE)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == 0
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(SAMPLE).ids == ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == SAMPLE

    generated = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert generated.shape == (1, len(ids) + 8)


def test_same_seed_same_weights_other_seed_other_weights(tiny_llama, corpus, tmp_path):
    out, _ = tiny_llama
    again = tmp_path / "again"
    _train(again, corpus, "--arch", "llama", "--preset", "tiny", "--steps", "40")
    assert _sha256(again / "model.safetensors") == _sha256(out / "model.safetensors")
    assert _sha256(again / "tokenizer.json") == _sha256(out / "tokenizer.json")

    other = tmp_path / "other"
    _train(other, corpus, "--arch", "llama", "--preset", "tiny", "--steps", "40", "--seed", "1")
    assert _sha256(other / "model.safetensors") != _sha256(out / "model.safetensors")


def test_tiny_gemma_with_llama2_sentencepiece(corpus, data_dir, tmp_path):
    out = tmp_path / "gemma"
    spm = str(data_dir / "llama2_tokenizer.model")
    report = _train(out, corpus, "--arch", "gemma", "--preset", "tiny", "--steps", "12",
                    "--tokenizer", spm)
    assert report["final_train_loss"] < report["first_train_loss"]

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "GemmaForCausalLM"
    assert model.config.hidden_act == "gelu_pytorch_tanh"
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.vocab_size == 32000
    assert (model.config.bos_token_id, model.config.eos_token_id) == (1, 2)

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(SAMPLE)["input_ids"]
    assert ids[0] == 1
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(SAMPLE).ids == ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == SAMPLE


def test_demo_preset_runs_a_few_steps(corpus, tmp_path):
    out = tmp_path / "demo"
    report = _train(out, corpus, "--arch", "llama", "--preset", "demo", "--steps", "2")
    assert report["preset"] == "demo" and report["steps"] == 2
    assert 5e6 <= report["params"] <= 30e6
    config = json.loads((out / "config.json").read_text())
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    assert config["vocab_size"] == report["tokenizer"]["vocab_size"]


def test_missing_corpus_is_one_clear_line(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "lm", "--corpus", str(tmp_path / "nope.txt"), "--out", str(out)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "nope.txt: no such file" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_too_short_corpus_is_refused_and_nothing_written(tmp_path, capsys):
    corpus = tmp_path / "short.txt"
    corpus.write_text("To be, or not to be.\n" * 5)
    out = tmp_path / "out"
    rc = main(["train", "lm", "--corpus", str(corpus), "--out", str(out), "--preset", "tiny"])
    assert rc == 1
    assert "corpus too short" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [corpus]


def test_bad_options_are_refused(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["train", "lm", "--corpus", str(corpus), "--out", str(out), "--preset", "tiny"]
    assert main([*base, "--vocab-size", "100"]) == 1
    assert "--vocab-size must be between" in capsys.readouterr().err
    assert main([*base, "--tokenizer", str(corpus)]) == 1  # a text file is no SentencePiece model
    assert "not a SentencePiece model" in capsys.readouterr().err
    assert main([*base, "--steps", "0"]) == 1
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert not out.exists()


def test_refuses_to_overwrite_a_foreign_directory(corpus, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    rc = main(["train", "lm", "--corpus", str(corpus), "--out", str(out), "--preset", "tiny"])
    assert rc == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_int4_weights_cost_under_5_percent_perplexity_on_a_trained_model(tiny_llama, corpus,
                                                                         tmp_path):
    """int4 weights (MatMulNBits) keep held-out perplexity within 5 % of fp32."""
    from exporter.llm.evaluation import PackageScorer, text_perplexity
    from exporter.llm.export import LLMExportOptions, export_llm

    checkpoint, _ = tiny_llama
    heldout = corpus.read_text(encoding="utf-8")[-4000:]
    ppl = {}
    for weights in ("fp32", "int4"):
        package = export_llm(checkpoint, tmp_path / weights,
                             LLMExportOptions(weights=weights, verify=False)).package
        ppl[weights] = text_perplexity(PackageScorer(package), heldout, window=64,
                                       stride=32).perplexity
    assert ppl["int4"] != ppl["fp32"]  # the weights really are quantised
    assert abs(ppl["int4"] - ppl["fp32"]) / ppl["fp32"] < 0.05, ppl


def test_a_corpus_of_several_parts_splits_each_part(corpus, data_dir, tmp_path):
    wiki = f"{data_dir / 'wikitext2_valid.txt'}@0:0.02"
    out = tmp_path / "two"
    report = _train(out, corpus, "--corpus", wiki, "--preset", "tiny", "--steps", "2")
    parts = report["corpus"]["parts"]
    assert [p["slice"] for p in parts] == [[0.0, 1.0], [0.0, 0.02]]
    assert report["corpus"]["path"] == f"{corpus} + {data_dir / 'wikitext2_valid.txt'}@0.0:0.02"
    texts = [corpus.read_text(encoding="utf-8")]
    full = (data_dir / "wikitext2_valid.txt").read_text(encoding="utf-8")
    texts.append(full[: round(0.02 * len(full))])
    assert [p["chars"] for p in parts] == [len(t) for t in texts]
    # Each part keeps its own last 10 % out of training: both held-out tails are scored.
    heldout = "\n\n".join(t[int(0.9 * len(t)):] for t in texts)
    train = "\n\n".join(t[: int(0.9 * len(t))] for t in texts)
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert report["corpus"]["heldout_tokens"] == len(
        tokenizer.encode(heldout, add_special_tokens=False).ids)
    assert report["corpus"]["train_tokens"] == len(
        tokenizer.encode(train, add_special_tokens=False).ids)


def test_an_empty_corpus_slice_is_refused(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "lm", "--corpus", f"{corpus}@0.5:0.5", "--out", str(out)])
    assert rc == 1
    assert "slice @A:B needs 0 <= A < B <= 1" in capsys.readouterr().err
    assert not out.exists()
