"""Classify and ClassifyStream through a real daemon on a free port, against VisionEngine.

The daemon (DaemonThread: the grpc.aio server on its own loop) serves a tiny exported
vision package; every expected answer is the same package's VisionEngine called
directly on the same pixels.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image
from vision_package import N_CLASSES, tiny_vision_package

from runtime.client import EdgeClient, RemoteError
from runtime.config import DaemonConfig, ModelConfig, parse_config
from runtime.errors import ConfigError
from runtime.proto.e2edge.v1 import runtime_pb2 as pb
from runtime.server.core.decode_pool import available_cores, decode_thread_count
from runtime.server.edge import convert as edge_convert
from runtime.server.edge.convert import encoded_image, request_pixels, tensor_message
from runtime.server.in_process import DaemonThread
from runtime.vision.engine import VisionEngine
from runtime.vision.serving_config import BatchingConfig, ImageLimits

pytestmark = pytest.mark.timeout(90)

RNG = np.random.default_rng(11)
STRICT = ImageLimits(max_bytes=3000, max_pixels=40 * 40, max_images=2)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_vision_package(tmp_path_factory)


@pytest.fixture(scope="module")
def engine(package) -> VisionEngine:
    return VisionEngine(package)


@pytest.fixture(scope="module")
def daemon(package):
    config = DaemonConfig(listen="127.0.0.1:0", models=(
        ModelConfig("tiny", package, max_queue=64,
                    batching=BatchingConfig(max_batch=16, max_delay_ms=20)),
        ModelConfig("strict", package, image_limits=STRICT),
    ))
    with DaemonThread(config, grace_s=0) as d:
        yield d


@pytest.fixture
def client(daemon):
    with EdgeClient(daemon.target) as c:
        yield c


def _image(size: int = 12, channels: int = 3) -> np.ndarray:
    shape = (size, size, channels) if channels > 1 else (size, size)
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _dicom_grey(array: np.ndarray) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = array.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _probabilities(result: pb.Classification) -> np.ndarray:
    """The full probability vector from a top-k answer with k = all classes."""
    probs = np.zeros(N_CLASSES)
    for entry in result.top:
        probs[entry.index] = entry.probability
    return probs


def _assert_answer(result: pb.Classification, expected: np.ndarray, labels: list[str]) -> None:
    np.testing.assert_allclose(_probabilities(result), expected, atol=2e-6)
    got = [(t.label, t.index) for t in result.top]
    order = np.argsort(-expected, kind="stable")[:len(got)]
    assert got == [(labels[i], int(i)) for i in order]


def _field(error: RemoteError) -> str:
    return error.field or ""


def test_every_input_kind_matches_the_engine(client, engine):
    rgb, grey = _image(), _image(channels=1)
    jpeg_bytes = io.BytesIO()
    Image.fromarray(rgb).save(jpeg_bytes, format="JPEG", quality=90)
    jpeg = jpeg_bytes.getvalue()
    floats = (rgb / 255.0).astype(np.float32)
    images = [
        (encoded_image(_png(rgb)), rgb),
        (encoded_image(jpeg), np.asarray(Image.open(io.BytesIO(jpeg)))),
        (encoded_image(_dicom_grey(grey)), grey),
        (encoded_image(_dicom_grey(grey), "dicom"), grey),
        (tensor_message(rgb), rgb),
        (tensor_message(grey), grey),
        (tensor_message(floats), floats),
    ]
    answer = client.classify("tiny", [m for m, _ in images], top_k=N_CLASSES,
                             request_id="kinds-1")
    assert answer.request_id == "kinds-1" and len(answer.results) == len(images)
    for result, (_, pixels) in zip(answer.results, images):
        _assert_answer(result, engine.probabilities(pixels)[0], engine.labels)
    s = answer.stats
    assert s.images == len(images) and s.batch_size >= len(images)
    assert min(s.decode_s, s.queue_s, s.inference_s) > 0
    assert s.total_s >= s.decode_s + s.queue_s + s.inference_s
    assert s.energy.power_source  # always named; joules only when the source measures


def test_top_k_defaults_to_one_and_is_checked(client, engine):
    rgb = _image()
    (result,) = client.classify("tiny", [tensor_message(rgb)]).results
    assert len(result.top) == 1
    assert result.top[0].index == int(np.argmax(engine.probabilities(rgb)[0]))
    with pytest.raises(RemoteError, match=r"INVALID_ARGUMENT: top_k: must be between 1 and "
                                          rf"{N_CLASSES}") as error:
        client.classify("tiny", [tensor_message(rgb)], top_k=N_CLASSES + 1)
    assert _field(error.value) == "top_k"


def test_32_concurrent_clients_get_exactly_their_own_answers(daemon, engine):
    n_clients, rounds = 32, 2
    images = [[_image() for _ in range(rounds)] for _ in range(n_clients)]
    expected = [[engine.probabilities(img)[0] for img in row] for row in images]
    answers: dict[tuple[int, int], pb.ClassifyResponse] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(n_clients)

    def one_client(i: int) -> None:
        try:
            with EdgeClient(daemon.target) as c:
                c.list_models()  # connected before the barrier: requests arrive together
                start.wait()
                for r in range(rounds):
                    answers[i, r] = c.classify("tiny", [tensor_message(images[i][r])],
                                               top_k=N_CLASSES, request_id=f"c{i}-r{r}")
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert len(answers) == n_clients * rounds
    for (i, r), answer in answers.items():
        assert answer.request_id == f"c{i}-r{r}"
        _assert_answer(answer.results[0], expected[i][r], engine.labels)
    # Distinct images: every answer really is its own image's, not a neighbour's.
    tops = {(i, r): int(np.argmax(expected[i][r])) for i in range(n_clients) for r in range(rounds)}
    assert all(answers[k].results[0].top[0].index == tops[k] for k in answers)
    batch_sizes = [a.stats.batch_size for a in answers.values()]
    assert max(batch_sizes) > 1, "32 clients arriving together were never batched"


def test_small_images_decode_on_the_loop_and_large_ones_on_the_few_decoding_threads(
        package, monkeypatch):
    """Not on asyncio's default executor (cpu_count + 4 threads fighting over the GIL)."""
    decoders: list[tuple[int, str]] = []
    real = edge_convert.prepare_images

    def recording(images, *args):
        decoders.append((len(images), threading.current_thread().name))
        return real(images, *args)

    monkeypatch.setattr(edge_convert, "prepare_images", recording)
    small = encoded_image(_png(_image(12)))  # 144 pixels
    large = encoded_image(_png(_image(40)))  # 1,600 pixels
    config = DaemonConfig(listen="127.0.0.1:0", decode_threads=2, decode_inline_max_pixels=1000,
                          models=(ModelConfig("tiny", package),))
    with DaemonThread(config, grace_s=0) as daemon, EdgeClient(daemon.target) as c:
        for images in ([small], [small] * 6, [large], [small] * 7, [small, large]):
            assert len(c.classify("tiny", images).results) == len(images)
    assert [n for n, _ in decoders] == [1, 6, 1, 7, 2]
    names = [name for _, name in decoders]
    # 144 and 864 pixels: on the event loop (the daemon thread's); 1,600, 1,008 and
    # 1,744 pixels: on the daemon's own pool, never on asyncio's default executor.
    assert names[:2] == ["e2edge-daemon"] * 2, names
    assert all(name.startswith("e2edge-decode_") for name in names[2:]), names
    assert len(set(names[2:])) <= 2
    assert decode_thread_count(0) == max(1, available_cores() // 2)
    assert decode_thread_count(3) == 3


def test_limits_are_invalid_argument_naming_the_limit(client):
    small = tensor_message(_image())
    with pytest.raises(RemoteError, match=r"INVALID_ARGUMENT: images: 3 images exceeds the "
                                          r"limit max_images 2") as error:
        client.classify("strict", [small] * 3)
    assert _field(error.value) == "images"
    with pytest.raises(RemoteError, match=r"images\[1\]: 50 x 50 = 2500 pixels exceeds the "
                                          r"limit max_pixels 1600") as error:
        client.classify("strict", [small, encoded_image(_png(np.zeros((50, 50), np.uint8)))])
    assert _field(error.value) == "images[1]"
    big = RNG.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)  # 4800 bytes
    with pytest.raises(RemoteError, match=r"images\[0\]: 4800 bytes exceeds the limit "
                                          r"max_bytes 3000"):
        client.classify("strict", [tensor_message(big)])
    assert len(client.classify("strict", [small, small]).results) == 2  # still serving


