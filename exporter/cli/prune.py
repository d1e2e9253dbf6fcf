"""Prune the FFN neurons of a decoder LLM checkpoint with MAGRIP into a smaller dense one.

MAGRIP scores every FFN neuron by its activation magnitude and the loss's sensitivity
to it on calibration text, prunes in a coarse pass and a few fine passes, refines
the choice with a trained binary mask, removes the pruned neurons from the weights
and saves a checkpoint (per-layer widths, neurons in saliency order) that
`e2edge export llm` exports as it is. --method picks the ablations instead.

Text arguments take a path, a data-file name, or a slice: FILE@0:0.9 is the first
90 % of the file's characters; A+B is one text of both parts. With --sweep R1,R2,...
--report DIR it prunes with every method at every ratio (with and without the
fine-tune when --train-text is given) and writes DIR/sweep.json and DIR/sweep.png
instead of one checkpoint.
"""

from __future__ import annotations

import argparse

# torch-free: the parser reads every default and choice from the options' definitions
from exporter.magrip.allocation import ALLOCATIONS
from exporter.magrip.options import (
    DEFAULT_STEPS,
    FINETUNE_PARAMS,
    METHODS,
    SENSITIVITIES,
    FinetuneOptions,
    MaskOptions,
    PruneOptions,
    SaliencyOptions,
    SweepOptions,
)


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--calib", required=True, help="calibration text (path, name, or FILE@A:B)")
    parser.add_argument("--ratio", type=float, help="fraction of FFN neurons to remove, in (0, 1)")
    parser.add_argument("--out", help="directory of the pruned checkpoint")
    parser.add_argument("--method", default=SaliencyOptions.method, choices=METHODS,
                        help="neuron scores: magrip (magnitude and sensitivity, then the "
                             "trained mask) or one ablation: magnitude, gradient, random")
    parser.add_argument("--sensitivity", default=SaliencyOptions.sensitivity, choices=SENSITIVITIES,
                        help="taylor: |sum u dL/du| (default); jacobian: ||dL/du||_2")
    parser.add_argument("--magnitude-weight", type=float, default=SaliencyOptions.magnitude_weight,
                        help="MAGRIP's weight of the activation-magnitude signal")
    parser.add_argument("--sensitivity-weight", type=float,
                        default=SaliencyOptions.sensitivity_weight,
                        help="MAGRIP's weight of the loss-sensitivity signal")
    parser.add_argument("--allocation", default=PruneOptions.allocation, choices=ALLOCATIONS,
                        help="global: one ranking over all layers; uniform: every layer "
                             "keeps the same fraction of its width")
    parser.add_argument("--min-width", type=int,
                        help="neurons every layer keeps (global allocation; default 10%% of it)")
    parser.add_argument("--seq-len", type=int, default=PruneOptions.seq_len,
                        help="calibration window tokens")
    parser.add_argument("--samples", type=int, default=PruneOptions.samples,
                        help="calibration windows")
    parser.add_argument("--batch-size", type=int, default=SaliencyOptions.batch_size,
                        help="windows per pass")
    parser.add_argument("--coarse-fraction", type=float, default=PruneOptions.coarse_fraction,
                        help="fraction of the neurons to remove that the first pass removes")
    parser.add_argument("--fine-steps", type=int, default=PruneOptions.fine_steps,
                        help="re-scored passes that remove the rest")
    parser.add_argument("--mask-steps", type=int, default=MaskOptions.steps,
                        help="most mask refinement steps (MAGRIP only; 0 = off); held-out "
                             "calibration loss picks the best step and stops early")
    parser.add_argument("--mask-patience", type=int, default=MaskOptions.patience,
                        help=f"held-out checks (every {MaskOptions.check_every} steps) "
                             "without improvement before the mask training stops; 0 = never")
    parser.add_argument("--train-text", help="fine-tune text (path, name, or FILE@A:B)")
    parser.add_argument("--finetune-steps", type=int,
                        help=f"fine-tune steps (default {DEFAULT_STEPS} when --train-text is "
                             "given)")
    parser.add_argument("--finetune-params", default=FinetuneOptions.params,
                        choices=FINETUNE_PARAMS,
                        help="what the fine-tune trains: the pruned FFN weights, or LoRA "
                             "adapters merged back into them")
    parser.add_argument("--finetune-lr", type=float,
                        help="fine-tune learning rate (default: 1e-4 for ffn, 1e-3 for lora)")
    parser.add_argument("--finetune-batch-size", type=int, default=FinetuneOptions.batch_size,
                        help="fine-tune windows per step")
    parser.add_argument("--finetune-seq-len", type=int, default=FinetuneOptions.seq_len,
                        help="fine-tune window tokens")
    parser.add_argument("--seed", type=int, default=PruneOptions.seed,
                        help="seed of the run's random choices (the random method's scores, "
                             "the fine-tune's data order)")
    parser.add_argument("--torch-threads", type=int,
                        help="PyTorch CPU threads (default: PyTorch's; 1 is much faster on a "
                             "machine whose cores are busy with other work)")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--sweep", type=_ratios, help="ratios, e.g. 0.1,0.2,0.3,0.4,0.5")
    sweep.add_argument("--report", help="directory for sweep.json and sweep.png")
    sweep.add_argument("--eval-text", action="append", default=[],
                       help="perplexity text (repeatable)")
    sweep.add_argument("--eval-max-tokens", type=int, default=SweepOptions.eval_max_tokens,
                       help="score only the first N tokens of each --eval-text")
    sweep.add_argument("--methods", default=",".join(SweepOptions.methods),
                       help="comma-separated methods the sweep compares")
    sweep.add_argument("--decode-tokens", type=int, default=SweepOptions.decode_tokens,
                       help="greedy tokens per decode-speed timing of each package")
    sweep.add_argument("--decode-rounds", type=int, default=SweepOptions.decode_rounds,
                       help="round-robin timing rounds over the packages (the best counts)")
    sweep.add_argument("--threads", type=int, default=SweepOptions.threads,
                       help="onnxruntime threads (0: auto)")
    sweep.add_argument("--keep-artifacts", action="store_true",
                       help="keep the sweep's checkpoints and packages under REPORT/work")


