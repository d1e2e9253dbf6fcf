"""The pruning sweep: perplexity vs FFN prune ratio for MAGRIP and its ablations.

For every method (magrip, magnitude, gradient, random) and ratio, the dense model is
pruned (and, with training text, also fine-tuned from that pruned model), each
result is saved as a checkpoint, exported to a verified package, and measured:
sliding-window perplexity on each evaluation text (PyTorch, on the in-memory model
that was saved; the same numbers when the source is fp32), parameters, package weight
bytes, and greedy decode tokens/s of the package relative to the dense package.
Decode speed is measured at the end, round-robin over all packages for several rounds
(the best round per package, see `decode_speeds`), so that drifts of a shared machine's
load hit every package alike. With training text, the dense model gets the same
fine-tune as a control (how much of the recovery is plain extra training).

Writes sweep.json (every row, and the criteria checked: `sweep_checks`) and sweep.png
to the report dir.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exporter.llm.checkpoint import checkpoint_tokenizer, load_torch_model
from exporter.llm.evaluation import TorchScorer, perplexity
from exporter.llm.export import LLMExportOptions, export_llm
from exporter.magrip.checkpoint_out import (
    copy_source_files,
    neuron_order_document,
    source_dtype,
)
from exporter.magrip.finetune import finetune
from exporter.magrip.options import METHODS, PruneOptions, SweepOptions
from exporter.magrip.pipeline import (
    finetune_pruned,
    fit_to_context,
    prune_loaded,
    save,
    with_ratio,
)
from exporter.magrip.saliency import neuron_saliency
from exporter.memory import peak_rss_mib
from exporter.text import TokenStream, read_text, text_stream, token_windows
from runtime.llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DECODE_PROMPT = "ROMEO:\nWhat light through yonder window breaks?"


def run_sweep(model_dir: str | Path, calib: str, report_dir: str | Path,
              base: PruneOptions, sweep: SweepOptions, train_text: str | None = None
              ) -> dict[str, Any]:
    """Run the sweep; write sweep.json and sweep.png; return the report."""
    sweep.validate()
    base.validate()
    started = time.monotonic()
    model_dir, report_dir = Path(model_dir), Path(report_dir)
    run = _start(model_dir, report_dir / "work", calib, base, sweep, train_text)
    dense_row = run.dense_row()
    dense_tuned = run.dense_control() if run.train is not None else None
    rows = [row for method in sweep.methods for row in run.method_rows(method)]
    _set_decode_speeds(dense_row, rows, decode_speeds(run.packages, sweep))
    report = {
        "model": str(model_dir.resolve()),
        "model_type": run.dense.config.model_type,
        "calibration": {"text": calib, "seq_len": run.base.seq_len,
                        "windows": int(len(run.windows))},
        "train_text": train_text,
        "eval_texts": {spec: int(len(s.ids)) for spec, s in run.evals.items()},
        "options": _jsonable(asdict(run.base)),
        "decode": {"tokens": sweep.decode_tokens, "rounds": sweep.decode_rounds,
                   "prompt": DECODE_PROMPT, "statistic": "best-of-rounds decode tokens/s"},
        "dense": dense_row,
        "dense_finetuned_control": dense_tuned,
        "rows": rows,
        "checks": sweep_checks(dense_row, rows),
        "warnings": unmodelled_texts(dense_row["perplexity"], run.dense.config.vocab_size),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    (report_dir / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, report_dir / "sweep.png")
    if not sweep.keep_artifacts:
        shutil.rmtree(run.work, ignore_errors=True)
    return report


@dataclass
class _SweepRun:
    """What every row of one sweep shares: the dense model, the texts, where rows go."""

    dense: nn.Module
    tokenizer: Tokenizer
    windows: np.ndarray  # (N, seq_len) int64 calibration windows
    train: TokenStream | None  # the fine-tune text; None: no fine-tuned rows
    evals: dict[str, TokenStream]  # perplexity texts by spec
    base: PruneOptions
    sweep: SweepOptions
    work: Path  # the rows' checkpoints and packages
    source: Path  # the source checkpoint's tokenizer and generation files, copied
    dtype: torch.dtype  # the source's weights' dtype, which the rows' checkpoints keep
    packages: dict[str, Path] = field(default_factory=dict)  # package key -> package

    def dense_row(self) -> dict[str, Any]:
        checkpoint = self.work / "dense-ckpt"
        self.dense.save_pretrained(checkpoint)
        copy_source_files(self.source, checkpoint)
        row = {"method": "dense", "ratio": 0.0, "finetuned": False,
               "perplexity": self.measure(self.dense, "dense"),
               **self.export(checkpoint, "dense")}
        log.info("dense: %s", row["perplexity"])
        return row

    def dense_control(self) -> dict[str, Any]:
        """The same fine-tune on the unpruned model. The demo models are small and briefly
        trained, so part of what a fine-tune recovers is plain extra training."""
        tuned = copy.deepcopy(self.dense)
        ft_log = finetune(tuned, self.train, self.base.finetune, seed=self.base.seed)
        return {"perplexity": self.measure(tuned, "dense-ft"), "finetune": asdict(ft_log)}

    def method_rows(self, method: str) -> list[dict[str, Any]]:
        """One method at every ratio (each also fine-tuned, with training text).

        The first saliency pass scores the dense model, the same at every ratio: it runs
        once, and each row's prune time counts it."""
        base = self.base
        t0 = time.monotonic()
        dense_scores = neuron_saliency(self.dense, self.windows,
                                       with_ratio(base, self.sweep.ratios[0], method).saliency,
                                       seed=base.seed)
        shared_seconds = time.monotonic() - t0
        rows = []
        for ratio in self.sweep.ratios:
            options = replace(with_ratio(base, ratio, method),
                              finetune=replace(base.finetune, steps=0))
            t0 = time.monotonic() - shared_seconds
            pruned, pruning = prune_loaded(self.dense, self.windows, options,
                                           dense_scores=dense_scores)
            rows.append(self.row(method, ratio, False, pruned, pruning, time.monotonic() - t0))
            if self.train is not None:
                rows.append(self.finetuned_row(method, ratio, pruned, pruning, options))
            log.info("%s: %s", package_key(method, ratio, False), rows[-1]["perplexity"])
        return rows

    def finetuned_row(self, method: str, ratio: float, pruned: nn.Module,
                      pruning: dict[str, Any], options: PruneOptions) -> dict[str, Any]:
        """The pruned model fine-tuned (a copy), its neurons sorted by saliency again."""
        t0 = time.monotonic()
        tuned = copy.deepcopy(pruned)
        order = [np.asarray(layer["kept"]) for layer in pruning["neuron_order"]["layers"]]
        ft_options = replace(options, finetune=self.base.finetune)
        order, scores, ft_pruning = finetune_pruned(tuned, order, self.windows, self.train,
                                                    ft_options, pruning)
        ft_pruning["neuron_order"] = neuron_order_document(
            order, scores, pruning["source_ffn_widths"])
        return self.row(method, ratio, True, tuned, ft_pruning, time.monotonic() - t0)

    def row(self, method: str, ratio: float, finetuned: bool, model: nn.Module,
            pruning: dict[str, Any], seconds: float) -> dict[str, Any]:
        """Save, measure and export one pruned model; its row of the table."""
        key = package_key(method, ratio, finetuned)
        checkpoint = save(model, self.source, self.work / f"{key}-ckpt", pruning, self.dtype)
        row = {
            "method": method,
            "ratio": ratio,
            "finetuned": finetuned,
            "perplexity": self.measure(model, key),
            "ffn_widths": pruning["ffn_widths"],
            "prune_seconds": round(seconds, 1),
            "mask": pruning.get("mask"),
            **self.export(checkpoint, key),
        }
        if finetuned:
            row["finetune"] = pruning["finetune"]
        return row

    def measure(self, model: nn.Module, name: str) -> dict[str, float]:
        """Perplexity on each evaluation text (PyTorch, the in-memory model)."""
        scorer = TorchScorer(model, self.tokenizer, name)
        sweep = self.sweep
        return {spec: round(perplexity(scorer, stream, sweep.eval_window,
                                       sweep.eval_stride).perplexity, 4)
                for spec, stream in self.evals.items()}

    def export(self, checkpoint: Path, key: str) -> dict[str, Any]:
        """A verified package of the checkpoint, kept for the decode timing."""
        result = export_llm(checkpoint, self.work / f"{key}-pkg", LLMExportOptions(name=key))
        self.packages[key] = result.package
        return {"parameters": result.parameters, "weight_bytes": result.weight_bytes}


