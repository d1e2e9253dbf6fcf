"""The MAGRIP pipeline: staged selection, mask refinement, compaction, fine-tune, save.

1. Staged selection. A coarse pass removes `coarse_fraction` of the neurons to prune
   at once; `fine_steps` fine passes then recompute saliency on the partly pruned
   (masked) model and remove the rest in equal small steps, so late decisions see
   the network that the early ones left.
2. Mask refinement (MAGRIP only): mask logits start from the staged ranking and are
   trained with the weights frozen (mask.py), then hardened to the exact count. Loss
   on held-out calibration windows decides how long it trains and which mask wins;
   the staged mask stays when no trained one beats it.
3. Compaction in saliency order (compaction.py), optional light fine-tune
   (finetune.py; the neurons are re-sorted by saliency after it), and the atomic
   write of the checkpoint (checkpoint_out.py).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exporter.llm.checkpoint import checkpoint_tokenizer
from exporter.magrip.allocation import default_min_widths, select_keep
from exporter.magrip.checkpoint_out import (
    neuron_order_document,
    save_pruned_checkpoint,
    source_dtype,
)
from exporter.magrip.compaction import compact, saliency_order
from exporter.magrip.ffn import NeuronMasks, ffn_widths, find_ffns
from exporter.magrip.finetune import finetune
from exporter.magrip.mask import harden, initial_logits, train_logits
from exporter.magrip.options import PruneOptions, SaliencyOptions
from exporter.magrip.saliency import neuron_saliency
from exporter.memory import peak_rss_mib
from exporter.text import TextError, TokenStream, read_text, text_stream, token_windows

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """Which neurons survive, and what the selection did."""

    keep: list[np.ndarray]  # per layer (W,) bool
    stages: list[dict[str, Any]]
    mask: dict[str, Any] | None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors once


def stage_targets(total: int, keep_total: int, coarse_fraction: float,
                  fine_steps: int) -> list[int]:
    """Kept-neuron counts after each pass: one coarse, then `fine_steps` equal steps."""
    remove = total - keep_total
    coarse = round(coarse_fraction * remove) if fine_steps else remove
    targets = [total - coarse]
    rest = remove - coarse
    for step in range(1, fine_steps + 1):
        targets.append(total - coarse - round(rest * step / fine_steps))
    return [t for i, t in enumerate(targets) if i == 0 or t != targets[i - 1]]


def mean_loss(model: nn.Module, windows: np.ndarray, keep=None, batch_size: int = 2) -> float:
    """Mean causal-LM loss over the windows, with the neurons outside `keep` masked."""
    ffns = find_ffns(model)
    masks = NeuronMasks.from_keep([torch.from_numpy(k) for k in keep]) if keep is not None \
        else NeuronMasks([None] * len(ffns))
    losses = []
    with torch.no_grad(), masks.applied(ffns):
        for i in range(0, len(windows), batch_size):
            batch = torch.from_numpy(windows[i : i + batch_size])
            losses.append(float(model(input_ids=batch, labels=batch).loss) * len(batch))
    return sum(losses) / len(windows)


def select_neurons(model: nn.Module, windows: np.ndarray, options: PruneOptions,
                   dense_scores: list[np.ndarray] | None = None) -> Selection:
    """Staged selection (+ mask refinement for MAGRIP); the model is not changed.

    `dense_scores`: this method's saliency of the unpruned model on these windows, if
    already known (a sweep prunes one model at several ratios; the first pass is shared).
    """
    options.validate()
    widths = ffn_widths(find_ffns(model))
    total = sum(widths)
    keep_total = round((1.0 - options.ratio) * total)
    min_widths = default_min_widths(widths, options.min_width)
    keep = [np.ones(w, dtype=bool) for w in widths]
    priority = [np.zeros((w, 2)) for w in widths]  # (stage key, score): higher = keep first
    stages = []
    targets = stage_targets(total, keep_total, options.coarse_fraction, options.fine_steps)
    for stage, target in enumerate(targets):
        started = time.monotonic()
        if stage == 0 and dense_scores is not None:
            scores = dense_scores
        else:
            scores = neuron_saliency(model, windows, options.saliency,
                                     keep=[torch.from_numpy(k) for k in keep],
                                     seed=options.seed + stage)
        new_keep = select_keep(scores, target, options.allocation, widths, min_widths)
        for layer in range(len(widths)):
            dropped = keep[layer] & ~new_keep[layer]
            priority[layer][dropped] = np.stack([np.full(dropped.sum(), stage),
                                                 scores[layer][dropped]], axis=1)
            priority[layer][new_keep[layer]] = np.stack(
                [np.full(new_keep[layer].sum(), len(targets)), scores[layer][new_keep[layer]]],
                axis=1)
        keep = new_keep
        stages.append({"kept": int(target), "seconds": round(time.monotonic() - started, 2)})
        log.info("stage %d: keep %d of %d neurons", stage, target, total)
    mask_info = None
    if options.refine_mask:
        keep, mask_info = _refine(model, windows, keep, priority, keep_total, widths,
                                  min_widths, options)
    return Selection(keep=keep, stages=stages, mask=mask_info)


def _refine(model, windows, keep, priority, keep_total, widths, min_widths, options):
    """Train the differentiable mask, judged on held-out calibration windows.

    Every eighth window is held out. The training keeps the mask (the staged one
    included) with the lowest held-out loss, and stops once more steps stop helping.
    """
    started = time.monotonic()
    held_out = np.arange(len(windows)) % 8 == 7
    if not held_out.any() or held_out.all():
        held_out = np.ones(len(windows), dtype=bool)  # one window: train and judge on it
    train = windows[~held_out] if (~held_out).any() else windows

    def hardened(logits):
        return harden(logits, keep_total, options.allocation, widths, min_widths)

    def held_out_loss(logits) -> float:
        return mean_loss(model, windows[held_out], hardened(logits), options.mask.batch_size)

    logits = initial_logits(priority, keep, options.allocation)
    logits, training = train_logits(model, train, logits, keep_total / sum(widths),
                                    options.mask, judge=held_out_loss)
    refined = hardened(logits)  # the judged mask: the staged one when best_step is 0
    staged_loss, refined_loss = training.checks[0][1], min(c[1] for c in training.checks)
    swapped = int(sum((a & ~b).sum() for a, b in zip(refined, keep)))
    info = {
        **asdict(training),
        "neurons_swapped": swapped,
        "held_out_windows": int(held_out.sum()),
        "held_out_loss_staged": staged_loss,
        "held_out_loss_refined": refined_loss,
        "accepted": training.best_step > 0,
        "seconds": round(time.monotonic() - started, 2),
    }
    log.info("mask refinement: best of %d steps at step %d, %d neurons swapped, held-out "
             "loss %.4f -> %.4f", training.steps, training.best_step, swapped, staged_loss,
             refined_loss)
    return refined, info


def compact_in_saliency_order(
    model: nn.Module,
    windows: np.ndarray,
    saliency: SaliencyOptions,
    keep: list[np.ndarray] | None,
    source_index: list[np.ndarray] | None,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Remove the neurons outside `keep` (None: keep all) and sort the rest by saliency.

    Returns per layer (source indices of the saved neurons in order, their scores),
    where `source_index` maps the model's current neurons to the source checkpoint's.
    """
    widths = ffn_widths(find_ffns(model))
    keep = keep if keep is not None else [np.ones(w, dtype=bool) for w in widths]
    scores = neuron_saliency(model, windows, saliency,
                             keep=[torch.from_numpy(k) for k in keep], seed=seed)
    order = [saliency_order(k, s) for k, s in zip(keep, scores)]
    compact(model, order)
    source_index = source_index or [np.arange(w) for w in widths]
    return ([src[o] for src, o in zip(source_index, order)],
            [s[o] for s, o in zip(scores, order)])


