"""What the request-CPU meter (runtime/server/core/request_cpu.py) costs a call's steps.

Tasks of six steps each (five `await asyncio.sleep(0)`), ten at a time, 3,000 rounds, on
a plain loop and on one with the meter installed, alternating, five times; writes the
per-task times and their difference per step as JSON. Run from the repository root:

    python docs/results/scheduler/meter_overhead.py docs/results/scheduler/meter-overhead.json
"""

import asyncio
import json
import statistics
import sys
import time

from runtime.server.core import request_cpu

STEPS, TASKS, ROUNDS, REPEATS = 6, 10, 3000, 5


async def call() -> None:
    for _ in range(STEPS - 1):
        await asyncio.sleep(0)


async def per_task_us(metered: bool) -> float:
    loop = asyncio.get_running_loop()
    restore = request_cpu.install(loop) if metered else (lambda: None)
    started = time.perf_counter()
    for _ in range(ROUNDS):
        await asyncio.gather(*[loop.create_task(call()) for _ in range(TASKS)])
    restore()
    return (time.perf_counter() - started) / (ROUNDS * TASKS) * 1e6


if __name__ == "__main__":
    plain, metered = [], []
    for _ in range(REPEATS):
        plain.append(asyncio.run(per_task_us(False)))
        metered.append(asyncio.run(per_task_us(True)))
    report = {"steps_per_task": STEPS, "plain_us_per_task": [round(t, 2) for t in plain],
              "metered_us_per_task": [round(t, 2) for t in metered],
              "meter_us_per_step_median": round(
                  statistics.median(m - p for m, p in zip(metered, plain)) / STEPS, 2)}
    json.dump(report, open(sys.argv[1], "w"), indent=2)
    print(json.dumps(report))
