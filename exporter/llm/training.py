"""Train a small LLaMA or Gemma causal LM on a text corpus and save a Hugging Face checkpoint.

The recipe, top to bottom:
1. Split the corpus by characters: the first 90 % trains (tokenizer and model), the last
   10 % is held out. Splitting text rather than tokens keeps the held-out part the same for
   every tokenizer. A corpus of several parts (files or slices FILE@A:B) splits each part
   so, and joins the train parts and the held-out parts with a blank line.
2. Build the tokenizer (`exporter/llm/tokenizer.py`) and encode both parts to token streams.
3. Train with AdamW, linear warm-up then cosine decay, on windows drawn from the train stream
   by a seeded generator. Every window starts with <s>, as prompts do at generation time.
4. Report the held-out perplexity (every held-out token predicted once, in consecutive
   windows) beside a unigram baseline (add-one smoothed token frequencies of the train
   stream), plus bits per character, which compares across tokenizers.
5. Write config.json, model.safetensors, generation_config.json, tokenizer files and
   train_report.json into a temporary directory and rename it into place.

Same corpus, arguments, seed and thread count on the same machine give bitwise identical
weights: seeded init and data order, deterministic algorithms, fixed threads. A run stopped
by its time budget is not reproducible, and its report says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from exporter.atomic_dir import AtomicDirectory
from exporter.llm.presets import ARCHS, LMPreset
from exporter.llm.tokenizer import TokenizerChoice, build_tokenizer, save_tokenizer
from exporter.schedule import warmup_cosine
from exporter.text import PART_SEPARATOR, TextSpec, read_part

TRAIN_FRACTION = 0.9
EVAL_BATCH = 16  # windows per forward pass when measuring held-out loss


@dataclass(frozen=True)
class LMTrainConfig:
    """Everything one training run depends on; validated by the CLI before it gets here."""

    corpus: tuple[TextSpec, ...]  # parts with resolved paths, split 90/10 each
    out: Path
    arch: str
    preset: LMPreset
    tokenizer: TokenizerChoice
    steps: int
    seed: int = 0
    threads: int = 2
    time_budget_s: float | None = None
    device: str = "cpu"  # "cuda" runs the same recipe on a GPU (fp32, deterministic too)
    log_every: int = 50

    def __post_init__(self):
        if not self.corpus:
            raise ValueError("a corpus needs at least one text")
        if self.arch not in ARCHS:
            raise ValueError(f"unsupported architecture {self.arch!r}: use one of {ARCHS}")
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1, got {self.steps}")
        if self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"--time-budget-s must be positive, got {self.time_budget_s}")


def train_lm(config: LMTrainConfig, log: Callable[[str], None] = print) -> dict:
    """Run the whole recipe; return the train report (also written to train_report.json)."""
    _check_out_dir(config.out)
    corpus = _split_corpus(config.corpus)
    tokenizer, specials = build_tokenizer(config.tokenizer, corpus.train_text)
    ids = specials.ids(tokenizer)
    train_ids, heldout_ids = _encode(tokenizer, corpus, config.preset)  # (N,), (M,)
    vocab_size = tokenizer.get_vocab_size()
    context = config.preset.context_length
    with _reproducible(config):
        model = _build_model(config.arch, config.preset, vocab_size, ids).to(config.device)
        run = _run(model, train_ids.to(config.device), heldout_ids.to(config.device),
                   ids["bos"], config, log)
    model.cpu()
    unigram = unigram_perplexity(train_ids, heldout_ids, vocab_size)
    report = _report(config, corpus, run, unigram, len(train_ids), vocab_size)
    log(
        f"held-out perplexity {run.heldout_ppl:.2f} (unigram baseline {unigram:.2f}), "
        f"{report['heldout_bits_per_char']} bits/char, {run.steps} steps in {run.seconds:.0f} s"
    )
    if report["stopped_early"]:
        log(f"warning: stopped by --time-budget-s after {run.steps} of {config.steps} steps; "
            "this checkpoint is not reproducible")
    _save(config.out, model, tokenizer, specials, context, report)
    return report


@dataclass(frozen=True)
class _Corpus:
    """The corpus read and split by characters, part by part."""

    name: str  # as the user named it (corpus_name)
    parts: list[str]  # each part's text
    train_text: str  # the first 90 % of every part, joined
    heldout_text: str  # the last 10 % of every part, joined


@dataclass(frozen=True)
class _Run:
    """What the training run measured."""

    params: int
    steps: int  # done, fewer than planned when the time budget stopped it
    first_loss: float
    last_loss: float
    seconds: float
    heldout_nll: float  # summed over every held-out token, nats
    heldout_tokens: int

    @property
    def heldout_ppl(self) -> float:
        return math.exp(self.heldout_nll / self.heldout_tokens)


def _split_corpus(specs: tuple[TextSpec, ...]) -> _Corpus:
    parts = [read_part(part) for part in specs]
    splits = [int(len(text) * TRAIN_FRACTION) for text in parts]
    return _Corpus(
        name=corpus_name(specs),
        parts=parts,
        train_text=PART_SEPARATOR.join(text[:split] for text, split in zip(parts, splits)),
        heldout_text=PART_SEPARATOR.join(text[split:] for text, split in zip(parts, splits)),
    )


def _encode(tokenizer, corpus: _Corpus, preset: LMPreset) -> tuple[torch.Tensor, torch.Tensor]:
    """The train and held-out token ids, (N,) and (M,); refused when too short to train."""
    train_ids = torch.tensor(tokenizer.encode(corpus.train_text, add_special_tokens=False).ids)
    heldout_ids = torch.tensor(
        tokenizer.encode(corpus.heldout_text, add_special_tokens=False).ids)
    context = preset.context_length
    if len(train_ids) < context or len(heldout_ids) == 0:
        raise ValueError(
            f"{corpus.name}: corpus too short: {len(train_ids)} train and {len(heldout_ids)} "
            f"held-out tokens, preset {preset.name!r} needs at least {context} train "
            "tokens (its context length) and one held-out token"
        )
    return train_ids, heldout_ids


@contextmanager
def _reproducible(config: LMTrainConfig) -> Iterator[None]:
    """Seeded, deterministic, on a fixed number of threads; torch's settings come back after."""
    if config.device.startswith("cuda"):
        # cuBLAS is deterministic only with a fixed workspace; it reads this when it starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(config.threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(config.seed)
        yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)


