"""The options of MAGRIP pruning and of its sweep: frozen dataclasses and their choices.

They import no torch, so `e2edge prune`'s parser takes its defaults and choices from
these definitions (its --help must not wait for torch); the pipeline validates them
once (`validate`) and trusts them inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.magrip.allocation import ALLOCATIONS

METHODS = ("magrip", "magnitude", "gradient", "random")
SENSITIVITIES = ("taylor", "jacobian")


@dataclass(frozen=True)
class SaliencyOptions:
    """How neurons are scored (saliency.py)."""

    method: str = "magrip"  # magrip | magnitude | gradient | random
    sensitivity: str = "taylor"  # taylor | jacobian
    magnitude_weight: float = 1.0  # MAGRIP's weight of the contribution signal
    sensitivity_weight: float = 1.0  # MAGRIP's weight of the sensitivity signal
    batch_size: int = 2  # calibration windows per forward/backward pass

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.sensitivity not in SENSITIVITIES:
            raise ValueError(f"sensitivity must be one of {SENSITIVITIES}, "
                             f"got {self.sensitivity!r}")
        if self.magnitude_weight < 0 or self.sensitivity_weight < 0 or (
            self.magnitude_weight + self.sensitivity_weight == 0
        ):
            raise ValueError("saliency weights must be >= 0 and not both 0")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")

    @property
    def weights(self) -> tuple[float, float]:
        """(contribution weight, sensitivity weight) of this method."""
        return {
            "magrip": (self.magnitude_weight, self.sensitivity_weight),
            "magnitude": (1.0, 0.0),
            "gradient": (0.0, 1.0),
            "random": (0.0, 0.0),
        }[self.method]

@dataclass(frozen=True)
class MaskOptions:
    """The trained mask that refines MAGRIP's staged choice (mask.py)."""

    steps: int = 512  # at most; 0 = no mask refinement
    check_every: int = 32  # steps between held-out checks (with a judge)
    patience: int = 3  # checks without improvement before the training stops; 0 = never
    lr: float = 2e-3  # Adam, in rank units (a logit moves at most ~lr per step)
    temperature: float = 0.05  # of the sigmoid whose gradient stands in for the step
    penalty: float = 1.0  # weight of the kept-fraction penalty (see mask.py)
    batch_size: int = 2

    def validate(self) -> None:
        if self.steps < 0:
            raise ValueError(f"mask steps must be >= 0, got {self.steps}")
        if self.check_every < 1 or self.patience < 0:
            raise ValueError("mask check interval must be >= 1 and patience >= 0")
        if self.lr <= 0 or self.temperature <= 0 or self.penalty < 0:
            raise ValueError("mask lr and temperature must be > 0, penalty >= 0")
        if self.batch_size < 1:
            raise ValueError(f"mask batch size must be >= 1, got {self.batch_size}")

FINETUNE_PARAMS = ("ffn", "lora")
DEFAULT_STEPS = 300  # "a few hundred" when the CLI asks for a fine-tune without a count


@dataclass(frozen=True)
class FinetuneOptions:
    """The recovery fine-tune after pruning (finetune.py)."""

    steps: int = 0
    params: str = "ffn"  # ffn | lora
    lr: float | None = None  # default: 1e-4 for ffn, 1e-3 for lora
    lora_rank: int = 8
    batch_size: int = 4
    seq_len: int = 256
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0

    def validate(self) -> None:
        if self.steps < 0:
            raise ValueError(f"fine-tune steps must be >= 0, got {self.steps}")
        if self.params not in FINETUNE_PARAMS:
            raise ValueError(f"fine-tune params must be one of {FINETUNE_PARAMS}, "
                             f"got {self.params!r}")
        if self.lora_rank < 1 or self.batch_size < 1 or self.seq_len < 2:
            raise ValueError("fine-tune lora rank and batch size must be >= 1, seq len >= 2")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"fine-tune lr must be > 0, got {self.lr}")

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-4 if self.params == "ffn" else 1e-3

@dataclass(frozen=True)
class PruneOptions:
    """One pruning run (pipeline.py)."""

    ratio: float  # fraction of the FFN neurons (= FFN parameters) to remove, in (0, 1)
    saliency: SaliencyOptions = field(default_factory=SaliencyOptions)
    allocation: str = "global"  # global | uniform
    min_width: int | None = None  # per layer; None: 10 % of the layer's width
    seq_len: int = 512  # calibration window length
    samples: int = 128  # calibration windows
    coarse_fraction: float = 0.75  # of the neurons to remove, removed by the first pass
    fine_steps: int = 3  # passes that remove the rest
    mask: MaskOptions = field(default_factory=MaskOptions)  # MAGRIP only
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    seed: int = 0

    def validate(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and 0.0 < self.ratio < 1.0):
            raise ValueError(f"prune ratio must be in (0, 1), got {self.ratio}")
        self.saliency.validate()
        self.mask.validate()
        self.finetune.validate()
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if self.min_width is not None and self.min_width < 1:
            raise ValueError(f"min width must be >= 1, got {self.min_width}")
        if not 0.0 < self.coarse_fraction <= 1.0:
            raise ValueError(f"coarse fraction must be in (0, 1], got {self.coarse_fraction}")
        if self.fine_steps < 0:
            raise ValueError(f"fine steps must be >= 0, got {self.fine_steps}")

    @property
    def refine_mask(self) -> bool:
        return self.saliency.method == "magrip" and self.mask.steps > 0

@dataclass(frozen=True)
class SweepOptions:
    """A sweep over methods and ratios, and how it measures each result (report.py)."""

    ratios: tuple[float, ...]
    eval_texts: tuple[str, ...]  # text specs
    methods: tuple[str, ...] = METHODS
    eval_max_tokens: int | None = 20000
    eval_window: int | None = None
    eval_stride: int | None = None
    decode_tokens: int = 96
    decode_rounds: int = 5
    threads: int = 0  # onnxruntime intra-op threads for the decode measurement (0: default)
    keep_artifacts: bool = False  # keep the pruned checkpoints and packages

    def validate(self) -> None:
        if not self.ratios or not all(0 < r < 1 for r in self.ratios):
            raise ValueError(f"sweep ratios must be in (0, 1), got {list(self.ratios)}")
        if not self.eval_texts:
            raise ValueError("a sweep needs at least one --eval-text")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
        self.validate_decode()

    def validate_decode(self) -> None:
        """What re-timing a finished sweep needs (it has no ratios or texts of its own)."""
        if self.decode_tokens < 2 or self.decode_rounds < 1:
            raise ValueError("decode tokens must be >= 2 and decode rounds >= 1")
