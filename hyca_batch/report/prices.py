"""What a device-hour costs: built-in per-hour defaults, overridable by a file or on the command line.

Records name the device they ran on (``device_name``, e.g. "NVIDIA H100 80GB HBM3", or "cpu"); a price
applies to every device whose name contains its key (case-insensitive), the longest key winning, so
"A100 80GB" beats "A100" and "H100 NVL" beats "H100".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

#: USD per device-hour: indicative on-demand cloud prices per GPU (late 2025, rounded), and per CPU core for
#: CPU-only runs (the demo). Your contract differs: pass ``--gpu-price NAME=USD`` or ``--prices FILE``.
DEFAULT_PRICES: dict[str, float] = {
    "B200": 6.00,
    "H200": 3.80,
    "H100": 3.00,
    "H100 NVL": 3.20,
    "GH200": 3.20,
    "A100 80GB": 1.80,
    "A100": 1.30,
    "L40S": 1.10,
    "L40": 1.00,
    "A10G": 1.00,
    "A10": 0.75,
    "L4": 0.80,
    "V100": 0.90,
    "T4": 0.35,
    "cpu": 0.05,
}


class PriceError(ValueError):
    """No price for a device, or a price that cannot be read; the message says how to give one."""


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    overridden: frozenset[str] = frozenset()

    @classmethod
    def build(cls, file: str | Path | None = None, overrides: list[str] | None = None) -> PriceTable:
        """The defaults, then a JSON file (``{"H100": 2.49, ...}``), then ``NAME=USD`` overrides."""
        prices, changed = dict(DEFAULT_PRICES), set()
        if file is not None:
            try:
                given = json.loads(Path(file).read_text())
            except (OSError, ValueError) as exc:
                raise PriceError(f"price file {file}: {exc}") from exc
            if not isinstance(given, dict):
                raise PriceError(f'price file {file}: expected a JSON object like {{"H100": 2.49}}')
            for name, value in given.items():
                _set(prices, str(name), _price(value, f"price file {file}, key {name!r}"))
                changed.add(str(name))
        for item in overrides or []:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise PriceError(f"--gpu-price {item!r}: expected NAME=USD_PER_HOUR, e.g. H100=2.49")
            _set(prices, name.strip(), _price(value, f"--gpu-price {item!r}"))
            changed.add(name.strip())
        return cls(prices, frozenset(changed))

    def lookup(self, device_name: str) -> tuple[str, float]:
        """(matching key, USD per device-hour) for a device name."""
        lowered = device_name.lower()
        matches = [k for k in self.prices if k.lower() in lowered]
        if not matches:
            raise PriceError(
                f"no price for device {device_name!r}; give one with --gpu-price '{device_name}=USD_PER_HOUR' "
                f"(known: {', '.join(sorted(self.prices))})"
            )
        key = max(matches, key=len)
        return key, self.prices[key]


def _set(prices: dict[str, float], name: str, price: float) -> None:
    """A given price replaces the one of the same name in any case: "h100" overrides "H100"."""
    for key in [k for k in prices if k.lower() == name.lower()]:
        del prices[key]
    prices[name] = price


def _price(value: object, where: str) -> float:
    try:
        price = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PriceError(f"{where}: {value!r} is not a number of USD per hour") from None
    if not price >= 0:
        raise PriceError(f"{where}: a price must be >= 0, not {value!r}")
    return price
