"""Section ``devices``: data-parallel throughput on forced host devices (bench.scaling)."""

from __future__ import annotations

from typing import Any

from bench.benchmark.common import Context
from bench.benchmark.config import Config


def measure(cfg: Config, ctx: Context | None = None) -> dict[str, Any]:
    """``scaling.measure_scaling`` for cfg.devices, with its Markdown table (or why not)."""
    try:
        from bench import scaling
    except Exception as err:
        return {"status": "skipped", "reason": f"bench.scaling not importable: {err}"}
    measured = scaling.measure_scaling(devices=cfg.devices, small=cfg.small)
    errors = {d: r["error"] for d, r in measured.get("runs", {}).items() if "error" in r}
    out: dict[str, Any] = {"status": "ok", "devices": list(cfg.devices), "measured": measured}
    if errors:
        out["errors"] = errors
    try:
        out["markdown"] = scaling.markdown(measured)
    except Exception as err:  # rendering is theirs; the numbers are still in "measured"
        out["markdown"] = f"(bench.scaling.markdown failed: {err})"
    return out
