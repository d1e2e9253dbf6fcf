"""KServe v2 / Triton protocol: Triton's own client (tritonclient) against `e2edge serve`.

tritonclient and e2edge's KServe stubs define the same protobuf names and cannot
share a process, so the client runs in tests/runtime/server/kserve/triton_client_checks.py as a
child process and this file asserts on the JSON it prints. Nothing here imports
tritonclient, so the rest of the suite may import the daemon freely.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime.llm.engine import LLMEngine
from runtime.llm.sampling import SamplingParams

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                       reason="tritonclient is not installed (pip install tritonclient)"),
]

HERE = Path(__file__).resolve().parent
CHECKS = HERE / "triton_client_checks.py"
PROMPT = "To be, or not"


def run_checks(target: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(CHECKS), target, *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


class Serve:
    def __init__(self, root: Path, config_text: str, env: dict | None = None):
        self.config = root / "daemon.yaml"
        self.config.write_text(config_text)
        self.log_path = root / "serve.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "e2edge.cli", "serve", "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        port = self._wait(r"ready on 127\.0\.0\.1:(\d+)")[1]
        self.target = f"127.0.0.1:{port}"

    def _wait(self, pattern: str, timeout_s: float = 90) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log_path.read_text())
            if found:
                return found
            assert self.process.poll() is None, self.log_path.read_text()
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the log:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
        self._log.close()


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_llama_package) -> Path:
    root = tmp_path_factory.mktemp("kserve")
    (root / "repo").mkdir()
    shutil.copytree(tiny_llama_package, root / "repo" / "extra")
    shutil.copytree(tiny_llama_package, root / "outside")
    (root / "repo" / "escape").symlink_to(root / "outside")  # a package outside the folder
    return root


@pytest.fixture(scope="module")
def daemon(repo, tiny_llama_package):
    serve = Serve(repo, f"listen: 127.0.0.1:0\n"
                        f"models:\n  - name: llm\n    path: {tiny_llama_package}\n"
                        f"    max_concurrent: 2\n"
                        f"repository:\n  directories: [{repo / 'repo'}]\n")
    yield serve
    serve.stop()


@pytest.fixture(scope="module")
def engine(tiny_llama_package) -> LLMEngine:
    return LLMEngine.load(tiny_llama_package)


def _text(engine: LLMEngine, max_new_tokens: int) -> str:
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    return "".join(e.text for e in engine.generate(PROMPT, params))


def _describe(descriptor_module: str) -> dict:
    """Every message's fields (number, type, label, message type) via a child process."""
    code = f"""
import json, importlib
pool = importlib.import_module({descriptor_module!r}).DESCRIPTOR
def walk(d, out):
    out[d.full_name] = {{f.name: [f.number, f.type, f.is_repeated,
                        f.message_type.full_name if f.message_type else ""] for f in d.fields}}
    for n in d.nested_types: walk(n, out)
out = {{}}
for m in pool.message_types_by_name.values(): walk(m, out)
svc = pool.services_by_name.get("GRPCInferenceService")
if svc: out["rpcs"] = {{m.name: [m.input_type.full_name, m.output_type.full_name,
                        m.client_streaming, m.server_streaming] for m in svc.methods}}
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    return json.loads(result.stdout)


def test_proto_matches_tritons_field_numbers_and_types():
    ours = _describe("runtime.proto.kserve.grpc_service_pb2")
    theirs = _describe("tritonclient.grpc.service_pb2")
    theirs.update({k: v for k, v in _describe("tritonclient.grpc.model_config_pb2").items()
                   if k not in theirs})
    assert len(ours["rpcs"]) == 12
    for rpc, signature in ours["rpcs"].items():
        assert theirs["rpcs"][rpc] == signature, rpc
    for message, fields in ours.items():
        if message == "rpcs":
            continue
        assert message in theirs, message
        for name, spec in fields.items():
            assert theirs[message].get(name) == spec, f"{message}.{name}: {spec}"
        if not message.startswith(("inference.ModelConfig", "inference.ModelInput",
                                   "inference.ModelOutput")):
            assert set(fields) == set(theirs[message]), f"{message} differs"


def test_live_ready_metadata_infer_and_errors(daemon, engine):
    out = run_checks(daemon.target, "basics", "llm")
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["unknown_ready"] is False
    assert out["server"]["name"] == "e2edge" and "model_repository" in out["server"]["extensions"]
    metadata = out["metadata"]
    assert metadata["platform"] == "e2edge_llm" and metadata["versions"] == ["1"]
    assert {"name": "text_input", "datatype": "BYTES", "shape": ["1"]} in metadata["inputs"]
    assert metadata["outputs"][0]["name"] == "text_output"
    assert out["config"]["model_transaction_policy"]["decoupled"] is True
    expected = _text(engine, 12)
    assert out["text"] == expected and out["text_by_parameters"] == expected
    assert out["id"] == "req-1"
    assert out["parameters"]["finish_reason"]["string_param"] == "length"
    assert int(out["parameters"]["completion_tokens"]["int64_param"]) == 12
    assert out["inference_count"] >= 2
    index = {m["name"]: (m.get("state"), m.get("reason", "")) for m in out["index"]}
    assert index == {"llm": ("READY", ""), "extra": ("UNAVAILABLE", "unloaded")}  # no escape
    assert out["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert out["bad_input"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "text_input" in out["bad_input"]["message"]
    assert out["bad_temperature"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "temperature" in out["bad_temperature"]["message"]


def test_stream_infer_yields_the_generation_piece_by_piece(daemon, engine):
    out = run_checks(daemon.target, "stream", "llm")
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    pieces = [e.text for e in engine.generate(PROMPT, params) if e.text]
    assert len(pieces) > 1
    assert out["pieces"] == pieces, "expected one response per piece the engine made"
    assert out["finals"][-1] is True and not any(out["finals"][:-1])
    assert out["parameters"]["finish_reason"]["string_param"] == "length"
    assert out["error"].startswith("INVALID_ARGUMENT: text_input")  # the stream went on


def test_repository_load_and_unload_stay_inside_the_folders(daemon):
    out = run_checks(daemon.target, "repository", "extra", "escape")
    assert out["before"] is False
    assert out["load"] == {"status": "OK"} and out["after_load"] is True
    assert out["infer"]
    assert {"name": "extra", "version": "1", "state": "READY"} in out["index"]
    assert out["unload"] == {"status": "OK"} and out["after_unload"] is False
    assert out["infer_unloaded"]["status"] == "StatusCode.NOT_FOUND"
    assert out["traversal"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert out["symlink_escape"]["status"] == "StatusCode.NOT_FOUND"
    assert out["missing"]["status"] == "StatusCode.NOT_FOUND"
    assert out["config_override"]["status"] == "StatusCode.INVALID_ARGUMENT"


def test_probes_stay_open_under_token_auth(tmp_path, tiny_llama_package):
    token = "kserve-test-token-0123456789abcdef"
    (tmp_path / "tokens").write_text(token + "\n")
    serve = Serve(tmp_path, f"listen: 127.0.0.1:0\nauth: {{tokens_file: tokens}}\n"
                            f"models:\n  - name: llm\n    path: {tiny_llama_package}\n")
    try:
        denied = run_checks(serve.target, "auth", "llm", "-")
        allowed = run_checks(serve.target, "auth", "llm", token)
    finally:
        serve.stop()
    assert denied["ready"] is True and allowed["ready"] is True
    assert denied["metadata"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert allowed["metadata"] == {"status": "OK"}


def test_vision_package_takes_pixels_or_png_and_returns_probabilities(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("PIL")
    from PIL import Image
    from vit_fixtures import make_tiny_vit_checkpoint, write_synthetic_npz

    from exporter.vit.onnx_export import ExportOptions, export_vit
    from runtime.vision.engine import VisionEngine

    npz = write_synthetic_npz(tmp_path / "synth.npz", channels=1)
    ckpt = make_tiny_vit_checkpoint(tmp_path / "ckpt", npz, ternary="all", epochs=1)
    export_vit(ckpt, tmp_path / "pkg", ExportOptions(data=str(npz)))
    image = np.load(npz)["test_images"][0]  # (12, 12) uint8
    np.save(tmp_path / "image.npy", image)
    Image.fromarray(image).save(tmp_path / "image.png")
    expected = VisionEngine(tmp_path / "pkg").probabilities(image)  # (1, 3)

    serve = Serve(tmp_path, f"listen: 127.0.0.1:0\n"
                            f"models:\n  - name: vit\n    path: {tmp_path / 'pkg'}\n")
    try:
        out = run_checks(serve.target, "vision", "vit", str(tmp_path / "image.png"))
    finally:
        serve.stop()
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["from_png"], expected, rtol=1e-5, atol=1e-6)
    best = int(np.argmax(expected[0]))
    assert out["top"][0].split(":")[1:] == [str(best), str(best)]
    assert out["metadata"]["platform"] == "e2edge_vision"
    assert out["bad_image"]["status"] == "StatusCode.INVALID_ARGUMENT"


def test_kserve_tensor_pixels_follow_the_input_layouts():
    from runtime.server.kserve.vision import tensor_pixels

    assert tensor_pixels(np.zeros((28, 28), np.uint8)) == 784  # [H, W]
    assert tensor_pixels(np.zeros((28, 20, 3), np.float32)) == 560  # [H, W, C]
    assert tensor_pixels(np.zeros((4, 28, 20, 3), np.uint8)) == 4 * 560  # [N, H, W, C]
    assert tensor_pixels(np.zeros(5, np.uint8)) is None  # malformed: reported when decoded
    png = io.BytesIO()
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(png, format="PNG")
    assert tensor_pixels(np.array([png.getvalue()] * 3, dtype=object)) == 3 * 42
    assert tensor_pixels(np.array([png.getvalue(), b"junk"], dtype=object)) is None


@pytest.mark.parametrize("shape", [[0, 2**33, 2**33], [2**33, 2**33, 0], [0, 2**40]])
def test_an_empty_tensor_with_huge_sizes_is_invalid_not_a_crash(shape):
    from runtime.errors import InvalidRequest
    from runtime.proto.kserve import grpc_service_pb2 as kpb
    from runtime.server.kserve import convert as kserve_convert

    request = kpb.ModelInferRequest(model_name="demo")
    request.inputs.add(name="text_input", datatype="BOOL", shape=shape)
    with pytest.raises(InvalidRequest, match="byte limit"):
        kserve_convert.input_tensors(request, max_bytes=1 << 24)
    request.inputs[0].shape[:] = [0, 3]  # a plain empty tensor is still read
    assert kserve_convert.input_tensors(request, max_bytes=1 << 24)["text_input"].shape == (0, 3)