def _start(model_dir: Path, work: Path, calib: str, base: PruneOptions, sweep: SweepOptions,
           train_text: str | None) -> _SweepRun:
    """A fresh work folder, the dense model and every text of the sweep, tokenized."""
    work.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    # The source's files are read once, up front: the sweep runs for a while, and it
    # must not depend on the source directory staying in place meanwhile.
    source = work / "source"
    source.mkdir()
    copy_source_files(model_dir, source)
    dtype = source_dtype(model_dir)
    dense = load_torch_model(model_dir)
    base = fit_to_context(base, dense)
    tokenizer = checkpoint_tokenizer(model_dir)
    windows = token_windows(text_stream(tokenizer, read_text(calib)), base.seq_len,
                            base.samples)
    train = text_stream(tokenizer, read_text(train_text)) if train_text else None
    if train is not None and base.finetune.steps == 0:
        raise ValueError("a sweep with --train-text needs --finetune-steps > 0")
    evals = {spec: _limit(text_stream(tokenizer, read_text(spec)), sweep.eval_max_tokens)
             for spec in sweep.eval_texts}
    return _SweepRun(dense, tokenizer, windows, train, evals, base, sweep, work, source, dtype)


def package_key(method: str, ratio: float, finetuned: bool) -> str:
    """The work-folder name of a sweep row's checkpoint and package (without -ckpt/-pkg)."""
    if method == "dense":
        return "dense"
    return f"{method}-r{ratio:.2f}" + ("-ft" if finetuned else "")


