"""The generated references in docs/reference/ are what their generators write now.

Each page is rendered in memory from the code it describes (the CLI parser, the config
dataclasses, the .proto files) and compared with the committed copy; a difference
means the code changed and the page was not regenerated: run `make docs`.
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys

import pytest
import yaml

from e2edge.reference import REFERENCE_DIR, REPO_ROOT, generators
from runtime import config as daemon_config
from runtime.errors import ConfigError


def _diff(committed: str, fresh: str, name: str) -> str:
    lines = difflib.unified_diff(committed.splitlines(), fresh.splitlines(),
                                 f"committed {name}", f"generated {name}", lineterm="", n=1)
    return "\n".join(list(lines)[:40])


@pytest.mark.parametrize("name", sorted(generators()))
def test_the_committed_reference_is_current(name):
    path = REFERENCE_DIR / name
    assert path.is_file(), f"docs/reference/{name} is missing: run `make docs`"
    committed = path.read_text(encoding="utf-8")
    fresh = generators()[name]()
    assert committed == fresh, (f"docs/reference/{name} is stale: run `make docs` and commit "
                                f"it\n{_diff(committed, fresh, name)}")


@pytest.mark.parametrize("name", sorted(generators()))
def test_each_page_says_it_is_generated_and_how(name):
    first = generators()[name]().splitlines()[0]
    assert first.startswith("<!-- Generated from ") and "`make docs`" in first


def test_the_cli_reference_does_not_depend_on_this_machine(tmp_path):
    """The same page on any box: no terminal width, environment or socket leaks in
    (--target's default depends on $E2EDGE_TARGET and on /run/e2edge/e2edge.sock)."""
    script = "from e2edge.reference import cli; print(cli.render(), end='')"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "33",
           "E2EDGE_TARGET": "unix:/tmp/zq-probe.sock", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120, check=True)
    assert run.stdout == (REFERENCE_DIR / "cli.md").read_text(encoding="utf-8")
    assert "zq-probe" not in run.stdout and str(tmp_path) not in run.stdout


def test_the_cli_reference_has_every_command_and_option():
    from e2edge.cli import COMMANDS, build_parser
    from e2edge.reference.cli import commands

    page = (REFERENCE_DIR / "cli.md").read_text(encoding="utf-8")
    for path in COMMANDS:
        assert f"\n## e2edge {path}\n" in page
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in page or f", {option}" in page, (path, option)


# The config reference lists, per section, the keys of the dataclasses; the loader
# names the keys it accepts in its "unknown key" error. Both must agree.
SECTION_PROBES = {
    "top level": "{section}",
    "models[]": "models: [{{name: a, path: p, {section}}}]",
    "models[].batching": "models: [{{name: a, path: p, batching: {{{section}}}}}]",
    "models[].image_limits": "models: [{{name: a, path: p, image_limits: {{{section}}}}}]",
    "logging": "logging: {{{section}}}",
    "power": "power: {{{section}}}",
    "metrics": "metrics: {{{section}}}",
    "tls": "tls: {{cert: c, key: k, {section}}}",
    "auth": "auth: {{tokens_file: t, {section}}}",
    "repository": "repository: {{directories: [d], {section}}}",
}


def _keys_the_loader_accepts(where: str) -> set[str]:
    text = SECTION_PROBES[where].format(section="no_such_key: 1")
    if not where.startswith("models"):
        text = "models: [{name: a, path: p}]\n" + text
    with pytest.raises(ConfigError) as raised:
        daemon_config.parse_config(text)
    message = str(raised.value)
    assert "no_such_key" in message, message
    known = re.search(r"known(?: keys here)?: ([\w, ]+)\)?$", message)
    assert known, message
    return {k.strip() for k in known[1].split(",")}


def test_every_section_of_the_config_is_probed():
    from e2edge.reference.config import sections

    assert [where for where, _ in sections()] == list(SECTION_PROBES)


@pytest.mark.parametrize("where", list(SECTION_PROBES))
def test_the_config_reference_documents_exactly_the_keys_the_loader_reads(where):
    from e2edge.reference.config import keys, sections

    documented = {f.name for f in keys(dict(sections())[where])}
    assert documented == _keys_the_loader_accepts(where)


def test_the_config_example_is_complete_and_valid():
    from e2edge.reference.config import example_yaml

    text = example_yaml()  # raises unless the loader reads it back as written
    data = yaml.safe_load(text)
    assert {"models", "listen", "power", "metrics", "tls", "auth", "repository",
            "logging"} <= set(data)
    assert "history_s" in data["power"]
    assert text in (REFERENCE_DIR / "config.md").read_text(encoding="utf-8")


def test_the_api_reference_documents_every_element_of_the_e2edge_api():
    from e2edge.reference.grpc import undocumented

    assert undocumented() == [], "add a comment in proto/e2edge/v1/runtime.proto"
    page = (REFERENCE_DIR / "grpc.md").read_text(encoding="utf-8")
    for rpc in ("Generate", "Classify", "ClassifyStream", "ListModels", "GetModel",
                "WatchPower", "ModelInfer", "ModelStreamInfer"):
        assert f"| `{rpc}` |" in page
    assert "history_s" not in page and "later services" not in page.lower()


def test_check_mode_names_a_stale_page(tmp_path):
    from e2edge.reference import stale_pages, write_pages

    write_pages(tmp_path)
    assert stale_pages(tmp_path) == []
    (tmp_path / "grpc.md").write_text("old\n", encoding="utf-8")
    assert stale_pages(tmp_path) == [tmp_path / "grpc.md"]
