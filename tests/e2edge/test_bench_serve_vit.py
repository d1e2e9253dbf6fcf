"""`e2edge bench serve-vit`: both batching sides in one daemon, images/s and latency."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from vision_package import tiny_vision_package

pytestmark = pytest.mark.timeout(120)


def test_bench_serve_vit_reports_both_sides_at_each_client_count(tmp_path_factory, tmp_path):
    import numpy as np

    package = tiny_vision_package(tmp_path_factory)
    out = tmp_path / "serve-vit.json"
    # --images by data-file name, found in $E2EDGE_DATA_DIR as `train vit --data` finds it
    data = tmp_path / "data"
    data.mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (8, 12, 12, 3), dtype=np.uint8)
    np.savez(data / "tinymnist.npz", test_images=pixels)
    result = subprocess.run(
        [sys.executable, "-m", "e2edge.cli", "bench", "serve-vit", "--package", str(package),
         "--clients", "1,6", "--duration", "0.4", "--rounds", "2", "--warmup", "0.1",
         "--max-batch", "4", "--max-delay-ms", "3", "--input", "tensor", "--threads", "1",
         "--images", "tinymnist.npz", "--ceiling", "--out", str(out)],
        capture_output=True, text=True, timeout=100,
        env={**os.environ, "E2EDGE_DATA_DIR": str(data)},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["package_name"] == "tiny-vision" and report["input"] == "tensor"
    assert report["images"] == str(data / "tinymnist.npz")
    rows = {(r["batching"], r["clients"]): r for r in report["results"]}
    assert set(rows) == {(b, c) for b in ("off", "on", "ceiling") for c in (1, 6)}
    for (batching, clients), row in rows.items():
        assert row["images_per_s"] == pytest.approx(row["requests"] / 0.4, rel=1e-3)
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        # Where the cores went: the daemon (its own process) and the clients, per image.
        assert row["daemon_cpu_ms_per_image"] > 0 and row["client_cpu_ms_per_image"] > 0
        assert 0 < row["cores_busy"] <= (os.cpu_count() or 1) * 1.05
        if batching == "off" or clients == 1:
            assert row["mean_batch"] == 1.0
        else:
            assert 1.0 <= row["mean_batch"] <= 4.0
    assert rows["on", 6]["mean_batch"] > 1.0  # six clients at once do share batches
    check = report["batching_check"]
    assert check["clients"] == 6
    assert check["speedup"] == pytest.approx(
        rows["on", 6]["images_per_s"] / rows["off", 6]["images_per_s"], rel=1e-2)
    assert check["meets_speedup"] == (check["speedup"] >= 2.0)
    # The ceiling: the no-op twin, batched, in the same windows; it batches too.
    assert rows["ceiling", 6]["mean_batch"] > 1.0
    assert check["ceiling_images_per_s"] == rows["ceiling", 6]["images_per_s"]
    assert check["ceiling_over_unbatched"] == pytest.approx(
        check["ceiling_images_per_s"] / rows["off", 6]["images_per_s"], rel=1e-2)
    assert "batched/unbatched throughput" in result.stdout and "ceiling" in result.stdout


def test_the_null_package_mirrors_the_real_one_and_answers_uniformly(tmp_path_factory,
                                                                      tmp_path):
    import numpy as np

    from e2edge.bench.null_vision_package import write_null_package
    from runtime.package import load_package
    from runtime.vision.engine import VisionEngine

    real = load_package(tiny_vision_package(tmp_path_factory))
    null = load_package(write_null_package(real, tmp_path / "null"))  # checksums verified
    assert null.kind == "vision" and null.name == "tiny-vision-null"
    for key in ("io", "preprocessing", "n_classes"):
        assert null.manifest[key] == real.manifest[key]
    assert "quantization" not in null.manifest
    engine, twin = VisionEngine(real), VisionEngine(null)
    assert twin.labels == engine.labels
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    probabilities = twin.probabilities(images)
    assert probabilities.shape == engine.probabilities(images).shape
    np.testing.assert_allclose(probabilities, 1 / len(engine.labels), rtol=1e-6)