def _run(model, train_ids: torch.Tensor, heldout_ids: torch.Tensor, bos: int,
         config: LMTrainConfig, log: Callable[[str], None]) -> _Run:
    """Train, then score every held-out token."""
    params = sum(p.numel() for p in model.parameters())
    log(
        f"train lm: {config.arch} preset {config.preset.name}, {params / 1e6:.2f} M params, "
        f"vocab {model.config.vocab_size}, {len(train_ids)} train / {len(heldout_ids)} "
        "held-out tokens"
    )
    started = time.monotonic()
    steps, first_loss, last_loss = _train(model, train_ids, bos, config, log)
    seconds = time.monotonic() - started
    heldout_nll = _heldout_nll(model, heldout_ids, bos, config.preset.context_length)
    return _Run(params, steps, first_loss, last_loss, seconds, heldout_nll, len(heldout_ids))


def _report(config: LMTrainConfig, corpus: _Corpus, run: _Run, unigram_ppl: float,
            train_tokens: int, vocab_size: int) -> dict:
    """train_report.json: the result beside a unigram baseline, and what it was made from."""
    return {
        "preset": config.preset.name,
        "arch": config.arch,
        "params": run.params,
        "steps": run.steps,
        "planned_steps": config.steps,
        "stopped_early": run.steps < config.steps,
        "seconds": round(run.seconds, 1),
        "seconds_per_step": round(run.seconds / run.steps, 3),
        "heldout_ppl": round(run.heldout_ppl, 3),
        "unigram_ppl": round(unigram_ppl, 3),
        "heldout_bits_per_char": round(
            run.heldout_nll / math.log(2) / len(corpus.heldout_text), 4),
        "first_train_loss": round(run.first_loss, 4),
        "final_train_loss": round(run.last_loss, 4),
        "seed": config.seed,
        "threads": config.threads,
        "device": config.device,
        "tokenizer": {
            "kind": config.tokenizer.kind,
            "vocab_size": vocab_size,
            "spm_model": str(config.tokenizer.spm_model) if config.tokenizer.spm_model else None,
        },
        "corpus": {
            "path": corpus.name,
            "parts": [
                {"path": part.path, "slice": [part.start, part.end], "chars": len(text),
                 "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
                for part, text in zip(config.corpus, corpus.parts)
            ],
            "sha256": hashlib.sha256("".join(corpus.parts).encode("utf-8")).hexdigest(),
            "chars": sum(len(text) for text in corpus.parts),
            "split": "by characters: first 90 % of each part train, last 10 % held out",
            "train_tokens": train_tokens,
            "heldout_tokens": run.heldout_tokens,
        },
        "preset_config": asdict(config.preset),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }


def corpus_name(parts: tuple[TextSpec, ...]) -> str:
    """The corpus as the user named it: its parts' specs (path, @A:B for a slice) joined by +."""
    return " + ".join(str(part) for part in parts)


def _build_model(arch: str, preset: LMPreset, vocab_size: int, ids: dict[str, int]):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        head_dim=preset.head_dim,
        max_position_embeddings=preset.context_length,
        rope_theta=preset.rope_theta,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    if arch == "llama":
        config = LlamaConfig(hidden_act="silu", tie_word_embeddings=False, **common)
        model = LlamaForCausalLM(config)
    else:  # Gemma-1: tanh-approximated GELU, output layer tied to the scaled embedding
        model = GemmaForCausalLM(
            GemmaConfig(hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True, **common)
        )
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )
    return model


