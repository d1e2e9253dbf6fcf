"""Health, reflection and message limits of a real daemon, with a model that fails to load."""

from __future__ import annotations

import shutil
import socket

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from runtime.client import EdgeClient, RemoteError
from runtime.config import DaemonConfig, ModelConfig
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.in_process import DaemonThread

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def corrupt_package(tiny_llama_package, tmp_path_factory):
    """A copy of the package with one weight byte flipped: its sha256 no longer matches."""
    copy = tmp_path_factory.mktemp("corrupt") / "pkg"
    shutil.copytree(tiny_llama_package, copy)
    weights = copy / "model.onnx.data"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    return copy


@pytest.fixture(scope="module")
def daemon(tiny_llama_package, corrupt_package):
    # Small, but above the reflection answer (runtime.proto's descriptor, which grows).
    config = DaemonConfig(listen="127.0.0.1:0", max_message_bytes=32768, models=(
        ModelConfig("good", tiny_llama_package),
        ModelConfig("corrupt", corrupt_package),
    ))
    with DaemonThread(config, grace_s=0) as d:
        yield d


@pytest.fixture
def client(daemon):
    with EdgeClient(daemon.target) as c:
        yield c


def test_a_model_that_fails_to_load_is_not_serving_and_the_others_are(client):
    assert client.health("") == "SERVING"
    assert client.health("e2edge.v1.EdgeRuntime") == "SERVING"
    assert client.health("good") == "SERVING"
    assert client.health("corrupt") == "NOT_SERVING"
    with pytest.raises(RemoteError) as caught:
        client.health("not-a-model")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND

    states = {m.name: m for m in client.list_models()}
    assert states["good"].state == pb.MODEL_STATE_READY
    assert states["corrupt"].state == pb.MODEL_STATE_FAILED
    assert "model.onnx.data" in states["corrupt"].error and "sha256" in states["corrupt"].error

    with pytest.raises(RemoteError) as caught:
        list(client.generate("corrupt", "hello"))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "failed to load" in caught.value.details and "sha256" in caught.value.details
    assert list(client.generate("good", "hello", max_new_tokens=3))[-1].stats.completion_tokens


def test_no_model_loaded_means_the_daemon_is_not_serving(corrupt_package):
    config = DaemonConfig(listen="127.0.0.1:0", models=(ModelConfig("only", corrupt_package),))
    with DaemonThread(config, grace_s=0) as d, EdgeClient(d.target) as c:
        assert c.health("") == "NOT_SERVING"
        assert c.health("only") == "NOT_SERVING"


def test_reflection_lists_and_describes_the_services(daemon):
    channel = grpc.insecure_channel(daemon.target)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="e2edge.v1.EdgeRuntime"),
    ]
    listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    channel.close()
    names = {s.name for s in listed.list_services_response.service}
    assert {"e2edge.v1.EdgeRuntime", "grpc.health.v1.Health"} <= names
    from google.protobuf import descriptor_pb2

    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for raw in described.file_descriptor_response.file_descriptor_proto]
    runtime_file = next(f for f in files if f.package == "e2edge.v1")
    assert runtime_file.name == "e2edge/v1/runtime.proto"
    assert {"Generate", "ListModels", "GetModel"} <= {
        m.name for m in runtime_file.service[0].method}


def test_messages_over_the_configured_size_are_refused(client):
    with pytest.raises(RemoteError) as caught:
        list(client.generate("good", "x" * 65536))
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list(client.generate("good", "hello", max_new_tokens=2))  # and it serves on


def test_a_second_daemon_on_a_busy_address_fails_to_start(daemon, tiny_llama_package, tmp_path):
    from runtime.errors import ConfigError

    models = (ModelConfig("good", tiny_llama_package),)
    with pytest.raises(ConfigError, match="cannot bind"):
        DaemonThread(DaemonConfig(listen=daemon.target, models=models)).start()
    socket_listen = f"unix:{tmp_path}/d.sock"
    with DaemonThread(DaemonConfig(listen=socket_listen, models=models), 0) as first:
        with pytest.raises(ConfigError, match="another process is serving on this socket"):
            DaemonThread(DaemonConfig(listen=socket_listen, models=models)).start()
        with EdgeClient(first.target) as c:
            assert c.health("good") == "SERVING"  # the first one is still reachable
    stale = socket.socket(socket.AF_UNIX)  # a socket file nobody listens on any more,
    stale.bind(f"{tmp_path}/d.sock")  # as a killed daemon leaves it: simply replaced
    stale.close()
    with DaemonThread(DaemonConfig(listen=socket_listen, models=models), 0) as again:
        with EdgeClient(again.target) as c:
            assert c.health("good") == "SERVING"
