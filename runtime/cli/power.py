"""Print live power readings: total and every rail, one line per sample.

Examples:
  e2edge power                          # auto-detect the source, until Ctrl-C
  e2edge power --source tegrastats --interval 500 --count 20
  e2edge power --record power.jsonl     # also write the JSON-lines power log

The summary at the end gives the mean power and the energy over the readings
(trapezoid rule, the same integration the daemon uses per request).
"""

from __future__ import annotations

import argparse
import sys
import time

from runtime.power.config import MAX_INTERVAL_MS, MIN_INTERVAL_MS, SOURCE_NAMES, PowerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", choices=SOURCE_NAMES, default="auto",
        help="power source (default: auto, the first of tegrastats, jtop, hwmon, nvml that "
             "this box has, else none)"
    )
    parser.add_argument(
        "--interval", type=int, default=1000, metavar="MS",
        help=f"sampling interval in milliseconds, {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS}"
    )
    parser.add_argument(
        "--count", type=int, default=0, metavar="N", help="stop after N readings (0: never)"
    )
    parser.add_argument("--record", metavar="FILE", help="write every reading to FILE (JSON lines)")


def format_sample(sample, t_start: float) -> str:
    rails = "  ".join(f"{name} {mw:.0f}" for name, mw in sample.rails_mw.items())
    return f"{sample.t - t_start:8.2f} s  total {sample.total_mw:8.0f} mW  |  {rails}"


def run(args: argparse.Namespace) -> int:
    from runtime.errors import BackendUnavailable, InvalidRequest
    from runtime.power.energy import energy_between
    from runtime.power.power_log import PowerLog
    from runtime.power.sources import open_source

    if args.count < 0:
        raise InvalidRequest("--count", f"must be >= 0, got {args.count}")
    if not MIN_INTERVAL_MS <= args.interval <= MAX_INTERVAL_MS:
        raise InvalidRequest(
            "--interval", f"must be {MIN_INTERVAL_MS}..{MAX_INTERVAL_MS} ms, got {args.interval}"
        )
    config = PowerConfig(source=args.source, interval_ms=args.interval, log=args.record)
    source = open_source(config.source, config.interval_ms)
    if not source.measures:
        raise BackendUnavailable(
            "no power source: tried tegrastats on PATH, jtop, INA3221 in hwmon and NVML"
            if args.source == "auto"
            else "power source 'none' gives no readings"
        )
    log = PowerLog(args.record, config.log_max_bytes, config.log_backups) if args.record else None
    # The first reading may take a while (a child process starting); later ones one interval.
    patience_s = max(10.0, 5 * source.interval_s)
    samples = []
    t_start = time.monotonic()
    print(f"power source: {source.name}, every {config.interval_ms} ms", flush=True)
    source.start()
    try:
        while args.count == 0 or len(samples) < args.count:
            sample = source.next_sample(timeout=patience_s)
            if sample is None:
                raise BackendUnavailable(
                    f"power source {source.name}: no reading in {patience_s:.0f} s"
                )
            samples.append(sample)
            print(format_sample(sample, t_start), flush=True)
            if log is not None:
                log.write(sample)
    except KeyboardInterrupt:
        print(file=sys.stderr)
    finally:
        source.stop()
        if log is not None:
            log.close()
    if len(samples) >= 2:
        report = energy_between(samples, samples[0].t, samples[-1].t, source=source.name)
        mean_mw = report.joules * 1e3 / report.seconds
        print(
            f"{len(samples)} readings over {report.seconds:.2f} s: "
            f"mean {mean_mw:.0f} mW, energy {report.joules:.3f} J"
        )
    return 0