@dataclass
class PruneResult:
    out: Path
    pruning: dict[str, Any]


def prune_checkpoint(
    model_dir: str | Path,
    calib: str,
    out: str | Path,
    options: PruneOptions,
    train_text: str | None = None,
) -> PruneResult:
    """`e2edge prune`: the whole pipeline from a checkpoint directory to a pruned one."""
    from exporter.llm.checkpoint import load_torch_model

    options.validate()
    if options.finetune.steps > 0 and not train_text:
        raise ValueError("a fine-tune (--finetune-steps) needs --train-text")
    started = time.monotonic()
    torch.manual_seed(options.seed)
    model_dir = Path(model_dir)
    model = load_torch_model(model_dir)
    find_ffns(model)
    options = fit_to_context(options, model)
    tokenizer = checkpoint_tokenizer(model_dir)
    try:
        windows = token_windows(text_stream(tokenizer, read_text(calib)), options.seq_len,
                                options.samples)
    except TextError as e:
        raise TextError(f"calibration text {calib}: {e}") from e
    train = text_stream(tokenizer, read_text(train_text)) if options.finetune.steps else None
    pruned, pruning = prune_loaded(model, windows, options, train)
    pruning["calibration"] = {"text": calib, "seq_len": options.seq_len,
                              "windows": int(len(windows))}
    if train is not None:
        pruning["finetune"]["text"] = train_text
    pruning["source"] = str(model_dir.resolve())
    pruning["seconds"] = round(time.monotonic() - started, 1)
    pruning["peak_rss_mib"] = round(peak_rss_mib(), 1)
    save(pruned, model_dir, Path(out), pruning)
    return PruneResult(Path(out), pruning)


