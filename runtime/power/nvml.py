"""Power from NVML (nvidia-ml-py), for workstation and server GPUs.

One rail per GPU, named GPU0, GPU1, ...; the total is their sum (the GPUs are the
only thing NVML measures, not the host).

Where the GPU has NVML's total-energy counter (Volta and later), a sample's power is
the mean power since the previous reading, Δcounter / Δt, stamped at the middle of
that interval, and the sample carries the counter (`energy_counter_j`, summed over
the GPUs). The trapezoid integral then follows the counter. Without the counter,
power is `nvmlDeviceGetPowerUsage`, which on recent GPUs is a one-second running
average that lags every change of load: on an H200 it undercounted a 6 s burst by
6% against the counter.

Jetson Orin reports power as unsupported through NVML: use tegrastats there.
"""

from __future__ import annotations

import time

from runtime.errors import BackendUnavailable
from runtime.power.sample import PowerSample
from runtime.power.source import PolledSource


def _import_pynvml():
    try:
        import pynvml
    except ImportError as e:
        raise BackendUnavailable(
            "power source nvml: nvidia-ml-py is not installed (pip install nvidia-ml-py)"
        ) from e
    return pynvml


class NvmlSource(PolledSource):
    """Power (and the energy counter, where there is one) of every NVIDIA GPU via NVML."""

    name = "nvml"

    def __init__(self, interval_ms: int):
        super().__init__(interval_ms)
        self._nvml = None
        self._handles: list = []
        self.has_energy_counter = False
        self.gpu_names: list[str] = []
        self._last_counter: tuple[float, list[int]] | None = None  # (t, mJ per GPU)

    def start(self) -> None:
        super().start()
        nvml = _import_pynvml()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise BackendUnavailable(f"power source nvml: NVML did not initialise: {e}") from e
        self._nvml = nvml
        try:
            handles = [
                nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())
            ]
            for handle in handles:
                nvml.nvmlDeviceGetPowerUsage(handle)
        except nvml.NVMLError as e:
            self.stop()
            raise BackendUnavailable(
                f"power source nvml: the GPU does not report its power ({e}); "
                "on a Jetson use power.source tegrastats"
            ) from e
        if not handles:
            self.stop()
            raise BackendUnavailable("power source nvml: NVML sees no GPU")
        self._handles = handles
        self._last_counter = None
        self.gpu_names = [_text(nvml.nvmlDeviceGetName(h)) for h in handles]
        try:
            for handle in handles:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self.has_energy_counter = True
        except nvml.NVMLError:  # pre-Volta GPUs: power only, the counter stays None
            self.has_energy_counter = False

    def stop(self) -> None:
        super().stop()
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None
            self._handles = []

    def read(self) -> PowerSample:
        nvml = self._nvml
        if nvml is None:
            raise RuntimeError("NvmlSource.read() before start()")
        t = time.monotonic()
        energy_j = None
        if self.has_energy_counter:
            # nvmlDeviceGetTotalEnergyConsumption: millijoules since the driver loaded
            counters = [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles]
            last, self._last_counter = self._last_counter, (t, counters)
        if self.has_energy_counter and last is not None and t > last[0]:
            t_last, counters_last = last
            # mJ / s = mW: the mean power over the interval, at the interval's middle
            rails = {
                f"GPU{i}": (now - before) / (t - t_last)
                for i, (now, before) in enumerate(zip(counters, counters_last))
            }
            energy_j = (sum(counters) + sum(counters_last)) / 2 / 1000.0
            t = (t + t_last) / 2
        else:
            rails = {
                f"GPU{i}": float(nvml.nvmlDeviceGetPowerUsage(h))
                for i, h in enumerate(self._handles)
            }
            if self.has_energy_counter:
                energy_j = sum(counters) / 1000.0
        loads = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]
        temps = {
            f"GPU{i}": float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
            for i, h in enumerate(self._handles)
        }
        return PowerSample(
            t=t,
            total_mw=sum(rails.values()),
            rails_mw=rails,
            gpu_load_pct=sum(loads) / len(loads),
            temperatures_c=temps,
            energy_counter_j=energy_j,
        )


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