def test_corrupt_images_fail_their_request_only(daemon, client, engine):
    rgb = _image()
    good = [None] * 8
    corrupt_error: list[RemoteError] = []

    def send_good(i: int) -> None:
        with EdgeClient(daemon.target) as c:
            good[i] = c.classify("tiny", [tensor_message(rgb)], top_k=N_CLASSES)

    def send_corrupt() -> None:
        truncated = _png(_image(30))[:300]
        try:
            client.classify("tiny", [tensor_message(rgb), encoded_image(truncated)])
        except RemoteError as e:
            corrupt_error.append(e)

    threads = [threading.Thread(target=send_good, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=send_corrupt))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    (error,) = corrupt_error
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and _field(error) == "images[1]"
    assert "cannot decode PNG" in error.details
    for answer in good:
        _assert_answer(answer.results[0], engine.probabilities(rgb)[0], engine.labels)
    for data in (b"\x89PNG\r\n\x1a\n" + bytes(64), bytes(128) + b"DICM" + bytes(64), b"junk"):
        with pytest.raises(RemoteError, match="INVALID_ARGUMENT: images"):
            client.classify("tiny", [encoded_image(data)])
    assert client.health("tiny") == "SERVING"
    _assert_answer(client.classify("tiny", [tensor_message(rgb)], top_k=N_CLASSES).results[0],
                   engine.probabilities(rgb)[0], engine.labels)