def fit_to_context(options: PruneOptions, model: nn.Module) -> PruneOptions:
    """Windows longer than the model's context are cut to it (calibration and fine-tune)."""
    context = int(getattr(model.config, "max_position_embeddings", options.seq_len))
    if options.seq_len > context:
        log.info("calibration windows cut from %d to the model's context, %d tokens",
                 options.seq_len, context)
        options = replace(options, seq_len=context)
    if options.finetune.seq_len > context:
        options = replace(options, finetune=replace(options.finetune, seq_len=context))
    return options


def prune_loaded(
    model: nn.Module,
    windows: np.ndarray,
    options: PruneOptions,
    train: TokenStream | None = None,
    dense_scores: list[np.ndarray] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune (and fine-tune) a copy of a loaded model; return (pruned model, facts)."""
    dense_widths = ffn_widths(find_ffns(model))
    params_before = count_parameters(model)
    selection = select_neurons(model, windows, options, dense_scores)
    pruned = copy.deepcopy(model)
    order, scores = compact_in_saliency_order(pruned, windows, options.saliency,
                                              selection.keep, None, options.seed)
    pruning = describe(options, dense_widths, params_before, pruned, selection)
    if options.finetune.steps > 0:
        if train is None:
            raise ValueError("a fine-tune needs training text")
        order, scores, pruning = finetune_pruned(pruned, order, windows, train, options,
                                                 pruning)
    pruning["neuron_order"] = neuron_order_document(order, scores, dense_widths)
    return pruned, pruning


def finetune_pruned(pruned, order, windows, train: TokenStream, options, pruning):
    """Fine-tune a compacted model in place, then re-sort its neurons by saliency."""
    ft = options.finetune
    ft_log = finetune(pruned, train, ft, seed=options.seed)
    order, scores = compact_in_saliency_order(pruned, windows, options.saliency, None, order,
                                              options.seed)
    pruning = dict(pruning)
    pruning["finetune"] = {**asdict(ft_log), "lr": ft.learning_rate, "batch_size": ft.batch_size,
                           "seq_len": ft.seq_len, "lora_rank": ft.lora_rank
                           if ft.params == "lora" else None}
    return order, scores, pruning


def describe(options: PruneOptions, dense_widths, params_before, pruned, selection):
    widths = ffn_widths(find_ffns(pruned))
    return {
        "method": options.saliency.method,
        "sensitivity": options.saliency.sensitivity,
        "weights": {"contribution": options.saliency.weights[0],
                    "sensitivity": options.saliency.weights[1]},
        "ratio": options.ratio,
        "ffn_ratio_removed": round(1 - sum(widths) / sum(dense_widths), 6),
        "allocation": options.allocation,
        "min_widths": default_min_widths(dense_widths, options.min_width),
        "stages": selection.stages,
        "mask": selection.mask,
        "finetune": None,
        "source_ffn_widths": list(dense_widths),
        "ffn_widths": widths,
        "params_before": params_before,
        "params_after": count_parameters(pruned),
        "seed": options.seed,
    }


def save(pruned: nn.Module, model_dir: Path, out: Path, pruning: dict[str, Any],
         dtype: torch.dtype | None = None) -> Path:
    """Write the pruned checkpoint; `dtype` defaults to the source's weights' dtype."""
    pruning = dict(pruning)
    order = pruning.pop("neuron_order")
    return save_pruned_checkpoint(pruned, model_dir, out, pruning, order,
                                  dtype=dtype or source_dtype(model_dir))


def with_ratio(options: PruneOptions, ratio: float, method: str) -> PruneOptions:
    """The same options at another ratio and scoring method (the sweep's grid)."""
    return replace(options, ratio=ratio, saliency=replace(options.saliency, method=method))
