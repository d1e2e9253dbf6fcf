"""The selftest's report: one row per (model, backend), the kernel checks, a summary;
as JSON and as a short table whose reasons are footnotes, each said once."""

from __future__ import annotations

from collections import Counter
from typing import Any

STATUSES = ("passed", "failed", "absent")


def row(model: str, kind: str, backend: str, status: str, reason: str | None = None,
        **facts: Any) -> dict[str, Any]:
    """{"model", "kind", "backend", "status"[, "reason"], ...facts}."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    result: dict[str, Any] = {"model": model, "kind": kind, "backend": backend,
                              "status": status}
    if reason is not None:
        result["reason"] = reason
    return {**result, **facts}


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Counts of rows by status, and the result: "failed" when a row, the kernel checks
    or the packages' own export verification failed; else "passed" when something ran,
    "nothing ran" when all was absent (absent is not a failure)."""
    counts = Counter(r["status"] for r in report["rows"])
    failed = (counts["failed"] + (report["kernels"]["status"] == "failed")
              + ("failed" in report["packages"]))
    ran = counts["passed"] + (report["kernels"]["status"] == "passed")
    return {**{status: counts[status] for status in STATUSES},
            "kernels": report["kernels"]["status"],
            "result": "failed" if failed else "passed" if ran else "nothing ran"}


# ---- the human form ----------------------------------------------------------------------
def _numbers(r: dict[str, Any]) -> str:
    n = r.get("numbers", {})
    if r["kind"] == "llm":
        speed = f"decode {n['decode_tokens_per_s']:.0f} tok/s" if "decode_tokens_per_s" in n \
            else ""
        if r.get("reference"):
            return f"reference; {speed}"
        if "max_abs_logit_diff" not in n:
            return speed
        tokens = "tokens equal" if n["greedy_tokens_match"] else "tokens differ"
        return (f"logits {n['max_abs_logit_diff']:.1e} (tol {n['logit_tolerance']:.0e}), "
                f"{tokens}; {speed}")
    speed = ", ".join(f"{v:.0f} img/s @{k.rsplit('_', 1)[1]}" for k, v in n.items()
                      if k.startswith("images_per_s_batch_"))
    if "max_abs_probability_diff" not in n:
        return speed
    return (f"probs {n['max_abs_probability_diff']:.1e} (tol {n['probability_tolerance']:.0e}, "
            f"{n['execution']}), top-1 {n['top1_agreement']:.0%}; {speed}")


def format_report(report: dict[str, Any]) -> str:
    machine, packages = report["machine"], report["packages"]
    lines = [f"e2edge {report['e2edge']} selftest on {_machine(machine)}"]
    notes: list[str] = []

    def note(reason: str) -> str:
        if reason not in notes:
            notes.append(reason)
        return f"({notes.index(reason) + 1})"

    if "absent" in packages or "failed" in packages:
        status = "absent" if "absent" in packages else "FAILED"
        lines.append(f"packages: {status} {note(packages.get('absent') or packages['failed'])}")
    elif packages["source"] == "built":
        lines.append(f"packages: built in {packages['build_seconds']} s "
                     f"({len(packages['paths'])} packages)")
    else:
        lines.append(f"packages: {len(packages['paths'])} from {packages['source']}")
    width = max([len(r["model"]) for r in report["rows"]] + [7])
    lines.append(f"{'model':{width}}  {'backend':16}  {'status':6}  result")
    for r in report["rows"]:
        detail = _numbers(r) if r["status"] == "passed" else note(r["reason"])
        lines.append(f"{r['model']:{width}}  {r['backend']:16}  {r['status']:6}  {detail}")
    kernels = report["kernels"]
    detail = (f"{kernels['passed']}/{kernels['total']} cases" if kernels["status"] == "passed"
              else note(kernels["reason"]))
    lines.append(f"{'kernels':{width}}  {'cuda':16}  {kernels['status']:6}  {detail}")
    lines += [f"({i}) {reason}" for i, reason in enumerate(notes, 1)]
    s = report["summary"]
    lines.append(f"{s['passed']} passed, {s['failed']} failed, {s['absent']} absent: "
                 f"{s['result']}")
    return "\n".join(lines)


def _machine(m: dict[str, Any]) -> str:
    gpu = m["gpu"]["name"] if m["gpu"]["present"] else "no GPU"
    ort = m["onnxruntime"]
    ort_text = (f"onnxruntime {ort['version']}" if ort["available"] else "no onnxruntime")
    trt = m["tensorrt"]
    trt_text = f"TensorRT {trt['version']}" if trt["available"] else "no TensorRT"
    return f"{m['cpu']['model']} ({m['cpu']['cores']} cores), {gpu}, {ort_text}, {trt_text}"
