"""The ABR ladder: rungs from the configuration (`"720p:1280x720:2500k"`), which of them a source gets, and the
names of the streams they are published as (`live/cam` -> `live/cam_720p`).

A source gets only the rungs below its own height: the original is the top rung as it comes (never re-encoded),
and nothing is ever upscaled. A rung whose configured shape differs from the source's (a 4:3 camera) keeps its
height and takes the source's aspect, so pictures are never stretched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_LADDER = ("1080p:1920x1080:5000k", "720p:1280x720:2500k", "480p:854x480:1000k")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_RUNG = re.compile(r"^([A-Za-z0-9]{1,16}):(\d{2,5})x(\d{2,5}):(\d+(?:\.\d+)?)([kKmM]?)$")
# Aspect differences below this are rounding (854x480 for 16:9), not another shape.
_ASPECT_TOLERANCE = 0.01


class LadderError(ValueError):
    """A ladder entry that cannot be used."""


@dataclass(frozen=True, slots=True)
class Rung:
    name: str
    width: int
    height: int
    # Video bits per second.
    bitrate: int

    def spec(self) -> str:
        return f"{self.name}:{self.width}x{self.height}:{self.bitrate // 1000}k"


def parse_rung(entry: str) -> Rung:
    """`name:WIDTHxHEIGHT:bitrate`, the bitrate in bit/s or with a k/M suffix."""
    match = _RUNG.match(entry.strip())
    if match is None:
        raise LadderError(f"a ladder rung looks like '720p:1280x720:2500k', not {entry!r}")
    name, width, height, amount, unit = match.groups()
    bitrate = int(float(amount) * {"": 1, "k": 1000, "m": 1_000_000}[unit.lower()])
    if not (16 <= int(width) <= 7680 and 16 <= int(height) <= 4320):
        raise LadderError(f"rung {name}: width and height must be within 16..7680 and 16..4320")
    if int(width) % 2 or int(height) % 2:
        raise LadderError(f"rung {name}: width and height must be even (4:2:0 video)")
    if not 50_000 <= bitrate <= 100_000_000:
        raise LadderError(f"rung {name}: bitrate must be within 50k..100M")
    return Rung(name, int(width), int(height), bitrate)


def parse_ladder(entries: list[str] | tuple[str, ...]) -> list[Rung]:
    """The rungs, tallest first; names must be unique."""
    rungs = [parse_rung(entry) for entry in entries]
    names = [rung.name for rung in rungs]
    if len(set(names)) != len(names):
        raise LadderError("ladder rung names must be unique")
    return sorted(rungs, key=lambda rung: rung.height, reverse=True)


def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def select_rungs(ladder: list[Rung], source_width: int, source_height: int) -> list[Rung]:
    """The rungs a source of this size gets (below its height; tallest first), sized to its aspect."""
    if source_width <= 0 or source_height <= 0:
        return []
    chosen: list[Rung] = []
    aspect = source_width / source_height
    for rung in ladder:
        if rung.height >= source_height:
            continue  # the original serves this height (or a smaller picture would be upscaled)
        width = rung.width
        if abs(rung.width / rung.height - aspect) > _ASPECT_TOLERANCE * aspect:
            width = min(_even(rung.height * aspect), source_width)
        chosen.append(Rung(rung.name, width, rung.height, rung.bitrate))
    return chosen


def rung_stream(name: str, rung: str) -> str:
    """The stream name a rung of `name` is published under."""
    return f"{name}_{rung}"


def split_rung_stream(name: str, rung_names: list[str] | tuple[str, ...]) -> tuple[str, str] | None:
    """`cam_720p` -> ("cam", "720p") when 720p is a rung of the ladder; None for any other name."""
    base, sep, rung = name.rpartition("_")
    if not sep or not base or rung not in rung_names:
        return None
    return base, rung
