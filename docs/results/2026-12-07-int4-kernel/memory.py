"""Resident memory of one process that loads the int4 package and generates 16 tokens,
with the kernel and without (each in a fresh process). Writes memory.json beside this.

    python memory.py PACKAGE
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CHILD = """
import resource, sys
sys.path.insert(0, {root!r})
from runtime.llm.engine import LLMEngine
from runtime.llm.sampling import SamplingParams
engine = LLMEngine.load({package!r}, threads=2, int4_kernel={setting!r})
list(engine.generate(list(range(100, 132)), SamplingParams(max_new_tokens=16, ignore_eos=True)))
resident = int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(resident, peak, engine.int4_matmuls)
"""


def measure(package: str, setting: str) -> dict:
    code = CHILD.format(root=str(ROOT), package=package, setting=setting)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=2)
    return {"resident_mib": int(out[0]), "peak_mib": int(out[1]), "int4_matmuls": out[2].strip()}


if __name__ == "__main__":
    result = {"package": sys.argv[1], "after": "load and 16 generated tokens",
              **{setting: measure(sys.argv[1], setting) for setting in ("off", "auto")}}
    Path(__file__).with_name("memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