@pytest.mark.parametrize("request_fields, code, field", [
    (dict(model="nope", images=[pb.Image(tensor=pb.Tensor())]), "NOT_FOUND", None),
    (dict(model="tiny"), "INVALID_ARGUMENT", "images"),
    (dict(model="tiny", images=[pb.Image()]), "INVALID_ARGUMENT", "images[0]"),
    (dict(model="tiny", images=[pb.Image(tensor=pb.Tensor(dtype=pb.TENSOR_DTYPE_UINT8,
                                                           shape=[2, 2], data=b"\0" * 3))]),
     "INVALID_ARGUMENT", "images[0].data"),
    (dict(model="", images=[pb.Image()]), "INVALID_ARGUMENT", "model"),
])
def test_bad_requests(client, request_fields, code, field):
    with pytest.raises(grpc.RpcError) as error:
        client.stub.Classify(pb.ClassifyRequest(**request_fields))
    assert error.value.code().name == code
    assert dict(error.value.trailing_metadata() or ()).get("e2edge-field") == field


def test_generate_on_a_vision_model_is_refused(client):
    with pytest.raises(RemoteError, match=r"INVALID_ARGUMENT: model: 'tiny' is a vision model"):
        list(client.generate("tiny", "hello"))


def test_stream_answers_in_order_and_goes_on_after_a_bad_request(daemon, client, engine):
    images = [_image() for _ in range(20)]
    scheduler = daemon.daemon.registry.scheduler
    handled_before = scheduler.usage()["tiny"].handling_s

    def requests():
        for i, img in enumerate(images):
            data = b"broken" if i == 7 else _png(img)
            yield pb.ClassifyRequest(model="tiny", images=[encoded_image(data)],
                                     top_k=N_CLASSES, request_id=f"frame-{i}")

    answers = list(client.classify_stream(requests()))
    assert [a.request_id for a in answers] == [f"frame-{i}" for i in range(20)]
    for i, (answer, img) in enumerate(zip(answers, images)):
        if i == 7:
            assert answer.error.code == "INVALID_ARGUMENT" and answer.error.field == "images[0]"
            assert not answer.results
        else:
            assert not answer.HasField("error")
            _assert_answer(answer.results[0], engine.probabilities(img)[0], engine.labels)
    # Decoding, answering and streaming the frames cost the daemon CPU: charged to "tiny"
    assert scheduler.usage()["tiny"].handling_s > handled_before


def test_list_models_shows_the_vision_models(client):
    models = {m.name: m for m in client.list_models()}
    for name in ("tiny", "strict"):
        info = models[name]
        assert info.state == pb.MODEL_STATE_READY and info.kind == pb.MODEL_KIND_VISION
        assert info.backend == "onnxruntime" and "CPUExecutionProvider" in info.execution_providers
        assert info.package_name == "tiny-vision" and info.active_requests == 0
        assert info.backend_reason and info.context_length == 0
        assert info.execution == "ternary as int8 codes, integer GEMM on int8 activations"


