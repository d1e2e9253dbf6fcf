"""Parsers for tegrastats lines: one compiled regex and one pure function per field.

tegrastats prints one line per interval. Its layout moved with every JetPack; these
are the forms parsed here (taken from lines captured on each board):

  JetPack 4, Nano:   RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) ...
                     CPU [30%@1036,33%@1036,28%@1036,26%@1036] EMC_FREQ 10%@1600
                     GR3D_FREQ 0%@76 ... PLL@57C CPU@60.5C ... POM_5V_IN 4520/4680
                     POM_5V_GPU 0/0 POM_5V_CPU 1078/1205
  JetPack 4, Xavier: ... GPU 18401/18525 CPU 2301/2330 SOC 4602/4602 CV 0/0 ...
  JetPack 5, Xavier: ... GR3D_FREQ 0%@114 ... GPU 467mW/467mW CPU 467mW/467mW ...
  JetPack 6, Orin:   05-15-2025 18:30:28 RAM 6982/7620MB ... GR3D_FREQ 84%@[713] ...
                     cpu@65.562C ... VDD_IN 17946mW/15710mW VDD_CPU_GPU_CV 8896mW/7585mW
  JetPack 7, Orin:   ... GR3D_FREQ 0%@[1300,1300] ... cpu@52.968C/52.968C ...
                     VDD_GPU_SOC 3150mW/2971mW/3301mW (three values per rail)
  JetPack 7, Thor:   ... GR3D_FREQ @[1000,1000,1000] (no load) ... VDD_GPU 3561mW/3561mW
                     VDD_CPU_SOC_MSS 7910mW/7910mW VIN_SYS_5V0 7620mW/7620mW VIN 26686mW/...

A line's own date is ignored: samples are stamped with time.monotonic() when the
line arrives (the printed time has one-second resolution and is wall-clock).
"""

from __future__ import annotations

import re
from statistics import fmean

from runtime.power.sample import PowerSample, total_mw

# All regular expressions. A field name is never preceded by a word character, a dot,
# '@' or '/', so the tail of "cpu@52.968C/52.968C" or of "7844MB" can't start a field.
RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)([kMG])B\b")
CPU_RE = re.compile(r"\bCPU \[([^\]]*)\]")
CPU_CORE_RE = re.compile(r"^(\d+)%")
GR3D_RE = re.compile(r"\bGR3D_FREQ (?:(\d+)%)?(?:@(?:\[[\d,]*\]|\d+))?")
TEMP_RE = re.compile(
    r"(?<![\w.@/])([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C(?:/-?\d+(?:\.\d+)?C)?(?!\w)"
)
RAIL_RE = re.compile(
    r"(?<![\w.@/])([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/\d+(?:mW)?(?:/\d+(?:mW)?)?(?=\s|$)"
)

# A thermal zone that is powered off reads -256 C (e.g. GPU@-256C while rail-gated).
OFFLINE_TEMPERATURE_C = -256.0
_MB_PER_UNIT = {"k": 1.0 / 1024.0, "M": 1.0, "G": 1024.0}


def parse_ram(text: str) -> tuple[float, float] | None:
    """Memory in use and total, in MB.

    RAM X/Y (lfb NxZ)
    X = Amount of RAM in use in MB.
    Y = Total amount of RAM available for applications.
    """
    match = RAM_RE.search(text)
    if match is None:
        return None
    scale = _MB_PER_UNIT[match.group(3)]
    return int(match.group(1)) * scale, int(match.group(2)) * scale


def parse_cpu(text: str) -> tuple[float | None, ...] | None:
    """Per-core load in percent, None for a core that is off.

    CPU [X%@Z,Y%@Z,off,...]   (JetPack 4 and later)
    CPU [X%,Y%,off,off]@Z     (older TX1 images)
    X, Y = load of each core relative to its current frequency Z (MHz), or 'off'
    when the core is powered down.
    """
    match = CPU_RE.search(text)
    if match is None:
        return None
    loads: list[float | None] = []
    for core in match.group(1).split(","):
        load = CPU_CORE_RE.match(core.strip())
        loads.append(float(load.group(1)) if load else None)
    return tuple(loads)


def parse_gpu_load(text: str) -> float | None:
    """GPU load in percent; None when absent or when the line gives no load.

    GR3D_FREQ X%@Y        JetPack 4/5: X = load, Y = frequency in MHz
    GR3D_FREQ X%@[Y,Y]    JetPack 5-7 Orin: one frequency per GPC
    GR3D_FREQ @[Y,Y,Y]    Thor: frequencies only, no load
    """
    match = GR3D_RE.search(text)
    if match is None or match.group(1) is None:
        return None
    return float(match.group(1))


def parse_temperatures(text: str) -> dict[str, float]:
    """Every thermal zone, in degrees Celsius (zones that are off are left out).

    name@XC          JetPack 4-6: X = current temperature
    name@XC/YC       JetPack 7: a second value follows; X is the current one
    name is a zone of /sys/devices/virtual/thermal/thermal_zone*/type.
    """
    temps: dict[str, float] = {}
    for name, value in TEMP_RE.findall(text):
        celsius = float(value)
        if celsius > OFFLINE_TEMPERATURE_C:
            temps[name] = celsius
    return temps


def parse_rails(text: str) -> dict[str, float]:
    """Every power rail's instantaneous power in milliwatts; unknown names are kept.

    NAME X/Y              JetPack 4: X = current, Y = average power in mW
    NAME XmW/YmW          JetPack 5 and 6
    NAME XmW/YmW/ZmW      JetPack 7: three values per rail; X is the current one
    """
    return {name: float(current) for name, current in RAIL_RE.findall(text)}


def parse_line(line: str, t: float) -> PowerSample | None:
    """A sample from one tegrastats line read at monotonic time `t`; None without rails.

    A line without any power rail is no power sample (tegrastats printing an error,
    or a board whose rails need root): the caller counts and logs it.
    """
    rails = parse_rails(line)
    if not rails:
        return None
    ram = parse_ram(line)
    cpu = parse_cpu(line)
    online = [load for load in cpu or () if load is not None]
    return PowerSample(
        t=t,
        total_mw=total_mw(rails),
        rails_mw=rails,
        ram_used_mb=ram[0] if ram else None,
        ram_total_mb=ram[1] if ram else None,
        cpu_load_pct=fmean(online) if online else None,
        gpu_load_pct=parse_gpu_load(line),
        temperatures_c=parse_temperatures(line),
    )
