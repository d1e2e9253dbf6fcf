"""TLS, mutual TLS and bearer tokens on a real daemon, with certificates made in the test."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime.client import EdgeClient, RemoteError
from runtime.client_security import ClientSecurity
from runtime.config import DaemonConfig, ModelConfig, parse_config
from runtime.errors import ConfigError
from runtime.security_config import AuthConfig, TLSConfig
from runtime.server.daemon import create_server
from runtime.server.guard.security import TokenAuth, load_tokens
from runtime.server.in_process import DaemonThread

pytest.importorskip("cryptography", reason="the TLS tests make certificates with cryptography")
from tls_certs import CertificateAuthority  # noqa: E402

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[4]
TOKEN = "t0ken-for-the-robot-arm-0123456789"
OTHER_TOKEN = "t0ken-for-the-imaging-box-987654"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    out = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(out, "e2edge-test-ca")
    client_ca = CertificateAuthority(out, "e2edge-clients-ca")
    rogue_ca = CertificateAuthority(out, "rogue-ca")
    return {
        "ca": ca.files.cert, "server": ca.issue("server", server=True),
        "client_ca": client_ca.files.cert, "client": client_ca.issue("robot-1", server=False),
        "rogue_ca": rogue_ca.files.cert, "rogue_client": rogue_ca.issue("intruder", server=False),
    }


def _config(package, **security) -> DaemonConfig:
    return DaemonConfig(listen="127.0.0.1:0", models=(ModelConfig("demo", package),),
                        **security)


@pytest.fixture(scope="module")
def tls_daemon(pki, tiny_llama_package):
    tls = TLSConfig(cert=pki["server"].cert, key=pki["server"].key)
    with DaemonThread(_config(tiny_llama_package, tls=tls), 0) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def mtls_daemon(pki, tiny_llama_package):
    tls = TLSConfig(cert=pki["server"].cert, key=pki["server"].key,
                    client_ca=pki["client_ca"], require_client_cert=True)
    with DaemonThread(_config(tiny_llama_package, tls=tls), 0) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def token_daemon(tmp_path_factory, tiny_llama_package):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# robots\n{TOKEN}  # arm\n\n{OTHER_TOKEN}\n")
    with DaemonThread(_config(tiny_llama_package, auth=AuthConfig(tokens_file=tokens)), 0) as d:
        yield d


def _list(target: str, **security) -> list[str]:
    with EdgeClient(target, security=ClientSecurity(**security)) as client:
        return [m.name for m in client.list_models(timeout_s=5)]


def _fails_with(code: grpc.StatusCode, target: str, **security) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        _list(target, **security)
    assert caught.value.code == code, caught.value
    return caught.value


# ---- TLS ---------------------------------------------------------------------------
def test_tls_serves_clients_that_trust_the_ca(tls_daemon, pki):
    assert _list(tls_daemon.target, ca=pki["ca"]) == ["demo"]
    with EdgeClient(tls_daemon.target, security=ClientSecurity(ca=pki["ca"])) as client:
        text = "".join(m.text for m in client.generate("demo", "To be", max_new_tokens=4))
    assert text


def test_tls_refuses_plaintext_and_an_untrusted_ca(tls_daemon, pki):
    _fails_with(grpc.StatusCode.UNAVAILABLE, tls_daemon.target)
    _fails_with(grpc.StatusCode.UNAVAILABLE, tls_daemon.target, ca=pki["rogue_ca"])


def test_tls_checks_the_name_in_the_certificate(tls_daemon, pki):
    port = tls_daemon.target.rpartition(":")[2]
    assert _list(f"localhost:{port}", ca=pki["ca"]) == ["demo"]
    _fails_with(grpc.StatusCode.UNAVAILABLE, tls_daemon.target, ca=pki["ca"],
                server_name="jetson.example.org")


def test_mutual_tls_needs_a_client_certificate_from_the_client_ca(mtls_daemon, pki):
    client = pki["client"]
    assert _list(mtls_daemon.target, ca=pki["ca"], cert=client.cert, key=client.key) == ["demo"]
    _fails_with(grpc.StatusCode.UNAVAILABLE, mtls_daemon.target, ca=pki["ca"])
    rogue = pki["rogue_client"]
    _fails_with(grpc.StatusCode.UNAVAILABLE, mtls_daemon.target, ca=pki["ca"],
                cert=rogue.cert, key=rogue.key)


def test_missing_or_non_pem_certificate_is_a_config_error(tmp_path, pki):
    not_pem = tmp_path / "server.crt"
    not_pem.write_text("hello")
    for cert, message in ((tmp_path / "absent.crt", "cannot read the certificate"),
                          (not_pem, "is not PEM")):
        config = DaemonConfig(listen="127.0.0.1:0", models=(ModelConfig("m", tmp_path),),
                              tls=TLSConfig(cert=cert, key=pki["server"].key))
        with pytest.raises(ConfigError, match=message):
            asyncio.run(create_server(config))


# ---- tokens ------------------------------------------------------------------------
def test_every_rpc_needs_a_known_token(token_daemon):
    target = token_daemon.target
    error = _fails_with(grpc.StatusCode.UNAUTHENTICATED, target)
    assert "missing bearer token" in error.details
    error = _fails_with(grpc.StatusCode.UNAUTHENTICATED, target, token="not-a-token-at-all-xx")
    assert "unknown token" in error.details
    assert _list(target, token=TOKEN) == ["demo"]
    assert _list(target, token=OTHER_TOKEN) == ["demo"]

    with EdgeClient(target) as client:  # a streaming RPC is refused the same way
        with pytest.raises(RemoteError) as caught:
            list(client.generate("demo", "To be", max_new_tokens=4))
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    with EdgeClient(target, security=ClientSecurity(token=TOKEN)) as client:
        assert list(client.generate("demo", "To be", max_new_tokens=4))[-1].finish_reason


def test_health_stays_open_and_reflection_does_not(token_daemon):
    with grpc.insecure_channel(token_daemon.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_cli_passes_the_token_and_says_unauthenticated_without_it(token_daemon):
    command = [sys.executable, "-m", "e2edge.cli", "models", "--target", token_daemon.target]
    denied = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert denied.returncode == 1
    assert "UNAUTHENTICATED" in denied.stderr and "Traceback" not in denied.stderr
    allowed = subprocess.run(command, capture_output=True, text=True, timeout=60,
                             env={"PATH": "/usr/bin:/bin", "E2EDGE_TOKEN": TOKEN})
    assert allowed.returncode == 0, allowed.stderr
    assert "demo" in allowed.stdout


def test_cli_connects_with_tls_and_a_client_certificate(mtls_daemon, pki):
    client = pki["client"]
    result = subprocess.run(
        [sys.executable, "-m", "e2edge.cli", "models", "--target", mtls_daemon.target,
         "--tls-ca", str(pki["ca"]), "--tls-cert", str(client.cert), "--tls-key",
         str(client.key)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "demo" in result.stdout


def test_tokens_from_file_and_environment_are_checked(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\nshort\n")
    with pytest.raises(ConfigError, match=r"tokens:2: a token must be at least 16"):
        load_tokens(AuthConfig(tokens_file=tokens))
    tokens.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="holds no token"):
        load_tokens(AuthConfig(tokens_file=tokens))
    with pytest.raises(ConfigError, match="E2EDGE_TEST_TOKEN is not set"):
        load_tokens(AuthConfig(token_env="E2EDGE_TEST_TOKEN"), environ={})
    assert load_tokens(AuthConfig(token_env="T"), environ={"T": TOKEN}) == {TOKEN}


def test_token_check_is_exact():
    auth = TokenAuth([TOKEN])
    method = "/e2edge.v1.EdgeRuntime/ListModels"
    assert auth.allows(method, [("authorization", f"Bearer {TOKEN}")])
    assert auth.allows(method, [("authorization", f"bearer {TOKEN}")])  # scheme is any case
    assert not auth.allows(method, [("authorization", f"Bearer {TOKEN[:-1]}")])
    assert not auth.allows(method, [("authorization", f"Basic {TOKEN}")])
    assert not auth.allows(method, [("x-token", TOKEN)])
    assert auth.allows("/grpc.health.v1.Health/Check", [])
    assert TokenAuth(None).allows(method, [])  # no auth: section


def test_config_file_sections_resolve_relative_paths(tmp_path):
    config = parse_config(
        "models: [{name: m, path: pkg}]\n"
        "tls: {cert: tls/server.crt, key: tls/server.key, client_ca: tls/ca.crt}\n"
        "auth: {tokens_file: tokens, token_env: E2EDGE_TOKEN}\n",
        "daemon.yaml", base_dir=tmp_path)
    assert config.tls == TLSConfig(tmp_path / "tls/server.crt", tmp_path / "tls/server.key",
                                   tmp_path / "tls/ca.crt", require_client_cert=True)
    assert config.auth == AuthConfig(tmp_path / "tokens", "E2EDGE_TOKEN")
    with pytest.raises(ConfigError, match=r"daemon.yaml:3: tls.require_client_cert"):
        parse_config("models: [{name: m, path: pkg}]\ntls:\n  require_client_cert: yes\n"
                     "  cert: a\n  key: b\n", "daemon.yaml")


# ---- no pickle anywhere in loading -------------------------------------------------
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve"}


def pickle_uses(source: str) -> list[str]:
    """Where a source file imports a pickle module or loads with pickle enabled."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                found.append(f"{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = ast.unparse(node.func.value)
            keywords = {k.arg: k.value for k in node.keywords}
            flag = keywords.get("weights_only")
            if owner == "torch" and node.func.attr == "load" and not (
                    isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{node.lineno}: torch.load without weights_only=True")
            allow = keywords.get("allow_pickle")
            if node.func.attr == "load" and owner in ("np", "numpy") and not (
                    allow is None or (isinstance(allow, ast.Constant) and allow.value is False)):
                found.append(f"{node.lineno}: np.load with allow_pickle")
            if node.func.attr in ("read_pickle", "loads") and owner in ("pd", "pickle"):
                found.append(f"{node.lineno}: {owner}.{node.func.attr}")
    return found


def test_the_pickle_check_finds_what_it_looks_for():
    bad = ("import pickle\nfrom joblib import load\nimport torch\nimport numpy as np\n"
           "torch.load('w.pt')\ntorch.load('w.pt', weights_only=False)\n"
           "np.load('a.npy', allow_pickle=True)\n")
    assert len(pickle_uses(bad)) == 5
    good = "import torch\nimport numpy as np\ntorch.load('w', weights_only=True)\nnp.load('a')\n"
    assert pickle_uses(good) == []


def test_no_pickle_in_the_runtime_or_the_exporter():
    offenders = {}
    for package in ("runtime", "exporter", "e2edge", "plugins_trt"):
        for path in sorted((REPO / package).rglob("*.py")):
            if "proto" in path.relative_to(REPO).parts[:2]:
                continue  # generated stubs
            uses = pickle_uses(path.read_text())
            if uses:
                offenders[str(path.relative_to(REPO))] = uses
    assert offenders == {}


def test_a_library_handler_is_wrapped_once_per_method_and_unknown_names_are_not_kept():
    from types import SimpleNamespace

    from runtime.server.guard.request_parsing import _GuardedGeneric

    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request,
                                               request_deserializer=bytes,
                                               response_serializer=bytes)
    guarded = _GuardedGeneric(grpc.method_handlers_generic_handler("pkg.S", {"M": echo}),
                              TokenAuth(None))
    known = SimpleNamespace(method="/pkg.S/M", invocation_metadata=())
    assert guarded.service(known) is guarded.service(known) is not None
    for i in range(50):  # method names come from clients: none of them is remembered
        assert guarded.service(SimpleNamespace(method=f"/pkg.S/X{i}",
                                               invocation_metadata=())) is None
    assert list(guarded._wrapped) == ["/pkg.S/M"]
