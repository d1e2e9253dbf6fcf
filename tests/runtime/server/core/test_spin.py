"""`spin`: onnxruntime's intra-op threads busy-wait between ops when a model has the
daemon to itself and sleep when it shares the box (runtime/backends/cpu_threads.py);
the decision reaches the real sessions of both kinds of model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from vision_package import tiny_vision_package

from runtime.config import ModelConfig
from runtime.server.core.registry import ModelRegistry, load_model, with_spin_decided

SPIN_KEY = "session.intra_op.allow_spinning"


def _spinning(session) -> bool:
    """onnxruntime's default (spin) leaves the key unset; asleep sets it to '0'."""
    try:
        return session.get_session_options().get_session_config_entry(SPIN_KEY) != "0"
    except Exception:  # noqa: BLE001 - onnxruntime raises Fail for an unset key
        return True


def test_auto_spins_alone_and_sleeps_beside_others_and_a_setting_wins():
    auto = ModelConfig(name="a", path=Path("/x"))
    assert with_spin_decided(auto, 1).spin is True
    assert with_spin_decided(auto, 2).spin is False
    assert with_spin_decided(ModelConfig(name="a", path=Path("/x"), spin=True), 3).spin is True
    assert with_spin_decided(ModelConfig(name="a", path=Path("/x"), spin=False), 1).spin is False


def test_the_registry_loads_with_the_decision_and_keeps_the_config_as_written():
    seen: list[ModelConfig] = []

    def loader(config: ModelConfig):
        seen.append(config)
        raise RuntimeError("not needed past here")

    async def load(configs, **kwargs):
        registry = ModelRegistry(configs, loader=loader, **kwargs)
        await registry.load_all(_ignore)
        return registry

    two = [ModelConfig(name="llm", path=Path("/x")),
           ModelConfig(name="vit", path=Path("/y"), spin=True)]
    registry = asyncio.run(load(two))
    assert [c.spin for c in seen] == [False, True]
    assert registry.entries["llm"].config.spin is None  # a reload compares the file's
    seen.clear()
    asyncio.run(load(two[:1]))
    assert [c.spin for c in seen] == [True]
    seen.clear()
    asyncio.run(load(two[:1], models_on_box=2))  # a replacement beside another model
    assert [c.spin for c in seen] == [False]


async def _ignore(entry) -> None:
    pass


@pytest.mark.parametrize("spin", [True, False])
def test_both_kinds_of_model_get_it_in_their_onnxruntime_session(
        spin, tiny_llama_package, tmp_path_factory):
    vision = tiny_vision_package(tmp_path_factory)
    llm = load_model(ModelConfig(name="llm", path=tiny_llama_package, threads=1, spin=spin))
    vit = load_model(ModelConfig(name="vit", path=vision, threads=1, spin=spin))
    assert _spinning(llm.backend.session) is spin
    assert _spinning(vit.engine.session) is spin
