"""One power reading, and the rule that turns a board's rails into its total power.

Every power source yields `PowerSample`s: a monotonic timestamp, the total power and
the power of each rail it can see, in milliwatts. Loads and temperatures ride along
when the source reports them (tegrastats does; hwmon and NVML do not).

Total power rule (`total_mw`), the same for every source that reads rails:
1. If the board reports its input rail, that rail is the total. The input rails, in
   the order they are looked for:
   - `VIN`        Jetson Thor: the board input, measured by its own monitor; the
                  other Thor rails (VDD_GPU, VDD_CPU_SOC_MSS, VIN_SYS_5V0) sit below it.
   - `VDD_IN`     Orin Nano / Orin NX (JetPack 5-7), Xavier NX, TX2 (JetPack 4).
   - `POM_5V_IN`  Jetson Nano and TX1 (JetPack 4).
   The other rails of these boards (VDD_CPU_GPU_CV, VDD_SOC, POM_5V_GPU, ...) are
   parts of the input rail; adding them would count them twice.
2. Otherwise the total is the sum of all rails. That is the case of AGX Xavier (GPU,
   CPU, SOC, CV, VDDRQ, SYS5V) and AGX Orin (VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0,
   VDDQ_VDD2_1V8AO), whose monitors see no parent rail: NVIDIA's guidance for them
   is the sum. `VIN_SYS_5V0` is *not* an input rail: on AGX Orin and Thor it is one
   sibling rail among the others on the same INA3221.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# Looked for in this order; the first one present is the total (see the module doc).
INPUT_RAILS: tuple[str, ...] = ("VIN", "VDD_IN", "POM_5V_IN")


@dataclass(frozen=True)
class PowerSample:
    """One reading of a power source. Treat `rails_mw` and `temperatures_c` as read-only."""

    t: float  # time.monotonic() when the reading was taken, seconds
    total_mw: float  # whole-board power by the total power rule, milliwatts
    rails_mw: Mapping[str, float]  # rail name -> instantaneous power, milliwatts
    ram_used_mb: float | None = None
    ram_total_mb: float | None = None
    cpu_load_pct: float | None = None  # mean over the online cores
    gpu_load_pct: float | None = None
    temperatures_c: Mapping[str, float] = field(default_factory=dict)
    # A cumulative energy counter of the hardware (NVML's), joules; None where there is none.
    energy_counter_j: float | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (the power log's and the CLI's view of a sample)."""
        out: dict = {
            "t": round(self.t, 6),
            "total_mw": self.total_mw,
            "rails_mw": dict(self.rails_mw),
        }
        for name in (
            "ram_used_mb",
            "ram_total_mb",
            "cpu_load_pct",
            "gpu_load_pct",
            "energy_counter_j",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.temperatures_c:
            out["temperatures_c"] = dict(self.temperatures_c)
        return out


def input_rail(rails_mw: Mapping[str, float]) -> str | None:
    """The name of the board's input rail among `rails_mw`, or None when it has none."""
    for name in INPUT_RAILS:
        if name in rails_mw:
            return name
    return None


def total_mw(rails_mw: Mapping[str, float]) -> float:
    """Whole-board power: the input rail when present, else the sum of the rails."""
    name = input_rail(rails_mw)
    if name is not None:
        return float(rails_mw[name])
    return float(sum(rails_mw.values()))
