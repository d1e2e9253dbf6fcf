"""`e2edge serve` as a process and `e2edge classify` on real files, end to end."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from vision_package import tiny_vision_package

from runtime.client import EdgeClient
from runtime.vision.engine import VisionEngine

pytestmark = pytest.mark.timeout(120)

E2EDGE = [sys.executable, "-m", "e2edge.cli"]
LINE = re.compile(r"^(?P<file>\S+): (?P<top>.+) in (?P<ms>\d+\.\d) ms$")


def _e2edge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*E2EDGE, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    package = tiny_vision_package(tmp_path_factory)
    tmp = tmp_path_factory.mktemp("classify-cli")
    target = f"unix:{tmp}/e2edge.sock"
    config = tmp / "daemon.yaml"
    config.write_text(
        f"listen: {target}\nmodels:\n  - name: tiny\n    path: {package}\n"
        "    batching: {max_batch: 8, max_delay_ms: 2}\n"
    )
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen([*E2EDGE, "serve", "--config", str(config)],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        with EdgeClient(target) as client:
            (info,) = client.wait_loaded(timeout_s=60)
            assert not info.error, info.error
        yield target, package, tmp
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()


def test_classify_prints_one_line_per_file(served):
    target, package, tmp = served
    rng = np.random.default_rng(3)
    engine = VisionEngine(package)
    rgb = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, size=(20, 16), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp / "a.png")
    out = io.BytesIO()
    Image.fromarray(grey).save(out, format="JPEG", quality=90)
    (tmp / "b.jpg").write_bytes(out.getvalue())
    floats = rng.random((10, 10, 3), dtype=np.float32)
    np.save(tmp / "c.npy", floats)
    (tmp / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(30))
    files = [tmp / "a.png", tmp / "bad.png", tmp / "b.jpg", tmp / "missing.png", tmp / "c.npy"]
    result = _e2edge("classify", "--target", target, "--model", "tiny", "--top-k", "2",
                     *map(str, files))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    expected = {
        "a.png": rgb,
        "b.jpg": np.asarray(Image.open(tmp / "b.jpg")),
        "c.npy": floats,
    }
    assert [LINE.match(line)["file"].rsplit("/", 1)[-1] for line in lines] == list(expected)
    for line, pixels in zip(lines, expected.values()):
        probs = engine.probabilities(pixels)[0]
        best = np.argsort(-probs, kind="stable")[:2]
        want = ", ".join(f"{engine.labels[i]} ({probs[i]:.3f})" for i in best)
        assert LINE.match(line)["top"] == want
    errors = result.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"e2edge classify: {tmp / 'bad.png'}: INVALID_ARGUMENT: "
                                "images[0]: cannot decode PNG")
    assert errors[1].startswith(f"e2edge classify: {tmp / 'missing.png'}: ")
    assert "No such file" in errors[1]

    only_good = _e2edge("classify", "--target", target, "--model", "tiny", str(tmp / "a.png"))
    assert only_good.returncode == 0 and only_good.stderr == ""
    assert LINE.match(only_good.stdout.strip())["top"].count("(") == 1


def test_classify_errors_are_one_line(served, tmp_path):
    target, _, tmp = served
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    unknown = _e2edge("classify", "--target", target, "--model", "nope", str(image))
    assert unknown.returncode == 1
    assert re.fullmatch(rf"e2edge classify: {re.escape(str(image))}: NOT_FOUND: model 'nope' "
                        r"is not served here \(models: tiny\)\n", unknown.stderr)
    top_k = _e2edge("classify", "--target", target, "--model", "tiny", "--top-k", "9", str(image))
    assert top_k.returncode == 1
    assert "INVALID_ARGUMENT: top_k: must be between 1 and" in top_k.stderr
    nobody = _e2edge("classify", "--target", f"unix:{tmp_path}/none.sock", "--model", "tiny",
                     "--timeout", "3", str(image))
    assert nobody.returncode == 1 and nobody.stdout == ""
    assert len(nobody.stderr.splitlines()) == 1 and "UNAVAILABLE" in nobody.stderr
