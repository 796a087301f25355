"""Durations on the command line: ``30s``, ``2m``, ``7.3s`` or a plain number of seconds (``1500``).

Torch-free; shared by ``bmamba export --chunk`` and ``bmamba detect --chunk``. Frames and other units
are refused on purpose (DESIGN.md, "Command-line contract"): a number of frames depends on the model's
hop, a duration does not.
"""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-zA-Z]*)\s*$")
_SECONDS_PER_UNIT = {"": 1.0, "s": 1.0, "m": 60.0}


class DurationError(ValueError):
    """A duration that cannot be parsed; the message says what is accepted."""


def parse_duration(text: str | float | int, *, name: str = "duration") -> float:
    """Seconds in ``text``: ``"30s"`` -> 30.0, ``"2m"`` -> 120.0, ``"1500"`` -> 1500.0 (plain = seconds).

    Numbers (int/float) pass through as seconds. Raises DurationError for other units (frames, hours,
    ms), for zero, negative, non-finite or malformed values, naming ``name`` (e.g. ``"--chunk"``).
    """
    hint = "use seconds or minutes, e.g. 30s, 2m, or a plain number of seconds such as 1500"
    if isinstance(text, bool):
        raise DurationError(f"{name}: {text!r} is not a duration; {hint}")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if match is None:
            raise DurationError(f"{name}: {text!r} is not a duration; {hint}")
        unit = match["unit"].lower()
        if unit not in _SECONDS_PER_UNIT:
            extra = " (frames are not accepted)" if unit in ("f", "fr", "frame", "frames") else ""
            raise DurationError(f"{name}: unit {match['unit']!r} in {text!r} is not accepted{extra}; {hint}")
        seconds = float(match["number"]) * _SECONDS_PER_UNIT[unit]
    if not math.isfinite(seconds) or seconds <= 0:
        raise DurationError(f"{name}: {text!r} must be a positive duration; {hint}")
    return seconds
