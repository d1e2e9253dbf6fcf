"""VisionEngine: a vision model package, from raw pixels to labels.

    engine = VisionEngine("artifacts/vit/retina-student-pkg")
    [prediction] = engine.classify(image_uint8_hwc, top_k=3)
    prediction.top  # [("0", 0.61), ("1", 0.22), ("2", 0.09)]

The engine preprocesses per the manifest (runtime/vision/preprocess.py), runs a
batch, and returns softmax probabilities. Ternary packages are executed as chosen
by `execution` (runtime/vision/ternary_exec.py); "auto" unpacks the 2-bit weights
once at load time to int8 codes for an integer GEMM fed with the graph's own int8
activation codes: the fastest exact mode measured on x86 CPUs, faster than the fp32
model (docs/bitmedvit.md); with GPU providers it unpacks them to
fp16 (onnxruntime's CUDA provider has no 2-bit kernel, and fp16 runs on tensor
cores). With backend "tensorrt" it runs the package's engine for this GPU, built by
`e2edge build-engine`, whose 2-bit layers are the packed-ternary plugin over the same
words. The package on disk stays 2-bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.backends.cpu_threads import apply_cpu_threads
from runtime.backends.onnxruntime_backend import choose_providers
from runtime.errors import BackendUnavailable, InvalidRequest, PackageError
from runtime.numerics import softmax
from runtime.package import ModelPackage, load_package
from runtime.vision.preprocess import Preprocessing, preprocess
from runtime.vision.ternary_exec import MODES, unpack_ternary

EXECUTIONS = ("auto", *MODES)


def auto_execution(providers: list[str]) -> str:
    """How "auto" runs a ternary package: int8 codes on the CPU provider alone (measured
    fastest there), fp16 weights when a GPU provider runs the graph."""
    return "int8" if all(p == "CPUExecutionProvider" for p in providers) else "fp16"


@dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # (n_classes,) float32, sums to 1
    top: list[tuple[str, float]]  # (label, probability), most likely first


class VisionEngine:
    def __init__(
        self,
        package: str | Path | ModelPackage,
        execution: str = "auto",
        threads: int = 0,
        providers: list[str] | None = None,
        backend: str = "onnxruntime",
        spin: bool = True,
    ):
        self.package = package if isinstance(package, ModelPackage) else load_package(package)
        manifest = self.package.manifest
        if self.package.kind != "vision":
            raise PackageError(f"{self.package.root}: kind {self.package.kind!r}, not vision")
        if execution not in EXECUTIONS:
            raise ValueError(f"execution must be one of {EXECUTIONS}, got {execution!r}")
        try:
            self.preprocessing = Preprocessing.from_dict(manifest["preprocessing"])
            (self.input_name,) = manifest["io"]["inputs"]
            (self.output_name,) = manifest["io"]["outputs"]
            labels_file = self.package.file(manifest.get("labels", "labels.json"))
            self.labels: list[str] = [str(x) for x in json.loads(labels_file.read_text())]
        except (KeyError, TypeError, ValueError) as e:
            raise PackageError(f"{self.package.root}: bad vision manifest or labels ({e})") from e
        if len(self.labels) != manifest.get("n_classes", len(self.labels)):
            raise PackageError(f"{self.package.root}: labels.json does not match n_classes")

        ternary = manifest.get("quantization", {}).get("ternary", "none") != "none"
        self.ternary = ternary  # 2-bit layers in the package
        self.backend_name = backend
        self.session = None  # onnxruntime's, or:
        self.tensorrt = None  # the package's engine for this GPU (2-bit layers as the plugin)
        if backend == "tensorrt":
            from runtime.backends.tensorrt_backend import TensorRTBackend

            self.tensorrt = TensorRTBackend(self.package)
            self.execution = "packed"
            self.providers = list(self.tensorrt.providers)
            return
        self._start_onnxruntime(execution, ternary, threads, providers, spin)

    def _start_onnxruntime(self, execution: str, ternary: bool, threads: int,
                           providers: list[str] | None, spin: bool) -> None:
        import onnxruntime as ort

        # Asked-for providers must exist here (one clear line naming what is missing, e.g.
        # CUDAExecutionProvider without onnxruntime-gpu); none asked for: the CPU.
        providers = choose_providers(providers) if providers else ["CPUExecutionProvider"]
        if execution == "auto":
            execution = auto_execution(providers)
        self.execution = execution if ternary else "fp32"
        options = ort.SessionOptions()
        apply_cpu_threads(options, threads, spin)  # spin: busy-wait between ops
        options.log_severity_level = 3
        if ternary and self.execution != "packed":
            try:
                import onnx
            except ModuleNotFoundError as e:
                raise BackendUnavailable(
                    f"execution {self.execution!r} unpacks the 2-bit weights with the onnx "
                    "package, which is not installed: pip install onnx, or use "
                    "execution='packed'"
                ) from e
            graph = unpack_ternary(onnx.load(str(self.package.onnx_path)), self.execution)
            source: str | bytes = graph.SerializeToString()
        else:
            source = str(self.package.onnx_path)
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.providers = list(self.session.get_providers())

    @property
    def max_batch(self) -> int | None:
        """The most images one run takes (a TensorRT engine's profile); None: no limit."""
        return self.tensorrt.max_batch(self.input_name) if self.tensorrt is not None else None

    @property
    def name(self) -> str:
        return self.package.name

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """Raw images -> (B, C, S, S) float32; InvalidRequest on a malformed image."""
        try:
            return preprocess(images, self.preprocessing)
        except ValueError as e:
            raise InvalidRequest("image", str(e)) from e

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed (B, C, S, S) float32 -> (B, n_classes) logits."""
        spec = self.preprocessing
        expected = (spec.channels, spec.size, spec.size)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != expected:
            raise InvalidRequest(
                "pixels", f"expected (batch, {', '.join(map(str, expected))}), got {pixels.shape}"
            )
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if self.tensorrt is not None:
            return self.tensorrt.run({self.input_name: pixels})[self.output_name]
        return self.session.run([self.output_name], {self.input_name: pixels})[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Raw images -> (B, n_classes) probabilities."""
        return softmax(self.logits(self.preprocess(images)))

    def classify(self, images: np.ndarray, top_k: int = 1) -> list[Prediction]:
        if not 1 <= top_k <= len(self.labels):
            raise InvalidRequest("top_k", f"must be between 1 and {len(self.labels)}")
        probs = self.probabilities(images)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        return [
            Prediction(
                probabilities=row,
                top=[(self.labels[i], float(row[i])) for i in best],
            )
            for row, best in zip(probs, order)
        ]
