"""onnxruntime-genai as `e2edge bench llm`'s peer: the same checkpoint, timed the same way.

The model comes from onnxruntime-genai's own model builder, run as a subprocess

    python -m onnxruntime_genai.models.builder -i CKPT -o OUT -p fp32|int4|int8 -e cpu

at the precision of the package under test (int4/int8 also with the package's
MatMulNBits block size and accuracy level). A build takes a while, so it is cached
in `~/.cache/e2edge/ortgenai/<key>` ($E2EDGE_CACHE_DIR moves the root), the key
being a sha256 over the checkpoint's safetensors files and config.json, the builder
arguments and the onnxruntime-genai version. The builder writes into a temporary
folder that is renamed into place, so the cache never holds a half-built model.

Timing mirrors the runtime's own stats: prefill = append_tokens (the prompt's forward
pass) + the first generate_next_token (its sampling); decode = the remaining n - 1
tokens, each one forward pass and a sampling, so decode tokens/s = (n - 1) / time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from e2edge.bench.llm_runs import timed_runs
from e2edge.data import cache_dir

# The package's manifest `quantization.weights` -> the builder's `-p`. The builder's
# CPU path has no fp16/bf16, so those packages are compared with nothing.
BUILDER_PRECISION = {"fp32": "fp32", "int4": "int4", "int8": "int8"}
LOG_TAIL_LINES = 10
INSTALL_HINT = "pip install onnxruntime-genai==0.18.0 onnx-ir"


def import_ortgenai():
    """The onnxruntime_genai module, or one clear line on how to install it."""
    try:
        import onnxruntime_genai
    except ImportError as e:
        raise RuntimeError(
            f"--compare-ortgenai needs onnxruntime-genai ({e}); install it: {INSTALL_HINT}"
        ) from None
    return onnxruntime_genai


def builder_arguments(quantization: dict | None) -> tuple[list[str] | None, str | None]:
    """(the builder's precision arguments, None) for a package, or (None, why not)."""
    weights = (quantization or {}).get("weights", "fp32")
    precision = BUILDER_PRECISION.get(weights)
    if precision is None:
        return None, (f"the package's weights are {weights}; onnxruntime-genai's CPU builder "
                      f"only makes {', '.join(sorted(BUILDER_PRECISION))}")
    arguments = ["-p", precision]
    if precision != "fp32":
        # The same MatMulNBits blocking and activation precision as the package.
        extra = [f"{key}={quantization[key]}" for key in ("block_size", "accuracy_level")
                 if key in quantization]
        if extra:
            arguments += ["--extra_options", *extra]
    return arguments, None


def checkpoint_files(checkpoint: Path) -> list[Path]:
    """The files that define the model: its weights and its config."""
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not (checkpoint / "config.json").is_file() or not weights:
        raise ValueError(f"{checkpoint}: not a Hugging Face checkpoint folder "
                         "(needs config.json and *.safetensors)")
    return [*weights, checkpoint / "config.json"]


def cache_key(checkpoint: Path, arguments: list[str], version: str) -> str:
    digest = hashlib.sha256()
    for path in checkpoint_files(checkpoint):
        file_digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                file_digest.update(block)
        digest.update(f"{path.name} {file_digest.hexdigest()}\n".encode())
    digest.update(f"builder {' '.join(arguments)} -e cpu\nonnxruntime-genai {version}\n".encode())
    return digest.hexdigest()


def build_model(checkpoint: str | Path, arguments: list[str], version: str) -> tuple[Path, dict]:
    """The built model folder (from the cache when there) and facts about its build."""
    checkpoint = Path(checkpoint).expanduser().resolve()
    key = cache_key(checkpoint, arguments, version)
    root = cache_dir() / "ortgenai"
    target = root / key
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint),
               "-o", "OUT", *arguments, "-e", "cpu"]
    facts = {"model_dir": str(target), "cache_key": key, "builder_command": " ".join(command)}
    if (target / "genai_config.json").is_file():
        return target, {**facts, "cached": True, "build_s": None}
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{key}.building-", dir=root))
    try:
        out, log = work / "model", work / "build.log"
        command[command.index("OUT")] = str(out)
        # -c: the builder's scratch folder (default ./cache_dir, wherever the user stands).
        # Offline: it reads the tokenizer from the checkpoint and must not go looking online.
        start = time.perf_counter()
        with log.open("w") as log_file:
            status = subprocess.run(
                [*command, "-c", str(work / "scratch")], stdout=log_file,
                stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
            ).returncode
        build_s = time.perf_counter() - start
        if status != 0 or not (out / "genai_config.json").is_file():
            kept = root / f"{key}.failed.log"
            shutil.copyfile(log, kept)
            tail = "".join(log.read_text(errors="replace").splitlines(True)[-LOG_TAIL_LINES:])
            raise RuntimeError(f"onnxruntime-genai's model builder failed (status {status}) on "
                               f"{checkpoint}; full log: {kept}; its end:\n{tail}")
        shutil.move(log, out / "build.log")
        try:
            out.rename(target)
        except OSError:
            if not (target / "genai_config.json").is_file():  # not a concurrent build's win
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target, {**facts, "cached": False, "build_s": round(build_s, 1)}


