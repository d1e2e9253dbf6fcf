"""The committed gRPC stubs are exactly what proto/generate.py makes from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "runtime" / "proto"


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    committed = {p.relative_to(COMMITTED) for p in COMMITTED.rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
    assert fresh == committed, "stub files differ: run `python proto/generate.py`"
    stale = [str(name) for name in sorted(fresh)
             if (tmp_path / name).read_bytes() != (COMMITTED / name).read_bytes()]
    assert not stale, f"stale stubs {stale}: run `python proto/generate.py` and commit them"


def test_stubs_import_from_the_runtime_package_and_describe_the_api():
    from runtime.proto.e2edge.v1 import runtime_pb2, runtime_pb2_grpc

    service = runtime_pb2.DESCRIPTOR.services_by_name["EdgeRuntime"]
    assert service.full_name == "e2edge.v1.EdgeRuntime"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    # Other issues add RPCs next to these (Classify, WatchPower, ...): these must stay.
    assert {
        "Generate": (False, True), "ListModels": (False, False), "GetModel": (False, False),
        "WatchPower": (False, True),
    }.items() <= methods.items()
    assert hasattr(runtime_pb2_grpc, "EdgeRuntimeStub")
    stats = runtime_pb2.GenerationStats.DESCRIPTOR.fields_by_name
    for name in ("prompt_tokens", "completion_tokens", "time_to_first_token_s",
                 "decode_tokens_per_s", "energy", "joules_per_token", "tokens_per_joule"):
        assert name in stats
    energy = runtime_pb2.Energy.DESCRIPTOR.fields_by_name
    assert {"joules", "joules_above_idle", "power_source", "window_s", "samples"} <= set(energy)
    assert energy["joules"].has_presence  # absent = unknown (power source none), never 0