def test_energy_of_a_request_is_its_batch_window(package, tmp_path, monkeypatch):
    import fake_tegrastats

    from runtime.power.config import PowerConfig

    line = (fake_tegrastats.DATA / "orin_nano_jp6.txt").read_text().splitlines()[0]
    line, n = re.subn(r"\bVDD_IN \d+mW/\d+mW", "VDD_IN 6000mW/6000mW", line)
    assert n == 1
    (tmp_path / "trace.txt").write_text((line + "\n") * 20)
    fake_tegrastats.install(tmp_path / "bin", monkeypatch, tmp_path / "trace.txt")
    power = PowerConfig(source="tegrastats", interval_ms=20, idle_window_s=0.3)
    batching = BatchingConfig(max_batch=8, max_delay_ms=150)
    config = DaemonConfig(listen="127.0.0.1:0", power=power,
                          models=(ModelConfig("tiny", package, batching=batching),))
    images = [tensor_message(_image()) for _ in range(3)]
    with DaemonThread(config, grace_s=0) as d, EdgeClient(d.target) as c:
        assert len(list(c.watch_power(max_samples=2, timeout_s=10))) == 2  # readings flow
        # Another service's request (as KServe's: no tag, no energy) makes the batcher and
        # shares the batch: the Classify request is still measured.
        entry = d.daemon.registry.ready("tiny")
        untagged = asyncio.run_coroutine_threadsafe(
            entry.model.batcher_on(entry.executor).submit(entry.model.preprocess(_image())),
            d.loop)
        shared = c.classify("tiny", images).stats
        assert untagged.result(10).batch_size == shared.batch_size == 4
        alone = c.classify("tiny", images).stats
    for stats in (shared, alone):
        energy = stats.energy
        assert energy.power_source == "tegrastats" and energy.HasField("joules")
        assert 0 < energy.window_s <= stats.inference_s
        # Constant 6 W, the only measured request: exactly 6 W x its window.
        assert energy.joules == pytest.approx(6.0 * energy.window_s, rel=1e-6)
        assert stats.joules_per_image == pytest.approx(energy.joules / 3)


def test_batching_and_limit_config_keys_with_their_lines():
    config = parse_config(
        "models:\n  - name: v\n    path: /x\n    batching: {max_batch: 16, max_delay_ms: 5}\n"
        "    image_limits:\n      max_pixels: 1000\n"
    )
    (model,) = config.models
    assert model.batching == BatchingConfig(16, 5.0)
    assert model.image_limits == ImageLimits(max_pixels=1000)
    assert parse_config("models:\n  - {name: v, path: /x}\n").models[0].batching.max_batch == 1
    for text, message in [
        ("    batching: {max_batch: 0}\n", r"d.yaml:4: models\[0\].batching.max_batch: expected "
                                          r"an integer in \[1, 1024\], got 0"),
        ("    batching:\n      max_delay_ms: 5000\n",
         r"d.yaml:5: models\[0\].batching.max_delay_ms: expected milliseconds in \[0, 1000\]"),
        ("    image_limits: {max_image: 3}\n", r"d.yaml:4: models\[0\].image_limits.max_image: "
                                            r"unknown key \(known keys here: max_bytes, "
                                            r"max_images, max_pixels\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config("models:\n  - name: v\n    path: /x\n" + text, "d.yaml")


def test_a_stream_ends_with_unavailable_when_the_daemon_drains(package):
    config = DaemonConfig(listen="127.0.0.1:0", models=(ModelConfig("tiny", package),))
    daemon = DaemonThread(config, grace_s=10).start()
    second = threading.Event()
    image = tensor_message(_image())

    def requests():
        yield pb.ClassifyRequest(model="tiny", images=[image], request_id="before")
        assert second.wait(10)
        yield pb.ClassifyRequest(model="tiny", images=[image], request_id="during")

    stopper = threading.Thread(target=daemon.stop)
    with EdgeClient(daemon.target) as client:
        stream = client.classify_stream(requests())
        assert next(stream).request_id == "before"
        stopping = time.monotonic()
        stopper.start()  # drains: the open stream may finish within the grace period
        while not daemon.daemon.state.draining:
            threading.Event().wait(0.01)
        second.set()
        with pytest.raises(RemoteError, match="UNAVAILABLE: the daemon is shutting down"):
            next(stream)
    stopper.join(15)
    assert not stopper.is_alive()
    assert time.monotonic() - stopping < 5  # the stream ended itself, before the 10 s grace


def test_request_pixels_counts_what_headers_and_shapes_declare():
    png, jpeg = _png(_image(12)), io.BytesIO()
    Image.fromarray(_image(20)).save(jpeg, format="JPEG")
    images = [encoded_image(png), encoded_image(jpeg.getvalue()), tensor_message(_image(10))]
    assert request_pixels(images) == 144 + 400 + 100
    assert request_pixels([encoded_image(_dicom_grey(_image(8, 1)))]) is None
    assert request_pixels([encoded_image(b"junk"), encoded_image(png)]) is None
    flat = pb.Image(tensor=pb.Tensor(dtype=pb.TENSOR_DTYPE_UINT8, shape=[64], data=b"\0" * 64))
    assert request_pixels([flat]) is None  # malformed: left to the decoding thread to report