def _row_key(row: dict[str, Any]) -> str:
    return package_key(row["method"], row["ratio"], row["finetuned"])


def _set_decode_speeds(dense: dict[str, Any], rows: list[dict[str, Any]],
                       speeds: dict[str, float]) -> None:
    """Each row's decode tokens/s from `speeds` (by package key), then the ratios to dense."""
    for row in [dense, *rows]:
        row["decode_tokens_per_s"] = round(speeds[_row_key(row)], 2)
    _relative(dense, rows)


def remeasure_decode(report_dir: str | Path, sweep: SweepOptions) -> dict[str, Any]:
    """Time the kept packages of a finished sweep again; rewrite its speeds and checks.

    Pruning and fine-tuning a sweep takes half an hour; timing its packages takes a
    minute. On a shared machine whose load changed (or to use more rounds), the kept
    packages (`--keep-artifacts`) are re-timed round-robin as the sweep itself does,
    and sweep.json records the new numbers (perplexities are untouched: they do not
    depend on timing).
    """
    sweep.validate_decode()
    report_dir = Path(report_dir)
    path = report_dir / "sweep.json"
    if not path.is_file():
        raise ValueError(f"{path}: no sweep report here")
    report = json.loads(path.read_text())
    dense, rows = report["dense"], report["rows"]
    packages = {_row_key(row): report_dir / "work" / f"{_row_key(row)}-pkg"
                for row in [dense, *rows]}
    missing = [str(p) for p in packages.values() if not (p / "manifest.json").is_file()]
    if missing:
        raise ValueError(f"{missing[0]}: package missing ({len(missing)} in all); re-timing "
                         "needs a sweep run with --keep-artifacts")
    _set_decode_speeds(dense, rows, decode_speeds(packages, sweep))
    report["checks"] = sweep_checks(dense, rows)
    report["decode"] = {"tokens": sweep.decode_tokens, "rounds": sweep.decode_rounds,
                        "threads": sweep.threads, "prompt": DECODE_PROMPT,
                        "statistic": "best-of-rounds decode tokens/s", "remeasured": True}
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, report_dir / "sweep.png")
    return report


def _limit(stream: TokenStream, max_tokens: int | None) -> TokenStream:
    return TokenStream(stream.ids[:max_tokens] if max_tokens else stream.ids, stream.bos)


def decode_speeds(packages: dict[str, Path], sweep: SweepOptions) -> dict[str, float]:
    """Best-of-rounds greedy decode tokens/s per package, measured round-robin.

    Every engine is loaded once; each round times each package once, in turn, so a
    change of the machine's load hits all alike. The best round counts: other work on
    a shared machine only ever slows a run down, so the fastest of several is the
    closest to the package's own cost (a median kept that noise: on the 5 M-parameter
    demo models a 96-token run takes 0.1 s).
    """
    from runtime.llm.engine import LLMEngine
    from runtime.llm.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=sweep.decode_tokens, temperature=0.0,
                            ignore_eos=True)
    warmup = SamplingParams(max_new_tokens=4, temperature=0.0, ignore_eos=True)
    engines = {key: LLMEngine.load(path, threads=sweep.threads)
               for key, path in packages.items()}
    for engine in engines.values():
        list(engine.generate(DECODE_PROMPT, warmup))
    samples: dict[str, list[float]] = {key: [] for key in packages}
    for round_ in range(sweep.decode_rounds):
        for key, engine in engines.items():
            last = list(engine.generate(DECODE_PROMPT, params))[-1]
            samples[key].append(last.stats.decode_tokens_per_s)
        log.info("decode round %d of %d done", round_ + 1, sweep.decode_rounds)
    return {key: max(values) for key, values in samples.items()}


