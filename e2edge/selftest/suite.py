"""The selftest's run: packages, every backend each, the kernel checks, the report.

Each package runs first on onnxruntime CPU, the reference, then on each other backend
(e2edge/selftest/backends.py says which this box has and which take the package);
llm_check.py and vision_check.py run and compare the two kinds through the same four
functions: run, reference, arithmetic, compare. One row's failure is recorded in that
row and the next runs.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from e2edge import __version__
from e2edge.cli import one_line
from e2edge.selftest import llm_check, vision_check
from e2edge.selftest.backends import ARITHMETIC, COMPARED, REFERENCE, Absent, box_missing, place
from e2edge.selftest.kernels import kernel_checks
from e2edge.selftest.packages import build_packages, find_packages
from e2edge.selftest.report import row, summarise
from runtime.errors import PackageError
from runtime.package import load_package

log = logging.getLogger(__name__)
CHECKS = {"llm": llm_check, "vision": vision_check}


def selftest(facts: dict[str, Any], host, out: Path | None,
             packages_dir: Path | None) -> dict[str, Any]:
    """The whole report: packages, one row per (model, backend), kernels, summary."""
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="e2edge-selftest-") as tmp:
        work = Path(tmp)
        if packages_dir is not None:
            packages = find_packages(packages_dir)
        else:
            packages = build_packages((out or work) / "packages")
        rows = [r for path in packages.paths for r in package_rows(path, host, work)]
        kernels = kernel_checks(host)
    report = {
        "e2edge": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": facts,
        "packages": packages.to_dict(),
        "rows": rows,
        "kernels": kernels,
    }
    report["summary"] = summarise(report)
    return report


def package_rows(path: Path, host, work: Path) -> list[dict[str, Any]]:
    """One package on every backend: the reference first, then each other against it."""
    try:
        package = load_package(path)
    except PackageError as e:
        failed = row(path.name, "?", REFERENCE, "failed", one_line(e))
        return [failed, *_not_compared(path.name, "?", host)]
    check = CHECKS[package.kind]
    model = path.name
    cpu, cpu_run = _attempt(model, package, REFERENCE, host, work, check)
    if cpu_run is None:
        return [cpu, *_not_compared(model, package.kind, host)]
    try:
        reference = check.reference(package.root, cpu_run)
    except Exception as e:  # noqa: BLE001 - recorded in the row; the next package runs
        log.debug("reference of %s", model, exc_info=True)
        failed = row(model, package.kind, REFERENCE, "failed", f"reference: {one_line(e)}")
        return [failed, *_not_compared(model, package.kind, host)]
    rows = [_compared(cpu, cpu_run, reference, check, package)]
    for backend in COMPARED:
        result, run = _attempt(model, package, backend, host, work, check, reference)
        rows.append(result if run is None else _compared(result, run, reference, check, package))
    return rows


def _attempt(model: str, package, backend: str, host, work: Path, check, reference=None):
    """(the row so far, the run) or (an absent or failed row, None)."""
    try:
        placement = place(backend, package, host, work)
    except Absent as e:
        return row(model, package.kind, backend, "absent", str(e)), None
    except Exception as e:  # noqa: BLE001 - an engine build that breaks is this row's
        log.debug("%s on %s", model, backend, exc_info=True)
        return row(model, package.kind, backend, "failed", one_line(e)), None
    facts: dict[str, Any] = {"choice": placement.reason}
    if placement.engine_build_s is not None:
        facts["engine_build_s"] = round(placement.engine_build_s, 1)
    try:
        run = check.run(placement, reference)
    except Exception as e:  # noqa: BLE001 - a backend that is here and breaks is this row's
        log.debug("%s on %s", model, backend, exc_info=True)
        return row(model, package.kind, backend, "failed", one_line(e), **facts), None
    if backend != "tensorrt" and run.providers[:1] != list(placement.providers[:1]):
        reason = (f"onnxruntime runs it on {run.providers}, not on {placement.providers[0]} "
                  "(the provider did not start; see onnxruntime's log)")
        return row(model, package.kind, backend, "failed", reason, **facts), None
    return row(model, package.kind, backend, "passed", providers=run.providers, **facts), run


def _compared(result: dict[str, Any], run, reference, check, package) -> dict[str, Any]:
    """The row with the comparison's numbers (and failed with the reason if it disagrees)."""
    numbers = dict(run.numbers)
    if run is reference:
        result["reference"] = True
        result["numbers"] = numbers
        return result
    arithmetic = check.arithmetic(ARITHMETIC[result["backend"]], package.manifest, run)
    compared, problems = check.compare(reference, run, arithmetic)
    result["numbers"] = {**compared, **numbers}
    if problems:
        result["status"] = "failed"
        result["reason"] = "; ".join(problems)
    return result


def _not_compared(model: str, kind: str, host) -> list[dict[str, Any]]:
    """The other backends' rows when there is no reference to compare them with."""
    return [row(model, kind, backend, "absent",
                box_missing(backend, host) or "not run: no onnxruntime CPU reference")
            for backend in COMPARED]

