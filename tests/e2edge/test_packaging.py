"""The install lines the README gives name extras that exist and pull what they should."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _extras() -> dict[str, list[str]]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    section = config["options.extras_require"]
    return {name: [line.strip() for line in value.splitlines()
                   if line.strip() and not line.strip().startswith("#")]
            for name, value in section.items()}


def test_every_extra_the_readme_installs_exists():
    extras = _extras()
    readme = (REPO / "README.md").read_text()
    named = {name for group in re.findall(r"e2edge\[([\w,-]+)\]", readme)
             for name in group.split(",")}
    named |= {name for group in re.findall(r"'\.\[([\w,-]+)\]'", readme)
              for name in group.split(",")}
    assert {"jetson-jp6", "cpu", "export", "dev"} <= named
    assert named <= set(extras), named - set(extras)


def test_jetson_extras_take_tensorrt_from_jetpack_and_cuda_python_of_its_cuda():
    extras = _extras()
    for name, cuda in (("jetson-jp6", "cuda-python>=12.6,<13"),
                       ("jetson-jp7", "cuda-python>=13,<14")):
        requirements = extras[name]
        assert cuda in requirements and any(r.startswith("onnxruntime-gpu") for r in requirements)
        assert not any(r.startswith(("tensorrt", "onnxruntime>", "onnxruntime="))
                       for r in requirements)
    assert "tensorrt>=10.0,<11" in extras["tensorrt"]  # the TensorRT 10 API this code is written to
