"""`e2edge prune` end to end on a tiny checkpoint, and its errors on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from e2edge.cli import main
from exporter.llm.checkpoint import CheckpointError, load_torch_model
from exporter.magrip.ffn import find_ffns
from exporter.text import TextError, TextSpec, read_text

FAST = ["--seq-len", "32", "--samples", "6", "--mask-steps", "4", "--batch-size", "3"]


@pytest.fixture(scope="module")
def calib(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text((data_dir / "tinyshakespeare.txt").read_text()[:6000])
    return path


def test_prune_cli_writes_a_loadable_pruned_checkpoint(tmp_path, capsys, calib,
                                                       tiny_llama_checkpoint):
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(tiny_llama_checkpoint), "--calib", f"{calib}@0:0.5",
                 "--ratio", "0.25", "--out", str(out), "--train-text", f"{calib}@0.5:1",
                 "--finetune-steps", "3", "--finetune-seq-len", "32", *FAST])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "FFN widths [96, 96] ->" in printed and "peak memory" in printed
    pruning = json.loads((out / "config.json").read_text())["e2edge_pruning"]
    mask = pruning["mask"]
    assert f"mask refinement: best at step {mask['best_step']} of {mask['steps']}," in printed
    assert mask["steps"] <= 4 and mask["checks"][0][0] == 0
    assert sum(pruning["ffn_widths"]) == 144
    assert pruning["finetune"]["steps"] == 3 and pruning["calibration"]["windows"] == 6
    assert pruning["peak_rss_mib"] > 0
    model = load_torch_model(out)
    assert [m.down_proj.in_features for m in find_ffns(model)] == pruning["ffn_widths"]


@pytest.mark.parametrize("args,message", [
    (["--ratio", "1.5"], "ratio must be in (0, 1)"),
    (["--ratio", "0"], "ratio must be in (0, 1)"),
    (["--ratio", "0.3", "--seq-len", "100000"], "too short for one window"),
    (["--ratio", "0.3", "--finetune-steps", "5"], "--finetune-steps needs --train-text"),
    (["--ratio", "0.3", "--mask-patience", "-1"], "patience >= 0"),
])
def test_prune_cli_rejects_bad_input_in_one_line(tmp_path, capsys, calib,
                                                 tiny_llama_checkpoint, args, message):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.")
    calib_arg = str(short) if "100000" in args else str(calib)
    args = [a if a != "100000" else "64" for a in args]
    code = main(["prune", "--model", str(tiny_llama_checkpoint), "--calib", calib_arg,
                 "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_model_without_a_gated_ffn_is_refused(tmp_path, capsys, calib, tiny_llama_checkpoint):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300)).save_pretrained(
        tmp_path / "gpt2")
    code = main(["prune", "--model", str(tmp_path / "gpt2"), "--calib", str(calib),
                 "--ratio", "0.3", "--out", str(tmp_path / "out")])
    assert code == 1 and "unsupported architecture 'gpt2'" in capsys.readouterr().err

    model = load_torch_model(tiny_llama_checkpoint)
    model.model.layers[1].mlp = torch.nn.Identity()
    with pytest.raises(CheckpointError, match="layer 1 has no recognisable gated FFN"):
        find_ffns(model)


def test_text_specs_slice_the_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij")
    assert read_text(f"{path}@0:0.3") == "abc" and read_text(f"{path}@0.9:1") == "j"
    assert read_text(str(path)) == "abcdefghij"
    assert TextSpec.parse("a@b.txt") == TextSpec("a@b.txt")
    with pytest.raises(TextError, match="0 <= A < B <= 1"):
        read_text(f"{path}@0.5:0.2")


def test_text_specs_joined_by_plus_name_one_text_of_their_parts(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("abcdefghij")
    b.write_text("0123456789")
    assert read_text(f"{a}@0:0.3+{b}@0.8:1") == "abc\n\n89"
    assert read_text(f"{a}+{b}") == "abcdefghij\n\n0123456789"
    plus = tmp_path / "c+d.txt"  # a file whose own name has a plus is read as itself
    plus.write_text("whole")
    assert read_text(str(plus)) == "whole" and read_text(f"{plus}@0:0.4") == "wh"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_text(f"{a}+{tmp_path / 'nope.txt'}")


def test_sweep_writes_a_table_and_a_plot(tmp_path, capsys, calib, tiny_llama_checkpoint):
    report = tmp_path / "report"
    code = main(["prune", "--model", str(tiny_llama_checkpoint), "--calib", f"{calib}@0:0.5",
                 "--sweep", "0.3", "--methods", "magrip,random", "--report", str(report),
                 "--eval-text", f"{calib}@0.5:1", "--train-text", f"{calib}@0:0.5",
                 "--finetune-steps", "2", "--finetune-seq-len", "32", "--decode-rounds", "1",
                 "--decode-tokens", "4", *FAST])
    assert code == 0, capsys.readouterr().err
    table = json.loads((report / "sweep.json").read_text())
    rows = {(r["method"], r["finetuned"]): r for r in table["rows"]}
    assert set(rows) == {("magrip", False), ("magrip", True), ("random", False),
                         ("random", True)}
    for row in rows.values():
        assert row["parameters"] < table["dense"]["parameters"]
        assert row["decode_tokens_per_s"] > 0 and row["relative"]["weight_bytes"] < 1
        assert set(row["perplexity"]) == {f"{calib}@0.5:1"}
    assert rows[("magrip", True)]["finetune"]["steps"] == 2
    assert set(table["checks"]) == {"magrip_beats_every_ablation_from_0.2",
                                   "ppl_within_15pct_of_dense_at_0.3_finetuned",
                                   "decode_speedup_at_least_90pct_of_bytes_ratio"}
    vocab = json.loads((tiny_llama_checkpoint / "config.json").read_text())["vocab_size"]
    dense_ppl = table["dense"]["perplexity"][f"{calib}@0.5:1"]
    assert len(table["warnings"]) == (dense_ppl >= vocab)  # a text the model does not model
    assert (report / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert not (report / "work").exists()  # checkpoints and packages are cleaned up


def test_a_text_the_dense_model_does_not_model_gets_a_warning():
    from exporter.magrip.report import unmodelled_texts

    warnings = unmodelled_texts({"shakespeare": 39.0, "wikitext": 2793.0}, vocab_size=2048)
    assert len(warnings) == 1 and warnings[0].startswith("wikitext: ")
    assert "2793 is above 2048" in warnings[0]


def _quick_sweep(tmp_path, calib, checkpoint, method: str, *extra: str):
    """A one-ratio, one-method sweep without fine-tuning; returns its report folder."""
    report = tmp_path / "report"
    assert main(["prune", "--model", str(checkpoint), "--calib", f"{calib}@0:0.5",
                 "--sweep", "0.3", "--methods", method, "--report", str(report),
                 "--eval-text", f"{calib}@0.5:1", "--decode-rounds", "1",
                 "--decode-tokens", "4", *extra, *FAST]) == 0
    return report


def test_a_kept_sweep_is_retimed_by_bench_sweep_decode(tmp_path, capsys, calib,
                                                        tiny_llama_checkpoint):
    report = _quick_sweep(tmp_path, calib, tiny_llama_checkpoint, "magrip", "--keep-artifacts")
    before = json.loads((report / "sweep.json").read_text())
    assert (report / "work" / "magrip-r0.30-pkg" / "manifest.json").is_file()
    capsys.readouterr()
    assert main(["bench", "sweep-decode", "--report", str(report), "--rounds", "2",
                 "--tokens", "6", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "magrip    0.30" in out and "speed check (every package >= 0.9)" in out
    after = json.loads((report / "sweep.json").read_text())
    assert after["decode"] == {**after["decode"], "rounds": 2, "tokens": 6, "remeasured": True}
    assert after["rows"][0]["perplexity"] == before["rows"][0]["perplexity"]
    row = after["rows"][0]
    assert row["decode_tokens_per_s"] > 0
    assert row["relative"]["decode_speedup"] == round(
        row["decode_tokens_per_s"] / after["dense"]["decode_tokens_per_s"], 4)


def test_bench_sweep_decode_without_kept_packages_is_one_line(tmp_path, capsys, calib,
                                                               tiny_llama_checkpoint):
    report = _quick_sweep(tmp_path, calib, tiny_llama_checkpoint, "random")
    capsys.readouterr()
    assert main(["bench", "sweep-decode", "--report", str(report)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--keep-artifacts" in err
