"""Swap-probability schedules p(t): the chance that a student unit is replaced by its teacher unit.

t is training progress in [0, 1], counted in steps. Every family starts at ``p0`` at ``t_start`` (0 by default:
before it, a warm-up in which the student trains alone) and is 0 from ``t_end`` on, after which the student trains
alone again; u = (t - t_start) / (t_end - t_start) is the progress through the swapping phase:

- ``constant``:    p0 until t_end.
- ``linear``:      p0 -> 0 linearly at t_end (Theseus's curriculum: p0 = 1 - b, t_end = (1 - b) / k).
- ``cosine``:      half a cosine from p0 to 0 at t_end.
- ``exponential``: p0 * (exp(-rate u) - exp(-rate)) / (1 - exp(-rate)); larger ``rate`` drops faster.
- ``step``:        p0 halved every ``interval`` of progress after t_start, until t_end.

A depth ``profile`` scales p per unit: ``uniform`` (all p), ``shallow-first`` (unit i of n gets p (n - i) / n),
``deep-first`` (p (i + 1) / n). All families are non-increasing in t after t_start and every value lies in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from iakd.errors import ConfigError

__all__ = ["FAMILIES", "PROFILES", "SwapSchedule", "build"]

# Each family's own optional keys, with their defaults.
FAMILIES: dict[str, dict[str, float]] = {
    "constant": {},
    "linear": {},
    "cosine": {},
    "exponential": {"rate": 5.0},
    "step": {"interval": 0.25},
}
PROFILES: tuple[str, ...] = ("uniform", "shallow-first", "deep-first")
_REQUIRED = ("family", "p0", "t_end")
OPTIONAL: dict[str, object] = {"profile": "uniform", "t_start": 0.0}  # keys every family takes, with their defaults
_EXTRAS = frozenset(key for keys in FAMILIES.values() for key in keys)  # the keys only some families take


@dataclass(frozen=True)
class SwapSchedule:
    """A validated schedule, and the run config's ``schedule`` section as it is typed: the keys every family takes,
    and each family's own keys (``rate``: exponential, ``interval``: step), None for a family that does not take
    them. Build it from a mapping with :func:`build`, which names the key of any bad value."""

    family: str = "linear"
    p0: float = 0.5
    t_end: float = 0.8
    profile: str = "uniform"
    rate: float | None = None  # exponential only (default FAMILIES["exponential"]["rate"])
    interval: float | None = None  # step only (default FAMILIES["step"]["interval"])
    t_start: float = 0.0

    def ended(self, t: float) -> bool:
        """True when p is 0 from progress t on: the student trains alone for the rest of the run (the handover)."""
        return t >= self.t_end or self.p0 == 0.0

    def __call__(self, t: float) -> float:
        """The swap probability at progress t (clamped into [0, 1]), before the depth profile."""
        t = min(max(float(t), 0.0), 1.0)
        if t >= self.t_end or t < self.t_start:
            return 0.0
        u = (t - self.t_start) / (self.t_end - self.t_start)
        if self.family == "constant":
            return self.p0
        if self.family == "linear":
            return self.p0 * (1.0 - u)
        if self.family == "cosine":
            return self.p0 * 0.5 * (1.0 + math.cos(math.pi * u))
        if self.family == "exponential":
            rate = FAMILIES["exponential"]["rate"] if self.rate is None else self.rate
            floor = math.exp(-rate)
            return self.p0 * (math.exp(-rate * u) - floor) / (1.0 - floor)
        interval = FAMILIES["step"]["interval"] if self.interval is None else self.interval
        return self.p0 * 0.5 ** math.floor((t - self.t_start) / interval + 1e-9)  # step

    def unit_probs(self, t: float, num_units: int) -> list[float]:
        """Per-unit probabilities at progress t: p(t) scaled by the depth profile."""
        p = self(t)
        n = num_units
        if self.profile == "shallow-first":
            return [p * (n - i) / n for i in range(n)]
        if self.profile == "deep-first":
            return [p * (i + 1) / n for i in range(n)]
        return [p] * n


def _number(spec: Mapping[str, Any], key: str, prefix: str) -> float:
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{prefix}.{key}: {value!r} is not a finite number")
    return float(value)


def build(spec: Mapping[str, Any], *, prefix: str = "schedule") -> SwapSchedule:
    """Validate a spec such as ``{"family": "linear", "p0": 0.5, "t_end": 0.8}`` and build its schedule.

    Errors name the key (``schedule.p0: 1.5 is outside [0, 1]``), so a config typo is found at the door.
    """
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping with keys {', '.join(_REQUIRED)}, got {spec!r}")
    # A family key set to null is as if absent: the typed config holds None where its family takes no such key.
    spec = {key: value for key, value in spec.items() if not (key in _EXTRAS and value is None)}
    for key in _REQUIRED:
        if key not in spec:
            raise ConfigError(f"{prefix}.{key}: missing (required: {', '.join(_REQUIRED)})")
    family = spec["family"]
    if family not in FAMILIES:
        raise ConfigError(f"{prefix}.family: {family!r} is unknown; known: {', '.join(FAMILIES)}")
    allowed = {*_REQUIRED, *OPTIONAL, *FAMILIES[family]}
    for key in spec:
        if key not in allowed:
            raise ConfigError(
                f"{prefix}.{key}: not a key of the {family!r} family; allowed: {', '.join(sorted(allowed))}")
    p0 = _number(spec, "p0", prefix)
    if not 0.0 <= p0 <= 1.0:
        raise ConfigError(f"{prefix}.p0: {p0} is outside [0, 1]")
    t_end = _number(spec, "t_end", prefix)
    if not 0.0 < t_end <= 1.0:
        raise ConfigError(f"{prefix}.t_end: {t_end} is outside (0, 1]")
    t_start = _number(spec, "t_start", prefix) if "t_start" in spec else 0.0
    if not 0.0 <= t_start < t_end:
        raise ConfigError(f"{prefix}.t_start: {t_start} is outside [0, t_end) = [0, {t_end}): swapping must start "
                          "before it ends")
    profile = spec.get("profile", "uniform")
    if profile not in PROFILES:
        raise ConfigError(f"{prefix}.profile: {profile!r} is unknown; known: {', '.join(PROFILES)}")
    extras: dict[str, Any] = {key: _number(spec, key, prefix) if key in spec else default
                              for key, default in FAMILIES[family].items()}
    if extras.get("rate", 1.0) <= 0:
        raise ConfigError(f"{prefix}.rate: {extras['rate']} must be > 0")
    if not 0.0 < extras.get("interval", 0.5) <= 1.0:
        raise ConfigError(f"{prefix}.interval: {extras['interval']} is outside (0, 1]")
    return SwapSchedule(family, p0, t_end, profile, t_start=t_start, **extras)
