"""Triton's own Python client against an e2edge daemon; run as a script, prints JSON.

    python triton_client_checks.py TARGET SCENARIO [ARG...]

tritonclient registers the same `inference.*` protobuf names as e2edge's KServe stubs,
and one Python process cannot hold both, so the tests run every tritonclient call in
this separate process and assert on what it reports.
"""

from __future__ import annotations

import json
import queue
import sys

import numpy as np
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException


def _error(call) -> dict:
    try:
        call()
    except InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    return {"status": "OK"}


def _text_input(text: str) -> tc.InferInput:
    tensor = tc.InferInput("text_input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=object))
    return tensor


def _scalar(name: str, datatype: str, value, dtype) -> tc.InferInput:
    tensor = tc.InferInput(name, [1], datatype)
    tensor.set_data_from_numpy(np.array([value], dtype=dtype))
    return tensor


def basics(client: tc.InferenceServerClient, model: str) -> dict:
    metadata = client.get_model_metadata(model, as_json=True)
    config = client.get_model_config(model, as_json=True)["config"]
    inputs = [_text_input("To be, or not"), _scalar("max_tokens", "INT32", 12, np.int32),
              _scalar("ignore_eos", "BOOL", True, np.bool_)]
    result = client.infer(model, inputs, request_id="req-1")
    response = result.get_response(as_json=True)
    by_params = client.infer(model, [_text_input("To be, or not")],
                             parameters={"max_tokens": 12, "ignore_eos": True})
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_ready": client.is_model_ready("no-such-model"),
        "server": client.get_server_metadata(as_json=True),
        "metadata": metadata,
        "config": config,
        "text": result.as_numpy("text_output")[0].decode(),
        "id": response.get("id", ""),
        "parameters": response.get("parameters", {}),
        "text_by_parameters": by_params.as_numpy("text_output")[0].decode(),
        "inference_count": int(stats.get("inference_count", 0)),
        "index": client.get_model_repository_index(as_json=True).get("models", []),
        "unknown_model": _error(lambda: client.infer("no-such-model", inputs)),
        "bad_input": _error(lambda: client.infer(model, [_scalar("text_input", "INT32", 3,
                                                                 np.int32)])),
        "bad_temperature": _error(lambda: client.infer(
            model, [_text_input("x")], parameters={"temperature": -1.0})),
    }


def stream(client: tc.InferenceServerClient, model: str) -> dict:
    """One decoupled generation, then a bad request, on one ModelStreamInfer call."""
    results: queue.Queue = queue.Queue()

    def callback(result, error):
        results.put((result, error))

    client.start_stream(callback=callback)
    inputs = [_text_input("To be, or not"), _scalar("max_tokens", "INT32", 16, np.int32),
              _scalar("ignore_eos", "BOOL", True, np.bool_)]
    client.async_stream_infer(model, inputs, request_id="s-1",
                              enable_empty_final_response=True)
    pieces, finals, parameters = [], [], {}
    while True:
        result, error = results.get(timeout=30)
        assert error is None, error
        response = result.get_response(as_json=True)
        final = response["parameters"]["triton_final_response"]["bool_param"]
        finals.append(final)
        if response.get("outputs"):
            pieces.append(result.as_numpy("text_output")[0].decode())
        if final:
            parameters = response["parameters"]
            break
    client.async_stream_infer(model, [_text_input("")], request_id="s-2")
    _, error = results.get(timeout=30)
    client.stop_stream()
    return {"pieces": pieces, "finals": finals, "parameters": parameters,
            "error": None if error is None else error.message()}


def repository(client: tc.InferenceServerClient, name: str, escape: str) -> dict:
    out = {"before": client.is_model_ready(name)}
    out["load"] = _error(lambda: client.load_model(name))
    out["after_load"] = client.is_model_ready(name)
    inputs = [_text_input("To be"), _scalar("max_tokens", "INT32", 3, np.int32)]
    out["infer"] = client.infer(name, inputs).as_numpy("text_output")[0].decode()
    out["index"] = client.get_model_repository_index(as_json=True).get("models", [])
    out["unload"] = _error(lambda: client.unload_model(name))
    out["after_unload"] = client.is_model_ready(name)
    out["infer_unloaded"] = _error(lambda: client.infer(name, inputs))
    out["traversal"] = _error(lambda: client.load_model("../etc"))
    out["symlink_escape"] = _error(lambda: client.load_model(escape))
    out["missing"] = _error(lambda: client.load_model("not-there"))
    out["config_override"] = _error(lambda: client.load_model(name, config='{"x": 1}'))
    return out


def vision(client: tc.InferenceServerClient, model: str, png_path: str) -> dict:
    pixels = np.load(png_path.replace(".png", ".npy"))  # (H, W) uint8, the same image
    tensor = tc.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer(model, [tensor])
    encoded = tc.InferInput("image", [1], "BYTES")
    with open(png_path, "rb") as f:
        encoded.set_data_from_numpy(np.array([f.read()], dtype=object))
    from_png = client.infer(model, [encoded])
    top = client.infer(model, [tensor], outputs=[tc.InferRequestedOutput("probabilities",
                                                                         class_count=2)])
    return {
        "probabilities": result.as_numpy("probabilities").tolist(),
        "from_png": from_png.as_numpy("probabilities").tolist(),
        "top": [v.decode() for v in top.as_numpy("probabilities").reshape(-1)],
        "metadata": client.get_model_metadata(model, as_json=True),
        "bad_image": _error(lambda: client.infer(model, [_text_input("not a picture")])),
    }


def auth(client: tc.InferenceServerClient, model: str, token: str) -> dict:
    """Probes stay open; metadata needs the token ("-": send none)."""
    headers = {"authorization": f"Bearer {token}"} if token != "-" else None
    return {"ready": client.is_server_ready(),
            "metadata": _error(lambda: client.get_model_metadata(model, headers=headers))}


def main() -> None:
    target, scenario, *args = sys.argv[1:]
    client = tc.InferenceServerClient(url=target)
    scenarios = {"basics": basics, "stream": stream, "repository": repository,
                 "vision": vision, "auth": auth}
    out = scenarios[scenario](client, *args)
    client.close()
    print(json.dumps(out))

if __name__ == "__main__":
    main()
