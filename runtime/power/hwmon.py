"""INA3221 power monitors through hwmon sysfs, for boards where tegrastats is absent.

Layout (JetPack 5 and later; the INA3221 driver registers one hwmon device per chip):

  /sys/class/hwmon/hwmonN/name            "ina3221"
  /sys/class/hwmon/hwmonN/inK_label       rail name, e.g. "VDD_IN"; "NC" when unconnected
  /sys/class/hwmon/hwmonN/inK_input       bus voltage of channel K, millivolts
  /sys/class/hwmon/hwmonN/currK_input     current of channel K, milliamperes

Rail power is V * I (mV * mA / 1000 = mW). Channels labelled "NC" and the chip's
"sum of shunt voltages" channel (in7, which has no current of its own) are skipped.
The total follows the same rule as every source (`sample.total_mw`). JetPack 4's
`ina3221x` iio driver is not read here: those boards have tegrastats.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import BackendUnavailable
from runtime.power.sample import PowerSample, total_mw
from runtime.power.source import PolledSource

logger = logging.getLogger(__name__)

DEFAULT_HWMON_ROOT = Path("/sys/class/hwmon")
CHIP_NAME = "ina3221"
LABEL_RE = re.compile(r"^in(\d+)_label$")


@dataclass(frozen=True)
class Channel:
    """One measured rail: its label and the two files that give its power."""

    rail: str
    volt_path: Path  # inK_input, millivolts
    curr_path: Path  # currK_input, milliamperes

    def read_mw(self) -> float:
        millivolts = int(self.volt_path.read_text().split()[0])
        milliamps = int(self.curr_path.read_text().split()[0])
        return millivolts * milliamps / 1000.0


def find_ina3221_channels(root: Path | str = DEFAULT_HWMON_ROOT) -> list[Channel]:
    """Every labelled INA3221 channel under `root` (an hwmon class directory)."""
    root = Path(root)
    if not root.is_dir():
        return []
    channels: dict[str, Channel] = {}
    for device in sorted(root.iterdir()):
        name_file = device / "name"
        if not name_file.is_file() or name_file.read_text().strip() != CHIP_NAME:
            continue
        for label_file in sorted(device.glob("in*_label")):
            match = LABEL_RE.match(label_file.name)
            if match is None:
                continue
            rail = label_file.read_text().strip()
            if not rail or rail == "NC" or rail.lower().startswith("sum of shunt"):
                continue
            k = match.group(1)
            volt, curr = device / f"in{k}_input", device / f"curr{k}_input"
            if not (volt.is_file() and curr.is_file()):
                continue
            if rail in channels:
                logger.warning("hwmon: rail %s appears twice; keeping %s", rail, channels[rail])
                continue
            channels[rail] = Channel(rail, volt, curr)
    return list(channels.values())


class HwmonSource(PolledSource):
    """Power from the INA3221 monitors' hwmon files, read once per interval."""

    name = "hwmon"

    def __init__(self, interval_ms: int, root: Path | str = DEFAULT_HWMON_ROOT):
        super().__init__(interval_ms)
        self.root = Path(root)
        self.channels: list[Channel] = []

    def start(self) -> None:
        super().start()
        self.channels = find_ina3221_channels(self.root)
        if not self.channels:
            raise BackendUnavailable(
                f"power source hwmon: no INA3221 channel with a label under {self.root}"
            )

    def read(self) -> PowerSample:
        t = time.monotonic()
        rails = {channel.rail: channel.read_mw() for channel in self.channels}
        return PowerSample(t=t, total_mw=total_mw(rails), rails_mw=rails)