def _train(model, train_ids: torch.Tensor, bos: int, config: LMTrainConfig, log):
    """Run the optimisation; return (steps done, first loss, last loss)."""
    preset = config.preset
    context, batch = preset.context_length, preset.batch_size
    # Warm-up is capped at a tenth of the run, so a short --steps run still reaches full LR.
    warmup = min(preset.warmup_steps, config.steps // 10)
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and embeddings
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # norm weights
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": preset.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=preset.learning_rate,
        betas=(0.9, 0.95),
        foreach=False,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine(step, warmup, config.steps, floor=preset.min_lr_ratio),
    )
    generator = torch.Generator().manual_seed(config.seed)  # on the CPU: same order anywhere
    device = train_ids.device
    offsets = torch.arange(context, device=device)  # (T,)
    bos_column = torch.full((batch, 1), bos, dtype=torch.long, device=device)  # (B, 1)
    model.train()
    started = time.monotonic()
    losses = []
    for step in range(config.steps):
        starts = torch.randint(0, len(train_ids) - context + 1, (batch,), generator=generator)
        starts = starts.to(device)  # (B,)
        targets = train_ids[starts[:, None] + offsets]  # (B, T)
        inputs = torch.cat([bos_column, targets[:, :-1]], dim=1)  # (B, T): <s> then targets
        logits = model(input_ids=inputs).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        elapsed = time.monotonic() - started
        if step % config.log_every == 0 or step == config.steps - 1:
            log(f"step {step + 1}/{config.steps} loss {losses[-1]:.4f} "
                f"lr {schedule.get_last_lr()[0]:.2e} {elapsed:.0f} s")
        if config.time_budget_s is not None and elapsed > config.time_budget_s:
            break
    return len(losses), losses[0], losses[-1]


@torch.no_grad()
def _heldout_nll(model, heldout_ids: torch.Tensor, bos: int, context: int) -> float:
    """Summed negative log-likelihood (nats) of every held-out token, in windows of `context`."""
    model.eval()
    total = 0.0
    windows = list(torch.split(heldout_ids, context))  # each (<=T,); only the last is shorter
    full = [w for w in windows if len(w) == context]
    groups = [full[i : i + EVAL_BATCH] for i in range(0, len(full), EVAL_BATCH)]
    groups += [[w] for w in windows if len(w) < context]
    for group in groups:
        targets = torch.stack(group)  # (B, T)
        bos_column = torch.full_like(targets[:, :1], bos)  # (B, 1)
        inputs = torch.cat([bos_column, targets[:, :-1]], dim=1)  # (B, T)
        logits = model(input_ids=inputs).logits  # (B, T, V)
        total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
    return total


def unigram_perplexity(train_ids: torch.Tensor, heldout_ids: torch.Tensor, vocab: int) -> float:
    """Perplexity on held-out tokens of add-one smoothed unigram frequencies of the train stream."""
    counts = torch.bincount(train_ids, minlength=vocab).double() + 1.0  # (V,)
    log_probs = counts.log() - counts.sum().log()  # (V,)
    return math.exp(-log_probs[heldout_ids].mean().item())


def _check_out_dir(out: Path) -> None:
    """Refuse to replace a directory that is not empty and not a previous checkpoint of ours."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and _replaceable(out)):
        raise FileExistsError(
            f"{out}: exists and is not an e2edge train checkpoint; refusing to overwrite it"
        )


def _replaceable(out: Path) -> bool:
    return (out / "train_report.json").is_file() or not any(out.iterdir())


def _save(out: Path, model, tokenizer, specials, context: int, report: dict) -> None:
    """Write the checkpoint beside `out` and swap it into place (exporter/atomic_dir.py)."""
    with AtomicDirectory(out) as target:
        model.save_pretrained(target.dir)  # config.json, model.safetensors, generation_config
        save_tokenizer(tokenizer, specials, target.dir, context)
        (target.dir / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
        _check_out_dir(out)  # again: something may have appeared there while we trained
        target.commit()
