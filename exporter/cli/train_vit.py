"""Train a ViT teacher, a ternary MQA student (distilled), or a full-precision student.

  e2edge train vit --role teacher --preset mnist28 --data retinamnist.npz --out T
  e2edge train vit --role student --preset mnist28 --data retinamnist.npz --teacher T --out S
  e2edge train vit --role fp-student ... --teacher T --out F   (same shape, full precision)
  e2edge train vit --role student ... --teacher T1 --teacher T2 --teacher T3 --out S
      (an ensemble: the student learns the teachers' mean logits and starts from T1)

The teacher uses multi-head attention in full precision; students use multi-query
attention, and the student's FFN (--ternary ffn) or every block linear (--ternary all)
is ternary. The checkpoint of the epoch that the recipe's `select` rule picks (best
validation accuracy by default; `--recipe select=val_loss` or `select=last`) is written
to --out (config.json + model.safetensors) with its val and test accuracy, AUC and log
loss.
"""

from __future__ import annotations

import argparse

# torch-free: the parser reads its defaults from the definitions
from exporter.vit.config import ROLES, DistillConfig, get_preset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", required=True, choices=ROLES,
                        help="teacher: full-precision multi-head ViT; student: ternary "
                             "multi-query ViT distilled from --teacher; fp-student: the "
                             "student's shape in full precision")
    parser.add_argument("--preset", default="mnist28", help="bitmedvit | mnist28 (default)")
    parser.add_argument("--data", required=True, help="MedMNIST-style .npz (path or file name)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--teacher", action="append", default=[],
                        help="teacher checkpoint directory (distillation); repeat it to "
                             "distill from the teachers' mean logits (features and "
                             "--init come from the first)")
    parser.add_argument("--ternary", choices=("ffn", "all"), default="ffn",
                        help="student layers made ternary (default ffn)")
    parser.add_argument("--init", choices=("teacher", "random"), default="teacher",
                        help="students with --teacher start from its weights (default)")
    parser.add_argument("--epochs", type=int, help="override the preset's epochs")
    parser.add_argument("--lr", type=float, help="override the preset's peak learning rate")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                        help="override any training setting of the preset, e.g. "
                             "--recipe vflip=true --recipe weight_decay=0.1 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init and data order")
    parser.add_argument("--time-budget-s", type=float,
                        help="stop after the epochs that fit in this many seconds")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's; on a busy machine 1 is "
                             "often fastest)")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    parser.add_argument("--monitor", action="append", default=[], choices=("train", "test"),
                        help="also score this split every epoch into the checkpoint's "
                             "history (learning curves; never used to select the epoch)")
    parser.add_argument("--ce-weight", type=float, default=DistillConfig.ce_weight,
                        help="label loss weight")
    parser.add_argument("--kd-weight", type=float, default=DistillConfig.kd_weight,
                        help="weight of T^2 * KL(teacher || student) at --temperature")
    parser.add_argument("--feature-weight", type=float, default=DistillConfig.feature_weight,
                        help="weight of the pooled-feature MSE to the teacher")
    parser.add_argument("--temperature", type=float, default=DistillConfig.temperature,
                        help="distillation temperature T of the KL term")


def parse_recipe(items: list[str], base) -> dict:
    """["vflip=true", "lr=3e-4"] -> {"vflip": True, "lr": 0.0003}, typed like `base`'s fields."""
    import dataclasses

    from runtime.errors import InvalidRequest

    types = {f.name: type(getattr(base, f.name)) for f in dataclasses.fields(base)}
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise InvalidRequest("--recipe", f"{item!r}: expected KEY=VALUE with KEY one of "
                                 f"{sorted(types)}")
        kind = types[key]
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise InvalidRequest("--recipe", f"{key} takes true or false, got {value!r}")
            out[key] = value.lower() in ("true", "1")
        else:
            try:
                out[key] = kind(value)
            except ValueError:
                raise InvalidRequest("--recipe", f"{key} takes a {kind.__name__}, got "
                                     f"{value!r}") from None
    return out


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from exporter.vit.train_checkpoint import ViTTrainConfig, train_checkpoint

    preset = get_preset(args.preset)
    overrides = parse_recipe(args.recipe, preset.train)
    overrides.update({
        k: v for k, v in
        {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size}.items()
        if v is not None
    })
    recipe = dataclasses.replace(preset.train, **overrides)
    if recipe.min_lr > recipe.lr:
        recipe = dataclasses.replace(recipe, min_lr=recipe.lr)
    config = ViTTrainConfig(
        role=args.role, preset=args.preset, data=args.data, out=Path(args.out), recipe=recipe,
        teachers=tuple(args.teacher), ternary=args.ternary, init=args.init,
        distill=DistillConfig(args.ce_weight, args.kd_weight, args.feature_weight,
                              args.temperature),
        seed=args.seed, time_budget_s=args.time_budget_s, threads=args.threads,
        device=args.device, monitor=tuple(args.monitor),
    )
    summary = train_checkpoint(config, log=lambda line: print(line, flush=True))
    print(json.dumps(summary))
    return 0
