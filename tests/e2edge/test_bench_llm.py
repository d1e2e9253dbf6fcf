"""`e2edge bench llm`: onnxruntime-genai peer, memory roofline and daemon streams, for real.

The tiny random LLaMA runs through every side: our runtime, onnxruntime-genai built by
its own model builder from the same checkpoint, a real memory copy, and a real
`e2edge serve` child process with concurrent Generate streams.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2edge.bench.llm_streams import parse_streams
from e2edge.bench.memory_bandwidth import (
    READ_COUNTING,
    bytes_read_per_token,
    measure_copy_bandwidth,
    measure_read_bandwidth,
    roofline_tokens_per_s,
)
from e2edge.bench.ortgenai import (
    build_model,
    builder_arguments,
    cache_key,
    compare_greedy,
    import_ortgenai,
)

pytestmark = pytest.mark.timeout(240)


def _bench(package: Path, cache: Path, *extra: str) -> tuple[dict, str]:
    out = cache.parent / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "e2edge.cli", "bench", "llm", "--package", str(package),
         "--runs", "1", "--rounds", "2", "--new-tokens", "16", "--prompt-tokens", "12",
         "--threads", "2", "--out", str(out),
         *extra],
        capture_output=True, text=True, timeout=200,
        env={**os.environ, "E2EDGE_CACHE_DIR": str(cache)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text()), result.stdout


def test_bench_llm_against_ortgenai_roofline_and_streams(tiny_llama_package,
                                                         tiny_llama_checkpoint, tmp_path):
    cache = tmp_path / "cache"
    report, table = _bench(tiny_llama_package, cache, "--compare-ortgenai",
                           str(tiny_llama_checkpoint), "--streams", "1,2",
                           "--same-process-check")
    ours, peer = report["e2edge"], report["ortgenai"]
    assert report["threads"] == 2 and report["rounds"] == 2
    for side in (ours, peer):  # each side: the same threads, two rounds of one timed run
        assert side["prefill_tokens_per_s"] > 0 and side["decode_tokens_per_s"] > 0
        assert side["threads"] == 2 and side["rounds"] == 2 and len(side["decode_runs"]) == 2
        spread = side["decode_spread"]
        assert spread["min"] <= side["decode_tokens_per_s"] <= spread["max"]
        assert len(spread["round_medians"]) == 2
    check = report["same_process_check"]
    assert check["threads"] == 2 and check["decode_speedup"] > 0
    assert check["agreement"] == pytest.approx(
        check["decode_speedup"] / report["decode_speedup_vs_ortgenai"], abs=1e-3)
    # The same random fp32 model on both sides: greedy decoding must agree exactly.
    assert peer["precision"] == "fp32"
    assert peer["greedy_tokens_match"] is True and peer["greedy_first_mismatch"] is None
    assert peer["greedy_tokens_compared"] == 16
    assert peer["first_token_ids"] == ours["first_token_ids"] and len(ours["first_token_ids"]) == 16
    assert peer["cached"] is False and peer["build_s"] > 0
    assert Path(peer["model_dir"]).parent == cache / "ortgenai"
    assert (Path(peer["model_dir"]) / "genai_config.json").is_file()
    assert report["decode_speedup_vs_ortgenai"] == pytest.approx(
        ours["decode_tokens_per_s"] / peer["decode_tokens_per_s"], abs=0.01)

    bandwidth = report["memory_bandwidth"]
    assert bandwidth["best_gb_s"] >= bandwidth["median_gb_s"] > 0
    assert "read + write" in bandwidth["counted"]
    # The tiny model's embedding is not its LM head: a decode step reads one row of it.
    roofline = report["roofline"]
    weight_bytes = report["package"]["weight_bytes"]
    assert roofline["weight_bytes"] == weight_bytes
    tables = {t["name"]: t for t in roofline["gather_only_tables"]}
    assert tables["model.embed_tokens.weight"]["shape"] == [300, 64]
    skipped = sum(t["bytes"] - t["bytes"] // t["shape"][0] for t in tables.values())
    assert roofline["bytes_per_token"] == weight_bytes - skipped
    assert report["roofline_tokens_per_s"] == pytest.approx(
        bandwidth["best_gb_s"] * 1e9 / roofline["bytes_per_token"], rel=1e-3)
    assert ours["fraction_of_roofline"] == pytest.approx(
        ours["decode_tokens_per_s"] / report["roofline_tokens_per_s"], abs=1e-3)
    # The read ceiling: the best reader's weight-streaming rate over the same bytes per token.
    read = report["read_bandwidth"]
    assert read["best_gb_s"] == roofline["read_gb_s"] and "read once" in read["counted"]
    readers = read["readers"]
    assert set(readers) == {"reduction", "blas_gemv", "ort_gemv", "e2edge_gemv"}
    assert read["best_gb_s"] == max(r["best_gb_s"] for r in readers.values() if "best_gb_s" in r)
    assert report["read_ceiling_tokens_per_s"] == pytest.approx(
        read["best_gb_s"] * 1e9 / roofline["bytes_per_token"], rel=1e-3)
    assert ours["fraction_of_read_ceiling"] == pytest.approx(
        ours["decode_tokens_per_s"] / report["read_ceiling_tokens_per_s"], abs=1e-3)

    streams = report["streams"]
    assert streams["daemon"]["max_concurrent"] == 2
    assert [r["streams"] for r in streams["results"]] == [1, 2]
    for r in streams["results"]:
        assert r["aggregate_tokens_per_s"] > 0 and r["per_stream_decode_tokens_per_s_median"] > 0
    assert streams["results"][0]["speedup_vs_1"] == 1.0
    assert "onnxruntime-genai" in table and "roofline" in table and "greedy tokens" in table

    # A second bench finds the built model in the cache; skipped parts leave no keys.
    again, _ = _bench(tiny_llama_package, cache, "--compare-ortgenai",
                      str(tiny_llama_checkpoint), "--streams", "", "--bandwidth-mib", "0")
    assert again["ortgenai"]["cached"] is True
    assert again["ortgenai"]["model_dir"] == peer["model_dir"]
    assert again["ortgenai"]["greedy_tokens_match"] is True
    assert "streams" not in again and "roofline" not in again
    assert "fraction_of_roofline" not in again["e2edge"] and "read_bandwidth" not in again


def test_out_of_the_box_leaves_every_side_at_its_own_default(tiny_llama_package,
                                                               tiny_llama_checkpoint, tmp_path):
    report, table = _bench(tiny_llama_package, tmp_path / "cache", "--compare-ortgenai",
                           str(tiny_llama_checkpoint), "--streams", "", "--bandwidth-mib", "0",
                           "--default-threads")
    assert report["threads"] == 0 and report["thread_setting"] == "each runtime's own default"
    assert report["e2edge"]["threads"] == report["ortgenai"]["threads"] == 0
    assert "each runtime's default" in table


@pytest.mark.parametrize("weights", ["int4", "fp32"])
def test_the_kernel_ablation_times_the_runtime_on_onnxruntimes_own_kernels(
        weights, tiny_llama_package_int4, tiny_llama_package, tmp_path):
    from runtime.kernels import library as kernel_library

    package = tiny_llama_package_int4 if weights == "int4" else tiny_llama_package
    report, table = _bench(package, tmp_path / "cache", "--streams", "",
                           "--bandwidth-mib", "0", "--kernel-ablation", "--runs", "2")
    key = f"{weights}_matmuls"
    ablation = report["e2edge_ort_kernels"]
    kept = "onnxruntime MatMulNBits" if weights == "int4" else "onnxruntime MatMul"
    assert ablation[key].startswith(f"{kept} (turned off")
    assert ablation["decode_tokens_per_s"] > 0 and ablation["greedy_tokens_compared"] == 16
    assert report["decode_speedup_vs_ort_kernels"] > 0
    runs_kernel = kernel_library.unavailable(weights) is None
    assert report["e2edge"][key].startswith(
        f"e2edge {weights} kernel on" if runs_kernel else kept)
    assert f"e2edge {key.replace('_', ' ')}: " in table
    assert "e2edge, ort kernels" in table
    assert "decode speed-up vs e2edge on onnxruntime's own kernels" in table
    # Each side in its own process, one run at a time, taking turns: per round (after the
    # warm-ups, e2edge first) B A A B, and no two runs overlap.
    runs = sorted((start, end, side) for side in ("e2edge", "e2edge_ort_kernels")
                  for start, end in report[side]["run_windows_s"])
    assert [side for _, _, side in runs] == ["e2edge_ort_kernels", "e2edge", "e2edge",
                                             "e2edge_ort_kernels"] * 2
    assert all(end <= next_start for (_, end, _), (next_start, _, _) in zip(runs, runs[1:]))


def test_int4_build_uses_the_packages_block_size_and_accuracy_level(
        tiny_llama_checkpoint, tmp_path, monkeypatch):
    import onnx

    monkeypatch.setenv("E2EDGE_CACHE_DIR", str(tmp_path))
    quantization = {"weights": "int4", "bits": 4, "block_size": 16, "accuracy_level": 1}
    arguments, why_not = builder_arguments(quantization)
    assert why_not is None
    model_dir, facts = build_model(tiny_llama_checkpoint, arguments, import_ortgenai().__version__)
    graph = onnx.load(model_dir / "model.onnx", load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits, "the int4 build has no MatMulNBits"
    for node in nbits:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert (attributes["bits"], attributes["block_size"], attributes["accuracy_level"]) == (
            4, 16, 1)
    assert facts["cached"] is False and model_dir.parent == tmp_path / "ortgenai"


def test_builder_arguments_follow_the_package_precision():
    assert builder_arguments(None) == (["-p", "fp32"], None)
    assert builder_arguments({"weights": "fp32"}) == (["-p", "fp32"], None)
    assert builder_arguments({"weights": "int8", "block_size": 32}) == (
        ["-p", "int8", "--extra_options", "block_size=32"], None)
    arguments, why_not = builder_arguments({"weights": "fp16"})
    assert arguments is None and "fp16" in why_not


def test_cache_key_depends_on_weights_precision_and_version(tiny_llama_checkpoint, tmp_path):
    key = cache_key(tiny_llama_checkpoint, ["-p", "fp32"], "0.18.0")
    assert key == cache_key(tiny_llama_checkpoint, ["-p", "fp32"], "0.18.0")
    assert key != cache_key(tiny_llama_checkpoint, ["-p", "int4"], "0.18.0")
    assert key != cache_key(tiny_llama_checkpoint, ["-p", "fp32"], "0.19.0")
    copy = tmp_path / "ckpt"
    copy.mkdir()
    for f in tiny_llama_checkpoint.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert cache_key(copy, ["-p", "fp32"], "0.18.0") == key
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert cache_key(copy, ["-p", "fp32"], "0.18.0") != key


def test_a_failed_build_names_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("E2EDGE_CACHE_DIR", str(tmp_path / "cache"))
    checkpoint = tmp_path / "not-a-model"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    (checkpoint / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RuntimeError, match="model builder failed") as failure:
        build_model(checkpoint, ["-p", "fp32"], "0.18.0")
    log = Path(str(failure.value).split("full log: ")[1].split(";")[0])
    assert log.is_file() and log.read_text().strip()
    assert [p.name for p in (tmp_path / "cache" / "ortgenai").iterdir()] == [log.name]


def test_missing_ortgenai_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_genai", None)  # makes the import fail
    with pytest.raises(RuntimeError, match="pip install onnxruntime-genai") as failure:
        import_ortgenai()
    assert "\n" not in str(failure.value)


def test_memory_bandwidth_is_a_plausible_rate():
    bandwidth = measure_copy_bandwidth(threads=0, buffer_bytes=256 << 20, repeats=3)
    assert bandwidth.threads == os.cpu_count()
    assert len(bandwidth.runs_bytes_per_s) == 3
    # Any machine this runs on copies between 0.5 GB/s and 5 TB/s.
    assert 0.5e9 < bandwidth.median_bytes_per_s <= bandwidth.best_bytes_per_s < 5e12
    assert roofline_tokens_per_s(bandwidth, 10**9) == pytest.approx(
        bandwidth.best_bytes_per_s / 1e9)
    with pytest.raises(ValueError):
        roofline_tokens_per_s(bandwidth, 0)


def test_read_bandwidth_times_a_checked_gemv():
    read = measure_read_bandwidth(threads=1, buffer_bytes=64 << 20, repeats=3)
    assert read.threads == 1 and read.buffer_bytes == 64 << 20
    assert len(read.runs_bytes_per_s) == 3
    assert 0.5e9 < read.median_bytes_per_s <= read.best_bytes_per_s < 5e12
    assert "sgemv" in read.method and read.to_json()["counted"] == READ_COUNTING
    with pytest.raises(ValueError, match="rows"):
        measure_read_bandwidth(threads=2, buffer_bytes=4096)


def test_bytes_per_token_skip_all_but_one_row_of_gather_only_tables(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def table(name, shape, dtype=np.float32):
        return numpy_helper.from_array(np.zeros(shape, dtype), name)

    graph = helper.make_graph(
        [helper.make_node("Gather", ["embedding", "ids"], ["x"]),
         helper.make_node("Gather", ["tied", "ids"], ["y"]),
         helper.make_node("MatMul", ["y", "tied"], ["z"]),
         helper.make_node("Gather", ["half", "ids"], ["w"]),
         helper.make_node("Gather", ["ids_table", "embedding_ids"], ["v"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in "xyzwv"],
        [table("embedding", (10, 4)), table("tied", (10, 4)),
         table("half", (8, 3), np.float16), table("ids_table", (5,), np.int64),
         table("embedding_ids", (2,), np.int64)],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), path)
    per_token, tables = bytes_read_per_token(path, 10_000)
    # embedding: 160 bytes, one 16-byte row read; half: 48 bytes, one 6-byte row read;
    # tied is also a MatMul input (read whole, like a tied LM head); 1-D tables are kept.
    assert per_token == 10_000 - (160 - 16) - (48 - 6)
    assert [t["name"] for t in tables] == ["embedding", "half"]


def test_parse_streams_and_compare_greedy():
    assert parse_streams("1,4,8") == (1, 4, 8)
    assert parse_streams("4,8") == (1, 4, 8)  # the single stream is the baseline
    assert parse_streams("") == () and parse_streams("0") == ()
    for bad in ("1,x", "0,2", "-1"):
        with pytest.raises(ValueError, match="--streams"):
            parse_streams(bad)
    assert compare_greedy([1, 2, 3, 4], [1, 2, 9, 4]) == {
        "greedy_tokens_match": False, "greedy_first_mismatch": 2, "greedy_tokens_compared": 4}
    assert compare_greedy([1, 2, 3], [1, 2, 3, 7], count=16)["greedy_tokens_match"] is True


def test_an_fp16_packages_bytes_per_token_count_its_weights_as_onnxruntime_folds_them(
    tmp_path, tiny_llama_checkpoint
):
    from e2edge.bench.memory_bandwidth import bytes_read_per_token
    from exporter.llm.export import LLMExportOptions, export_llm

    per_token = {}
    for weights in ("fp32", "fp16"):
        result = export_llm(tiny_llama_checkpoint, tmp_path / weights,
                            LLMExportOptions(weights=weights, verify=False))
        per_token[weights] = bytes_read_per_token(result.package / "model.onnx",
                                                  result.weight_bytes)[0]
    # the CPU provider widens the fp16 matrices once at load: a decode step reads fp32
    # bytes; only the untied embedding's one gathered row stays fp16 (hidden 64: 128 B less)
    assert per_token["fp16"] == per_token["fp32"] - 64 * 2


def test_a_side_above_the_read_ceiling_gets_no_fraction():
    from e2edge.bench.read_ceiling import fraction_of_ceiling

    assert fraction_of_ceiling(80.0, 100.0) == {"fraction_of_read_ceiling": 0.8}
    above = fraction_of_ceiling(180.0, 100.0)
    assert above["fraction_of_read_ceiling"] is None and above["read_ceiling_under_measured"]
    assert above["above_read_ceiling_by"] == 1.8


def test_rounds_merge_into_medians_over_every_run():
    from e2edge.bench.llm_sides import merge_rounds

    rounds = [{"executor": ["x"], "decode_tokens_per_s": 10.0, "prefill_tokens_per_s": 50.0,
               "decode_runs": [9.0, 10.0, 11.0], "prefill_runs": [50.0, 50.0, 50.0]},
              {"executor": ["x"], "decode_tokens_per_s": 20.0, "prefill_tokens_per_s": 60.0,
               "decode_runs": [20.0, 20.0, 21.0], "prefill_runs": [60.0, 60.0, 60.0]}]
    merged = merge_rounds(rounds, threads=4)
    assert merged["threads"] == 4 and merged["rounds"] == 2
    assert merged["decode_tokens_per_s"] == 15.5 and merged["prefill_tokens_per_s"] == 55.0
    assert merged["decode_spread"] == {"min": 9.0, "max": 21.0, "relative": 0.774,
                                       "round_medians": [10.0, 20.0]}
    assert merge_rounds([{"skipped": "fp16"}], threads=4) == {"skipped": "fp16"}


def test_the_read_ceiling_is_the_best_reader():
    from e2edge.bench.read_ceiling import measure_read_ceiling

    best, readers = measure_read_ceiling(threads=1, buffer_bytes=32 << 20, repeats=2)
    rates = {name: r["best_gb_s"] for name, r in readers.items() if "best_gb_s" in r}
    assert {"reduction", "ort_gemv"} <= set(rates)
    assert best.to_json()["best_gb_s"] == max(rates.values()) > 0
    # e2edge's fp32 kernel reads too, where this host runs it (it streams fp32 decode there)
    from runtime.kernels.library import unavailable

    reason = unavailable("fp32")
    if reason is None:
        assert "e2edge_gemv" in rates
    else:
        assert reason in readers["e2edge_gemv"]["skipped"]


def test_the_same_process_check_alternates_a_b_b_a(monkeypatch):
    """Neither side always runs first after the other: the order flips every round."""
    import e2edge.bench.llm as bench_llm
    import e2edge.bench.ortgenai as ortgenai
    import e2edge.bench.same_process as same_process

    calls: list[str] = []

    class Side:
        def __init__(self, name: str, speed: float):
            self.name, self.speed = name, speed

        def run_once(self):
            calls.append(self.name)
            return 0.0, self.speed, None

    monkeypatch.setattr(bench_llm, "RuntimeSide", lambda *a: Side("e2edge", 90.0))
    monkeypatch.setattr(ortgenai, "OrtGenaiSide", lambda *a: Side("ortgenai", 100.0))
    monkeypatch.setattr(ortgenai, "builder_arguments", lambda q: (["args"], None))
    monkeypatch.setattr(ortgenai, "build_model", lambda *a: ("dir", False))
    monkeypatch.setattr(ortgenai, "import_ortgenai", lambda: type("M", (), {"__version__": "0"}))
    monkeypatch.setattr(same_process, "PAUSE_S", 0.0)
    check = same_process.alternate_in_one_process("pkg", "ckpt", None, [1], 4, 3, 2)
    assert calls == ["e2edge", "ortgenai", "ortgenai", "e2edge", "e2edge", "ortgenai",
                     "ortgenai", "e2edge"]
    assert check["decode_speedup"] == 0.9 and len(check["decode_runs"]["e2edge"]) == 3
