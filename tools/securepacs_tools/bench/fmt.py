"""Formatting shared by the report's sections: figures with their spread, targets, Markdown tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from securepacs_tools.bench.model import stats


def mb(kb: int | float) -> float:
    return kb / 1024


def fmt_stats(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    s = stats(values)
    if s is None:
        return "failed"
    med, lo, hi = s
    return f"{fmt.format(med)} ({fmt.format(lo)}–{fmt.format(hi)})"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    status: str
    how: str


def ratio_target(name: str, how: str, values: list[float], limit: float, at_most: bool,
                 strict: bool = False) -> Target:
    """A target on the median of run-by-run ratios; ``strict``: the median must beat ``limit``, not equal it."""
    sign = ("<" if strict else "≤") if at_most else (">" if strict else "≥")
    goal = f"{sign} {limit:.2f}×"
    if not values:
        return Target(name, goal, "not measured", "not measured", how)
    med = statistics.median(values)
    margin = med - limit if not at_most else limit - med  # > 0: better than the limit
    ok = margin > 0 if strict else margin >= 0
    status = "met" if ok else f"missed by {abs(med - limit):.2f}×"
    return Target(name, goal, f"{med:.2f}× ({min(values):.2f}–{max(values):.2f})", status, how)
