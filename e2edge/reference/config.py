"""docs/reference/config.md: every key of the daemon's YAML config, from its dataclasses.

Each key is a field of the config's frozen dataclasses (runtime/config.py and the
sections it reads), documented where it is declared (runtime/config_field.py); the
page lists them section by section with their YAML type and default, explains the
backend choice with runtime/backends/selection.py's own docstring, and ends with a
complete example that is made from the same fields and read back by the daemon's own
loader before it is written.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from e2edge.reference.markdown import anchor, cell, code, fenced, generated_notice, prose, table
from runtime import config as daemon_config
from runtime.backends import selection
from runtime.config_field import DEFAULT_DOC, EXAMPLE, doc_of

# A second model for the example: a vision model with batching (every other key of
# it takes its default, which the first model shows).
VISION_EXAMPLE = {"name": "retina", "path": "/var/lib/e2edge/models/retina-vit",
                  "batching": {"max_batch": 16, "max_delay_ms": 5}}


def keys(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that are keys of the YAML file (the documented ones)."""
    return [f for f in dataclasses.fields(cls) if doc_of(f) is not None]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def sections(cls: type = daemon_config.DaemonConfig,
             where: str = "top level") -> list[tuple[str, type]]:
    """(where its keys live in the file, the dataclass that defines them) of every
    section, depth first: top level, models[], models[].batching, ..., repository."""
    found = [(where, cls)]
    hints = _hints(cls)
    for f in keys(cls):
        path = f.name if where == "top level" else f"{where}.{f.name}"
        linked = section_of(path, hints[f.name])
        if linked is not None:
            found += sections(nested_section(hints[f.name])[0], linked)
    return found


def nested_section(hint: Any) -> tuple[type, bool] | None:
    """(the dataclass, whether the key holds a list of them) for a key whose value is a
    mapping or a list of mappings; None for a plain value."""
    inner, _ = _optional_inner(hint)
    if typing.get_origin(inner) in (tuple, list):
        item = typing.get_args(inner)[0]
        return (item, True) if dataclasses.is_dataclass(item) else None
    return (inner, False) if dataclasses.is_dataclass(inner) else None


def _optional_inner(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, else (hint, False)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def yaml_type(hint: Any) -> str:
    """How a field's type is written in YAML, e.g. `list of strings`, `mapping`."""
    hint, _ = _optional_inner(hint)
    if typing.get_origin(hint) in (tuple, list):
        item = yaml_type(typing.get_args(hint)[0])
        return f"list of {item}s" if item != "mapping" else "list of mappings"
    if dataclasses.is_dataclass(hint):
        return "mapping"
    return {str: "string", int: "integer", float: "number", bool: "true or false",
            Path: "path"}[hint]


def yaml_value(value: Any) -> Any:
    """A default as plain YAML data: tuples as lists, paths as strings, sections as maps."""
    if dataclasses.is_dataclass(value):
        return {f.name: yaml_value(getattr(value, f.name)) for f in keys(type(value))}
    if isinstance(value, (tuple, list)):
        return [yaml_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def inline_yaml(value: Any) -> str:
    text = yaml.safe_dump(yaml_value(value), default_flow_style=True, sort_keys=False,
                          width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def default_text(f: dataclasses.Field, hint: Any) -> str:
    inner, _ = _optional_inner(hint)
    if DEFAULT_DOC in f.metadata:
        return cell(f.metadata[DEFAULT_DOC])
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    if f.default is None:
        return "absent"
    if dataclasses.is_dataclass(inner):
        return "see below"
    return code(inline_yaml(f.default))


def section_of(key_path: str, hint: Any) -> str | None:
    """The section a mapping-valued key's keys are listed in (`models[]` for a list)."""
    nested = nested_section(hint)
    if nested is None:
        return None
    return key_path + "[]" if nested[1] else key_path


def key_table(where: str, cls: type) -> str:
    hints = _hints(cls)
    rows = []
    for f in keys(cls):
        path = f.name if where == "top level" else f"{where}.{f.name}"
        linked = section_of(path, hints[f.name])
        description = cell(doc_of(f) or "")
        if linked is not None:
            description += f" See [{linked}]({anchor(linked)})."
        rows.append([code(f.name), yaml_type(hints[f.name]), default_text(f, hints[f.name]),
                     description])
    return table(["key", "type", "default", "description"], rows)


def example_data(cls: type) -> dict[str, Any]:
    """Every key of `cls` at its example value, else its default, sections in full."""
    hints = _hints(cls)
    data: dict[str, Any] = {}
    for f in keys(cls):
        nested = nested_section(hints[f.name])
        if nested is not None:
            section_cls, is_list = nested
            data[f.name] = ([example_data(section_cls), VISION_EXAMPLE] if is_list
                            else example_data(section_cls))
        elif EXAMPLE in f.metadata:
            data[f.name] = yaml_value(f.metadata[EXAMPLE])
        else:
            data[f.name] = yaml_value(f.default)
    return data


def example_yaml() -> str:
    """The complete example, checked by the daemon's loader: every section present and
    every model key read back as written."""
    text = yaml.safe_dump(example_data(daemon_config.DaemonConfig), sort_keys=False,
                          default_flow_style=False, width=88)
    parsed = daemon_config.parse_config(text, source="example.yaml", base_dir=Path("/"))
    absent = [name for name in ("power", "metrics", "tls", "auth", "repository")
              if getattr(parsed, name) is None]
    written = yaml.safe_load(text)["models"][0]
    read = yaml_value(parsed.models[0])
    if absent or any(read[key] != value for key, value in written.items()):
        raise RuntimeError(f"the example config does not read back as written: {absent}, "
                           f"{written} != {read}")
    return text


def render() -> str:
    parts = [
        generated_notice("the config dataclasses of runtime/config.py"),
        "# Daemon configuration reference",
        prose(
            "`e2edge serve --config FILE` (and the systemd service, with "
            "/etc/e2edge/e2edge.yaml) reads one YAML file into frozen dataclasses. Every "
            "key is checked once, at start and on every reload (SIGHUP, "
            "`systemctl reload e2edge`): an unknown key or a bad value is an error naming "
            "the file, the line and the key, e.g. `daemon.yaml:7: models[0].threads: "
            "expected an integer >= 0, got 'four'`. Relative paths start at the config "
            "file's folder. `e2edge doctor --config FILE` checks a file and says what each "
            "model will run on."),
        "This page is generated from the fields of the config's dataclasses, where each "
        "key is documented: runtime/config.py, runtime/vision/serving_config.py, "
        "runtime/power/config.py, runtime/security_config.py, runtime/repository.py.",
    ]
    for where, cls in sections():
        heading = "Top level" if where == "top level" else f"`{where}`"
        intro = prose(cls.__doc__ or "") if cls.__doc__ and not cls.__doc__.startswith(
            cls.__name__ + "(") else ""
        parts += [f"## {heading}", *([intro] if intro else []), key_table(where, cls)]
    parts += [
        "## How `backend` and `providers` pick what a model runs on",
        "The decision is made in one place, runtime/backends/selection.py; its own "
        "description:",
        fenced(selection.__doc__.strip()),
        "## A complete example",
        "Every key, at its default or at an example value; the daemon's loader reads this "
        "file back before this page is written. A real file needs only `models` with a "
        "`name` and a `path` for each; leave out `tls`, `auth` and `repository` unless you "
        "want them.",
        fenced(example_yaml().rstrip(), "yaml"),
    ]
    return "\n\n".join(parts) + "\n"
