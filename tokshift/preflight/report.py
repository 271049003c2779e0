"""The preflight report: every check with its result and fix, the price of each model, the zoo total.

Written as `preflight.json` (for tools, and for the plan's projected runtimes) and `preflight.md`
(for people). The static checks come first: when one fails, the report holds them alone and no
probe job is submitted.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tokshift.preflight.price import ModelPrice
from tokshift.preflight.probe import Check

__all__ = ["duration", "render_markdown", "write_report"]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def duration(hours: float | None) -> str:
    """`3 d 04 h`, `5 h 07 min`, `2 min 31 s`: a wall time at the precision that matters for it."""
    if hours is None:
        return "–"
    seconds = round(hours * 3600)
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600:02d} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s"


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# Preflight of `{report['dataset']}`", ""]
    failed = [c for c in report["checks"] if not c["ok"]]
    lines.append(
        f"**{len(report['checks'])} checks, {len(failed)} failed.**"
        + (" Fix these before submitting the zoo:" if failed else " The cluster path works.")
    )
    lines.append("")
    for c in failed:
        lines.append(f"- **{c['name']}**: {c['detail']}. Fix: {c['fix']}")
    if failed:
        lines.append("")
    lines += ["## Checks", "", "| check | result | detail |", "|---|---|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['name']} | {'ok' if c['ok'] else 'FAILED'} | {c['detail']} |")
    prices = report.get("prices") or []
    if prices:
        note = report.get("measured_on", "")
        lines += [
            "",
            "## Price",
            "",
            f"Projected from short jobs of each shape{f' ({note})' if note else ''}: optimizer steps of the whole "
            "recipe times the measured step time (the loader's time where it cannot keep up), plus the per-epoch "
            "1-view check; evaluation: validation videos times the measured seconds per 30-view video.",
            "",
            "| model | GPUs | global batch | steps | s/step | training | train GPU-h | evaluation | eval GPU-h "
            "| peak memory GiB | device GiB | largest batch/GPU | loader keeps up |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in prices:
            lines.append(
                f"| {p['model']} | {p['gpus']} | {p['global_batch']} | {p['steps']} | {_fmt(p['step_seconds'], 3)} "
                f"| {duration(p['train_hours'])} | {_fmt(p['train_gpu_hours'], 1)} | {duration(p['evaluate_hours'])} "
                f"| {_fmt(p['evaluate_gpu_hours'], 1)} | {_fmt(p['peak_memory_gib'])} | {_fmt(p['device_memory_gib'])} "
                f"| {p['largest_batch'] if p['largest_batch'] is not None else '–'} "
                f"| {'–' if p['loader_keeps_up'] is None else ('yes' if p['loader_keeps_up'] else 'NO')} |"
            )
        total = report["total"]
        lines += [
            "",
            f"**Zoo total:** {duration(total['train_hours'])} of training ({total['train_gpu_hours']:.1f} GPU-hours) "
            f"and {duration(total['evaluate_hours'])} of evaluation ({total['evaluate_gpu_hours']:.1f} GPU-hours), "
            "one model after another; jobs that run side by side take less wall time.",
        ]
    return "\n".join(lines) + "\n"


def write_report(
    dataset: str, checks: list[Check], prices: list[ModelPrice], json_path: Path, md_path: Path, measured_on: str = ""
) -> dict[str, Any]:
    from tokshift.fileio import atomic_write_text

    price_dicts = [p.as_dict() for p in prices]
    total = {
        key: sum(p[key] or 0.0 for p in price_dicts)
        for key in ("train_hours", "train_gpu_hours", "evaluate_hours", "evaluate_gpu_hours")
    }
    report = {
        "dataset": dataset,
        "ok": all(c.ok for c in checks),
        "checks": [asdict(c) for c in checks],
        "prices": price_dicts,
        "total": total,
        "measured_on": measured_on,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    return report
