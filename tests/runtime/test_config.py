"""The daemon config: defaults, and errors that name the file, the line and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runtime.config import (
    DEFAULT_GRACE_PERIOD_S,
    DEFAULT_LISTEN,
    DEFAULT_MAX_MESSAGE_BYTES,
    load_config,
    parse_config,
    with_listen,
)
from runtime.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_minimal_file_takes_every_default(tmp_path):
    path = _write(tmp_path, """
        listen: 127.0.0.1:50051
        models: [{name: demo, path: pkg}]
    """)
    config = load_config(path)
    assert config.listen == DEFAULT_LISTEN
    assert config.grace_period_s == DEFAULT_GRACE_PERIOD_S
    assert config.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert config.decode_threads == 0  # half the cores, at least one
    assert config.decode_inline_max_pixels == 128 * 128
    assert config.logging.level == "INFO" and config.logging.format == "text"
    (model,) = config.models
    assert model.name == "demo"
    assert model.path == tmp_path / "pkg"  # relative paths start at the config's folder
    assert (model.backend, model.threads, model.providers) == ("onnxruntime", 0, ())
    assert (model.max_concurrent, model.max_queue) == (1, 16)
    assert (model.share, model.priority) == (1.0, 0)  # every model an equal share


def test_every_key_is_read(tmp_path):
    path = _write(tmp_path, """
        listen: unix:/run/e2edge/e2edge.sock
        grace_period_s: 2.5
        max_message_bytes: 1048576
        decode_threads: 3
        decode_inline_max_pixels: 0
        models:
          - name: chat-1.0
            path: /opt/models/chat
            backend: tensorrt
            threads: 4
            spin: false
            providers: [CUDAExecutionProvider, CPUExecutionProvider]
            max_concurrent: 2
            max_queue: 0
            max_sequence_length: 1024
            share: 3
            priority: 2
          - {name: other, path: ~/other, share: 0.5, spin: auto}
        logging:
          level: debug
          format: JSON
    """)
    config = load_config(path)
    assert config.listen == "unix:/run/e2edge/e2edge.sock"
    assert config.grace_period_s == 2.5
    assert config.max_message_bytes == 1048576
    assert config.decode_threads == 3 and config.decode_inline_max_pixels == 0
    chat, other = config.models
    assert chat.path == Path("/opt/models/chat") and chat.backend == "tensorrt"
    assert chat.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert (chat.threads, chat.max_concurrent, chat.max_queue) == (4, 2, 0)
    assert (chat.max_sequence_length, other.max_sequence_length) == (1024, 0)
    assert (chat.share, chat.priority, other.share, other.priority) == (3.0, 2, 0.5, 0)
    assert other.path == Path("~/other").expanduser()
    assert (chat.spin, other.spin) == (False, None)  # None: the daemon decides as it loads
    assert (config.logging.level, config.logging.format) == ("DEBUG", "json")


ONE = "models:\n  - name: a\n    path: p\n"  # a model whose line 4 is free for a bad key
OK = "models: [{name: a, path: p}]\n"
BAD_CONFIGS = [
    # (yaml, line, text that must be in the message)
    (ONE + "    thread: 2\n", 4, "models[0].thread: unknown key"),
    (ONE + "    threads: four\n", 4, "models[0].threads: expected an integer"),
    (ONE + "    threads: -1\n", 4, "models[0].threads"),
    (ONE + "    max_concurrent: 0\n", 4, "models[0].max_concurrent"),
    (ONE + "    max_queue: true\n", 4, "models[0].max_queue"),
    (ONE + "    max_sequence_length: -8\n", 4, "models[0].max_sequence_length"),
    (ONE + "    backend: tflite\n", 4, "models[0].backend: expected one of"),
    (ONE + "    providers: CPU\n", 4, "models[0].providers: expected a list"),
    (ONE + "    share: 0\n", 4, "models[0].share: expected a number > 0"),
    (ONE + "    share: -2\n", 4, "models[0].share: expected a number > 0"),
    (ONE + "    share: .nan\n", 4, "models[0].share: expected a number > 0"),
    (ONE + "    share: lots\n", 4, "models[0].share: expected a number > 0"),
    (ONE + "    share: true\n", 4, "models[0].share"),
    (ONE + "    share: [1, 2]\n", 4, "models[0].share: expected a single value"),
    (ONE + "    priority: -1\n", 4, "models[0].priority: expected an integer in [0, 100]"),
    (ONE + "    priority: high\n", 4, "models[0].priority: expected an integer"),
    (ONE + "    priority: 1.5\n", 4, "models[0].priority: expected an integer"),
    (ONE + "    shares: 2\n", 4, "models[0].shares: unknown key"),
    (ONE + "    spin: sometimes\n", 4, "models[0].spin: expected true, false or auto"),
    (ONE + "    spin: 1\n", 4, "models[0].spin: expected true, false or auto"),
    ("models:\n  - name: a\n", 2, "models[0]: missing required key 'path'"),
    ("models:\n  - path: p\n", 2, "models[0]: missing required key 'name'"),
    ("models:\n  - {name: 'a b', path: p}\n", 2, "models[0].name: 'a b' is not a plain name"),
    ("models:\n  - {name: a, path: p}\n  - {name: a, path: q}\n", 3,
     "models[1].name: model name 'a' is used twice"),
    ("listen: 127.0.0.1:99999\n" + OK, 1, "listen: expected host:port"),
    ("listen: nowhere\n" + OK, 1, "listen"),
    ("listen: 'unix:'\n" + OK, 1, "listen: unix socket address"),
    (OK + "grace_period_s: -1\n", 2, "grace_period_s: expected a number"),
    (OK + "max_message_bytes: 10\n", 2, "max_message_bytes"),
    (OK + "decode_threads: -1\n", 2, "decode_threads: expected an integer in [0, 256]"),
    (OK + "decode_inline_max_pixels: lots\n", 2, "decode_inline_max_pixels: expected an integer"),
    (OK + "logging:\n  level: LOUD\n", 3, "logging.level: expected one of"),
    (OK + "logging:\n  format: xml\n", 3, "logging.format"),
    (OK + "logging:\n  colour: red\n", 3, "logging.colour: unknown key"),
    (OK + "listen_on: x\n", 2, "listen_on: unknown key"),
    (OK + "models: []\n", 2, "models: duplicate key"),
    ("listen: 127.0.0.1:1\n", 1, "missing required key 'models'"),
    ("models: []\n", 1, "models: expected a non-empty list"),
    ("models: {name: a}\n", 1, "models: expected a non-empty list"),
    ("- just\n- a list\n", 1, "config: expected a mapping"),
    ("models: [{name: a, path: p}\nlisten: x\n", 2, "not valid YAML"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD_CONFIGS)
def test_a_bad_key_or_value_names_file_line_and_key(tmp_path, text, line, message):
    path = tmp_path / "daemon.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert message in str(caught.value)


def test_unknown_key_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"known keys here: .*max_concurrent"):
        parse_config("models:\n  - {name: a, path: p, max_concurent: 2}\n")


def test_missing_or_empty_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "absent.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="the config is empty"):
        load_config(empty)


def test_listen_override_is_validated():
    config = parse_config("models: [{name: a, path: /p}]\n")
    assert with_listen(config, "0.0.0.0:0").listen == "0.0.0.0:0"
    assert with_listen(config, "[::1]:7000").listen == "[::1]:7000"
    assert with_listen(config, "unix:/tmp/x.sock").listen == "unix:/tmp/x.sock"
    with pytest.raises(ConfigError, match="--listen"):
        with_listen(config, "localhost")


def test_config_is_frozen():
    config = parse_config("models: [{name: a, path: /p}]\n")
    with pytest.raises(AttributeError):
        config.listen = "x"  # type: ignore[misc]


def test_power_section_is_read_by_power_config_and_its_errors_keep_their_line(tmp_path):
    assert parse_config(OK).power is None  # no section: the daemon measures nothing
    config = parse_config(OK + "power:\n  source: tegrastats\n  interval_ms: 50\n")
    assert (config.power.source, config.power.interval_ms) == ("tegrastats", 50)
    for text, line, message in [
        (OK + "power:\n  source: x\n", 3, "power.source: must be one of"),
        (OK + "power:\n  source: none\n  interval_ms: 5\n", 4, "power.interval_ms"),
        (OK + "power:\n  sorce: none\n", 3, "power.sorce: unknown key"),
        (OK + "power: 3\n", 2, "power: expected a mapping"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config(text, source="d.yaml")
        assert str(caught.value).startswith(f"d.yaml:{line}: {message}")
