"""How the report writes numbers, in the page, the figures and the terminal alike."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "usd":  # sub-cent amounts (CPU demos, per-second costs) keep their digits
        return f"${value:,.6f}" if abs(value) < 0.01 else f"${value:,.4f}" if abs(value) < 10 else f"${value:,.2f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "num":
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if kind == "hours":
        return f"{value:,.4f}" if value < 1 else f"{value:,.2f}"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "db":
        return f"{value:.1f} dB"
    if kind == "duration":
        minutes, seconds = divmod(float(value), 60)
        hours, minutes = divmod(int(minutes), 60)
        return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:04.1f}s" if minutes else f"{seconds:.1f}s"
    return str(value)