class OrtGenaiSide:
    """onnxruntime-genai on the model its builder made from `checkpoint`, one run at a time."""

    def __init__(self, model_dir: Path, ids: list[int], new_tokens: int, threads: int):
        import numpy as np
        import onnxruntime

        og = import_ortgenai()
        config = og.Config(str(model_dir))
        if threads:  # the bench's thread count; 0: onnxruntime-genai's own default
            config.overlay(json.dumps(
                {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
            ))
        self.og = og
        self.model = og.Model(config)
        self.params = og.GeneratorParams(self.model)
        total = len(ids) + new_tokens
        # min_length = max_length: EOS cannot end a run early, as the runtime's ignore_eos.
        self.params.set_search_options(max_length=total, min_length=total, do_sample=False)
        self.prompt = np.asarray(ids, dtype=np.int32)  # (P,) int32
        self.new_tokens = new_tokens
        self.executor = [f"onnxruntime-genai {og.__version__} "
                         f"(onnxruntime {onnxruntime.__version__})"]

    def run_once(self) -> tuple[float, float, list[int]]:
        generator = self.og.Generator(self.model, self.params)
        start = time.perf_counter()
        generator.append_tokens(self.prompt)
        generator.generate_next_token()
        first = time.perf_counter()
        produced = 1
        while not generator.is_done():
            generator.generate_next_token()
            produced += 1
        decode_s = time.perf_counter() - first
        if produced != self.new_tokens:
            raise RuntimeError(f"onnxruntime-genai produced {produced} tokens, "
                               f"not {self.new_tokens}")
        tokens = [int(t) for t in generator.get_sequence(0)[len(self.prompt):]]
        return len(self.prompt) / (first - start), (produced - 1) / decode_s, tokens


def bench_ortgenai(checkpoint: str | Path, quantization: dict | None, ids: list[int],
                   new_tokens: int, runs: int, threads: int) -> dict:
    """Prefill/decode tokens/s of onnxruntime-genai on `checkpoint`, plus its greedy tokens.

    Raises RuntimeError when onnxruntime-genai is missing or its build fails; returns
    {"skipped": why} when the package's precision has no onnxruntime-genai CPU peer.
    """
    og = import_ortgenai()
    arguments, why_not = builder_arguments(quantization)
    if arguments is None:
        return {"skipped": why_not}
    model_dir, facts = build_model(checkpoint, arguments, og.__version__)
    result = timed_runs(OrtGenaiSide(model_dir, ids, new_tokens, threads), runs)
    facts = {
        "precision": arguments[1],
        **facts,
        "weight_bytes": sum(f.stat().st_size for f in model_dir.glob("*.onnx*")),
    }
    return {**result, **facts}


def compare_greedy(ours: list[int], theirs: list[int], count: int = 16) -> dict:
    """Whether the first `count` greedy tokens agree, and where they first differ."""
    n = min(count, len(ours), len(theirs))
    mismatch = next((i for i in range(n) if ours[i] != theirs[i]), None)
    return {"greedy_tokens_match": mismatch is None, "greedy_first_mismatch": mismatch,
            "greedy_tokens_compared": n}
