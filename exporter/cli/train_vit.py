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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--role", required=True, choices=("teacher", "student", "fp-student"))
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget-s", type=float,
                        help="stop after the epochs that fit in this many seconds")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's; on a busy machine 1 is "
                             "often fastest)")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    parser.add_argument("--monitor", action="append", default=[], choices=("train", "test"),
                        help="also score this split every epoch into the checkpoint's "
                             "history (learning curves; never used to select the epoch)")
    parser.add_argument("--ce-weight", type=float, default=0.5, help="label loss weight")
    parser.add_argument("--kd-weight", type=float, default=0.5,
                        help="weight of T^2 * KL(teacher || student) at --temperature")
    parser.add_argument("--feature-weight", type=float, default=0.1,
                        help="weight of the pooled-feature MSE to the teacher")
    parser.add_argument("--temperature", type=float, default=2.0)


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

    import torch

    from exporter.vit.checkpoint import Checkpoint, save_checkpoint
    from exporter.vit.config import get_preset
    from exporter.vit.distill import DistillConfig, TeacherEnsemble, init_from_teacher
    from exporter.vit.medmnist import load_medmnist, resolve_npz
    from exporter.vit.model import ViT, count_parameters
    from exporter.vit.training import train
    from runtime.errors import InvalidRequest
    from runtime.vision.preprocess import Preprocessing

    if args.threads:
        torch.set_num_threads(args.threads)
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
    data_path = resolve_npz(args.data)
    data = load_medmnist(data_path)
    config = preset.model.for_data(data.n_classes, data.channels).for_role(args.role, args.ternary)
    mean, std = data.normalisation(config.channels)
    spec = Preprocessing(size=config.image_size, channels=config.channels, mean=mean, std=std)

    teacher = None
    if args.teacher:
        if args.role == "teacher":
            raise InvalidRequest("--teacher", "a teacher is trained on labels alone")
        teachers = [_load_teacher(path, config.n_classes, spec) for path in args.teacher]
        teacher = TeacherEnsemble(teachers)

    torch.manual_seed(args.seed)
    model = ViT(config)
    not_copied = []
    if teacher is not None and args.init == "teacher":
        not_copied = init_from_teacher(model, teacher.teachers[0])
    distill = DistillConfig(args.ce_weight, args.kd_weight, args.feature_weight, args.temperature)

    print(f"{args.role}: {count_parameters(model):,} parameters, ternary={config.ternary}, "
          f"kv_heads={config.n_kv_heads}, {recipe.epochs} epochs on {data_path.name}", flush=True)

    def show(row: dict) -> None:
        print(f"epoch {row['epoch']:3d} loss {row['loss']:.4f} val acc "
              f"{row['val_accuracy']:.4f} auc {row['val_auc']:.4f} loss {row['val_loss']:.4f} "
              f"({row['seconds']:.1f} s)", flush=True)

    result = train(
        model, data, spec, recipe, seed=args.seed, teacher=teacher,
        distill=distill if teacher is not None else None,
        time_budget_s=args.time_budget_s, on_epoch=show, device=args.device,
        monitor=tuple(args.monitor),
    )
    record = {
        "preset": args.preset,
        "data": data_path.name,
        "data_path": str(data_path.resolve()),
        "seed": args.seed,
        "device": args.device,
        "recipe": dataclasses.asdict(recipe),
        "teacher": str(args.teacher[0]) if args.teacher else None,  # the one init uses
        "teachers": [str(path) for path in args.teacher],
        "init": args.init if teacher is not None else "random",
        "not_copied_from_teacher": not_copied,
        "distillation": dataclasses.asdict(distill) if teacher is not None else None,
        "parameters": count_parameters(model),
        **result.to_dict(),
    }
    out = save_checkpoint(
        Checkpoint(model=model, role=args.role, label_names=data.label_names,
                   preprocessing=spec, record=record),
        args.out,
    )
    summary = {"checkpoint": str(out), "best_epoch": result.best_epoch,
               "seconds": round(result.seconds, 1), **result.metrics}
    if result.teacher_metrics is not None:
        summary["teacher"] = result.teacher_metrics
        which = f"ensemble of {len(args.teacher)}" if len(args.teacher) > 1 else "teacher"
        gap = result.metrics["test"]["accuracy"] - result.teacher_metrics["test"]["accuracy"]
        print(f"test accuracy: student {result.metrics['test']['accuracy']:.4f}, {which} "
              f"{result.teacher_metrics['test']['accuracy']:.4f} ({100 * gap:+.1f} points)",
              flush=True)
    print(json.dumps(summary))
    return 0


def _load_teacher(path: str, n_classes: int, spec):
    """A frozen teacher checkpoint's model, checked against the student's data."""
    from exporter.vit.checkpoint import load_matching_checkpoint

    teacher = load_matching_checkpoint(path, n_classes, spec, "--teacher", "the data").model
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
