"""Faults on a running daemon: a package corrupted on disk, a client that hangs up
mid-stream (KServe), SIGTERM under load. Nothing crashes; nothing is cut or lost."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from runtime.client import EdgeClient, RemoteError
from runtime.config import DaemonConfig, ModelConfig
from runtime.proto.kserve import grpc_service_pb2 as kpb
from runtime.repository import RepositoryConfig
from runtime.server.in_process import DaemonThread
from runtime.server.kserve import convert as kserve_convert

pytestmark = pytest.mark.timeout(120)

STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
LOAD = "/inference.GRPCInferenceService/RepositoryModelLoad"


def _infer_request(tokens: int, request_id: str = "") -> kpb.ModelInferRequest:
    request = kpb.ModelInferRequest(model_name="demo", id=request_id)
    request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(kserve_convert.serialize_bytes([b"To be"]))
    request.parameters["max_tokens"].int64_param = tokens
    request.parameters["ignore_eos"].bool_param = True
    return request


def _stream_stub(channel: grpc.Channel):
    return channel.stream_stream(STREAM_INFER,
                                 request_serializer=kpb.ModelInferRequest.SerializeToString,
                                 response_deserializer=kpb.ModelStreamInferResponse.FromString)


def _active(daemon: DaemonThread, name: str = "demo") -> tuple[int, int]:
    admission = daemon.daemon.registry.entries[name].admission
    return admission.active, admission.queued


def test_kserve_client_that_hangs_up_mid_stream_frees_its_slot(tiny_llama_package):
    config = DaemonConfig(listen="127.0.0.1:0", models=(
        ModelConfig("demo", tiny_llama_package, max_concurrent=1, max_queue=1),))
    with DaemonThread(config, 0) as daemon, grpc.insecure_channel(daemon.target) as channel:
        requests = iter([_infer_request(200)])  # the stream stays open: no half-close
        hold = threading.Event()

        def forever():
            yield from requests
            hold.wait(30)

        call = _stream_stub(channel)(forever(), timeout=30)
        first = next(call)
        assert first.infer_response.parameters["triton_final_response"].bool_param is False
        assert _active(daemon) == (1, 0)
        call.cancel()  # the client goes away mid-generation
        hold.set()
        deadline = time.monotonic() + 5
        while _active(daemon) != (0, 0):
            assert time.monotonic() < deadline, "the generation kept its slot after hang-up"
            time.sleep(0.01)
        # The one slot is free again: a new stream runs to its end.
        responses = list(_stream_stub(channel)(iter([_infer_request(5, "after")]), timeout=30))
        final = responses[-1].infer_response
        assert final.parameters["triton_final_response"].bool_param
        assert final.parameters["completion_tokens"].int64_param == 5 and final.id == "after"


def test_a_package_corrupted_on_disk_does_not_replace_the_loaded_one(tmp_path,
                                                                     tiny_llama_package):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_llama_package, repo / "demo")
    config = DaemonConfig(listen="127.0.0.1:0",
                          repository=RepositoryConfig(directories=(repo,)),
                          models=(ModelConfig("demo", repo / "demo"),))
    with DaemonThread(config, 0) as daemon, grpc.insecure_channel(daemon.target) as channel:
        weights = repo / "demo" / "model.onnx.data"
        data = bytearray(weights.read_bytes())
        data[len(data) // 3] ^= 0x55  # the disk rots under a running model
        weights.write_bytes(bytes(data))
        load = channel.unary_unary(
            LOAD, request_serializer=kpb.RepositoryModelLoadRequest.SerializeToString,
            response_deserializer=kpb.RepositoryModelLoadResponse.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            load(kpb.RepositoryModelLoadRequest(model_name="demo", repository_name="repo"),
                 timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "model.onnx.data" in caught.value.details()
        with EdgeClient(daemon.target) as client:  # the loaded copy still serves
            assert client.get_model("demo").state == 2  # MODEL_STATE_READY
            messages = list(client.generate("demo", "To be", max_new_tokens=4, ignore_eos=True))
            assert messages[-1].stats.completion_tokens == 4


def test_sigterm_under_load_finishes_what_started_and_refuses_the_rest(tmp_path,
                                                                      tiny_llama_package):
    config = tmp_path / "daemon.yaml"
    config.write_text(f"grace_period_s: 20\nmodels:\n  - name: demo\n"
                      f"    path: {tiny_llama_package}\n    max_concurrent: 2\n"
                      f"    max_queue: 6\n")
    target = f"unix:{tmp_path / 'e2edge.sock'}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "e2edge.cli", "serve", "--config", str(config), "--listen",
             target], stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            with EdgeClient(target) as client:
                client.wait_loaded(60)
            outcomes: list[tuple[str, int]] = []  # (status, tokens received)
            stop = threading.Event()

            def edge_runtime_client() -> None:
                with EdgeClient(target) as client:
                    while not stop.is_set():
                        tokens = 0
                        try:
                            for message in client.generate("demo", "To be", ignore_eos=True,
                                                           max_new_tokens=60):
                                tokens += len(message.token_ids)
                            outcomes.append(("OK", tokens))
                        except RemoteError as e:
                            outcomes.append((e.code.name, tokens))
                            if e.code in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.CANCELLED):
                                return

            def kserve_client() -> None:
                with grpc.insecure_channel(target) as channel:
                    while not stop.is_set():
                        pieces = 0
                        try:
                            for response in _stream_stub(channel)(iter([_infer_request(60)]),
                                                                  timeout=60):
                                if response.error_message:
                                    outcomes.append((response.error_message.split(":")[0],
                                                     pieces))
                                    break
                                final = response.infer_response.parameters[
                                    "triton_final_response"].bool_param
                                if final:
                                    outcomes.append(("OK", response.infer_response.parameters[
                                        "completion_tokens"].int64_param))
                                pieces += 1
                        except grpc.RpcError as e:
                            outcomes.append((e.code().name, pieces))
                            if e.code() in (grpc.StatusCode.UNAVAILABLE,
                                            grpc.StatusCode.CANCELLED):
                                return

            threads = [threading.Thread(target=f) for f in [edge_runtime_client] * 3
                       + [kserve_client] * 3]
            for thread in threads:
                thread.start()
            time.sleep(1.5)  # steady load: slots busy, queue filling, refusals
            process.send_signal(signal.SIGTERM)
            time.sleep(2.0)
            stop.set()
            for thread in threads:
                thread.join(60)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    text = log_path.read_text()
    assert "SIGTERM received: draining" in text and "stopped" in text
    assert "Traceback" not in text and "status=INTERNAL" not in text
    statuses = {status for status, _ in outcomes}
    # UNAVAILABLE from the drain; in the last instant before the process exits, grpc's
    # transport may also reset a just-sent call (CANCELLED, before any token).
    assert statuses <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "CANCELLED"}, (
        [o for o in outcomes if o[0] != "OK"], text[-3000:])
    completed = [tokens for status, tokens in outcomes if status == "OK"]
    assert len(completed) >= 6 and set(completed) == {60}, "a stream was cut short"
    # A refused request was refused before any token: nothing was lost mid-way. (A stream
    # whose 60 tokens all arrived can still see its trailing status reset by the transport
    # as the process exits, like the just-sent calls above: that loses nothing either.)
    assert all(tokens == 0 or tokens >= 60 for status, tokens in outcomes if status != "OK"), (
        [o for o in outcomes if o[0] != "OK"], text[-3000:])
    assert "UNAVAILABLE" in statuses, "no request arrived during the drain"
    drained = re.search(r"draining: in-flight requests have ([\d.]+)s", text)
    assert drained and float(drained[1]) == 20.0