def build_options(args: argparse.Namespace, ratio: float) -> PruneOptions:
    steps = args.finetune_steps
    if steps is None:
        steps = DEFAULT_STEPS if args.train_text else 0
    if steps > 0 and not args.train_text:
        raise ValueError("--finetune-steps needs --train-text")
    options = PruneOptions(
        ratio=ratio,
        saliency=SaliencyOptions(method=args.method, sensitivity=args.sensitivity,
                                 magnitude_weight=args.magnitude_weight,
                                 sensitivity_weight=args.sensitivity_weight,
                                 batch_size=args.batch_size),
        allocation=args.allocation,
        min_width=args.min_width,
        seq_len=args.seq_len,
        samples=args.samples,
        coarse_fraction=args.coarse_fraction,
        fine_steps=args.fine_steps,
        mask=MaskOptions(steps=args.mask_steps, patience=args.mask_patience,
                         batch_size=args.batch_size),
        finetune=FinetuneOptions(steps=steps, params=args.finetune_params, lr=args.finetune_lr,
                                 batch_size=args.finetune_batch_size,
                                 seq_len=args.finetune_seq_len),
        seed=args.seed,
    )
    options.validate()
    return options


def run(args: argparse.Namespace) -> int:
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            raise ValueError(f"--torch-threads must be >= 1, got {args.torch_threads}")
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.sweep:
        return _run_sweep(args)
    if args.ratio is None or args.out is None:
        raise ValueError("give --ratio and --out (or --sweep and --report)")
    from exporter.magrip.pipeline import prune_checkpoint

    options = build_options(args, args.ratio)
    result = prune_checkpoint(args.model, args.calib, args.out, options,
                              train_text=args.train_text)
    p = result.pruning
    print(f"wrote {result.out}: FFN widths {p['source_ffn_widths']} -> {p['ffn_widths']}, "
          f"parameters {p['params_before']:,} -> {p['params_after']:,} "
          f"({p['ffn_ratio_removed']:.1%} of FFN neurons removed)")
    if p.get("mask"):
        m = p["mask"]
        print(f"mask refinement: best at step {m['best_step']} of {m['steps']}, "
              f"{m['neurons_swapped']} neurons swapped, held-out loss "
              f"{m['held_out_loss_staged']:.4f} -> {m['held_out_loss_refined']:.4f}")
    if p.get("finetune"):
        f = p["finetune"]
        print(f"fine-tune: {f['steps']} steps ({f['params']}), loss {f['first_loss']:.4f} -> "
              f"{f['last_loss']:.4f}")
    print(f"took {p['seconds']:.0f} s, peak memory {p['peak_rss_mib']:.0f} MiB")
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    from exporter.magrip.report import run_sweep

    if not args.report:
        raise ValueError("--sweep needs --report DIR")
    options = build_options(args, args.sweep[0])
    sweep = SweepOptions(
        ratios=args.sweep,
        eval_texts=tuple(args.eval_text),
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        eval_max_tokens=args.eval_max_tokens,
        decode_tokens=args.decode_tokens,
        decode_rounds=args.decode_rounds,
        threads=args.threads,
        keep_artifacts=args.keep_artifacts,
    )
    report = run_sweep(args.model, args.calib, args.report, options, sweep,
                       train_text=args.train_text)
    for name, check in report["checks"].items():
        print(f"{name}: {'met' if check['ok'] else 'NOT met'}")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    print(f"wrote {args.report}/sweep.json and sweep.png ({report['seconds']:.0f} s, "
          f"peak memory {report['peak_rss_mib']:.0f} MiB)")
    return 0