def _relative(dense: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    for row in rows:
        bytes_ratio = dense["weight_bytes"] / row["weight_bytes"]
        speed_ratio = row["decode_tokens_per_s"] / dense["decode_tokens_per_s"]
        row["relative"] = {
            "parameters": round(row["parameters"] / dense["parameters"], 4),
            "weight_bytes": round(row["weight_bytes"] / dense["weight_bytes"], 4),
            "decode_speedup": round(speed_ratio, 4),
            "bytes_speedup_bound": round(bytes_ratio, 4),
            "speedup_over_bytes_bound": round(speed_ratio / bytes_ratio, 4),
        }


def sweep_checks(dense: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a sweep must show, each criterion cell by cell with an overall verdict:

    - magrip_beats_every_ablation_from_0.2: at every ratio >= 0.2 (with and without
      the fine-tune) MAGRIP's perplexity is below every ablation's on every text;
    - ppl_within_15pct_of_dense_at_0.3_finetuned: fine-tuned MAGRIP at ratio 0.3 stays
      within 15 % of the dense model's perplexity on every text;
    - decode_speedup_at_least_90pct_of_bytes_ratio: every package decodes at least 90 %
      as much faster than the dense one as its weight bytes are smaller.
    """
    by = {(r["method"], r["ratio"], r["finetuned"]): r for r in rows}
    beats = []
    for (method, ratio, tuned), row in by.items():
        if method != "magrip" or ratio < 0.2 - 1e-9:
            continue
        for spec, value in row["perplexity"].items():
            rivals = {m: by[(m, ratio, tuned)]["perplexity"][spec]
                      for m in METHODS if m != "magrip" and (m, ratio, tuned) in by}
            beats.append({"ratio": ratio, "finetuned": tuned, "text": spec,
                          "magrip": value, "ablations": rivals,
                          "ok": bool(rivals) and all(value < v for v in rivals.values())})
    within = []
    for (method, ratio, tuned), row in by.items():
        if method == "magrip" and tuned and abs(ratio - 0.3) < 1e-9:
            for spec, value in row["perplexity"].items():
                limit = 1.15 * dense["perplexity"][spec]
                within.append({"text": spec, "perplexity": value,
                               "dense": dense["perplexity"][spec], "ok": value <= limit})
    speed = [{"method": r["method"], "ratio": r["ratio"], "finetuned": r["finetuned"],
              "speedup_over_bytes_bound": r["relative"]["speedup_over_bytes_bound"],
              "ok": r["relative"]["speedup_over_bytes_bound"] >= 0.9} for r in rows]
    return {
        "magrip_beats_every_ablation_from_0.2": {
            "ok": bool(beats) and all(c["ok"] for c in beats), "cells": beats},
        "ppl_within_15pct_of_dense_at_0.3_finetuned": {
            "ok": bool(within) and all(c["ok"] for c in within), "cells": within},
        "decode_speedup_at_least_90pct_of_bytes_ratio": {
            "ok": all(c["ok"] for c in speed), "cells": speed},
    }


def unmodelled_texts(dense_perplexity: dict[str, float], vocab_size: int) -> list[str]:
    """A warning for each text the dense model predicts worse than a uniform guess.

    There the model has not learned the text (e.g. a model trained on Shakespeare on
    WikiText-2, whose digits and markup it never saw): any change that flattens its
    confident wrong guesses lowers perplexity, so damage can look like improvement and
    a ranking of pruning methods on that text says little about them.
    """
    return [f"{spec}: the dense model's perplexity {value:.0f} is above {vocab_size}, a "
            "uniform guess over its vocabulary; pruning that damages the model can lower it, "
            "so rankings on this text say little" for spec, value in dense_perplexity.items()
            if value >= vocab_size]


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(report["dense"]["perplexity"])
    fig, axes = plt.subplots(1, len(specs), figsize=(6 * len(specs), 4.5), squeeze=False)
    colors = {"magrip": "tab:red", "magnitude": "tab:blue", "gradient": "tab:green",
              "random": "tab:gray"}
    for ax, spec in zip(axes[0], specs):
        for method in dict.fromkeys(r["method"] for r in report["rows"]):
            for tuned, style in ((False, "-"), (True, "--")):
                points = sorted((r["ratio"], r["perplexity"][spec]) for r in report["rows"]
                                if r["method"] == method and r["finetuned"] == tuned)
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, marker="o", color=colors.get(method),
                            label=f"{method}{' + fine-tune' if tuned else ''}")
        ax.axhline(report["dense"]["perplexity"][spec], color="black", linestyle=":",
                   label="dense")
        control = report.get("dense_finetuned_control")
        if control:
            ax.axhline(control["perplexity"][spec], color="black", linestyle="--",
                       linewidth=0.8, label="dense + same fine-tune")
        values = [r["perplexity"][spec] for r in report["rows"]]
        if max(values) > 5 * min(values):  # log only where the range needs it
            ax.set_yscale("log")
        ax.set_xticks(sorted({r["ratio"] for r in report["rows"]}))
        ax.set_xlabel("FFN prune ratio")
        ax.set_ylabel("perplexity")
        ax.set_title(f"{report['model_type']}: {Path(spec).name}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
