"""Where recordings live: `<root>/<yyyy>/<mm>/<dd>/<camera>/<start>.mp4`, in UTC, and the checks that keep every
path a client names inside the root.

Only 4-digit year folders at the top of a root hold recordings; the hot root also holds `thumbnails/` (see
`thumbnails.py`), which no year can be named, so no camera name can clash with it."""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path, PurePosixPath

SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
INDEX_SUFFIX = ".idx"


class LayoutError(ValueError):
    """A path that would leave the recording root, or a name that cannot be a folder."""


def stream_folder(app: str, name: str, default_app: str = "live") -> str:
    """The `<camera>` folder of a stream: the camera id (its name) in the cameras' app, else `app.name`.

    Names that are not safe as one path component are replaced by a stable hash of them."""
    folder = name if app == default_app else f"{app}.{name}"
    if SAFE_COMPONENT.match(folder) and ".." not in folder:
        return folder
    return "s-" + hashlib.sha256(f"{app}/{name}".encode()).hexdigest()[:20]


def start_stamp(wallclock: float) -> str:
    """`20261201T200159.123Z`: sorts as time does, and names one file per millisecond."""
    whole = int(wallclock)
    millis = round((wallclock - whole) * 1000) % 1000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(whole)) + f".{millis:03d}Z"


def relative_path(folder: str, wallclock: float) -> str:
    day = time.strftime("%Y/%m/%d", time.gmtime(int(wallclock)))
    return f"{day}/{folder}/{start_stamp(wallclock)}.mp4"


def resolve(root: Path, relative: str) -> Path:
    """The absolute path of a recording named relative to `root`; refuses anything that leaves it."""
    pure = PurePosixPath(relative)
    if pure.is_absolute() or not relative or "\\" in relative or "\x00" in relative:
        raise LayoutError("not a relative recording path")
    if any(part in ("", ".", "..") for part in relative.split("/")):
        raise LayoutError("path components '.', '..' and empty ones are refused")
    base = root.resolve()
    target = (base / pure).resolve()
    if base != target and base not in target.parents:
        raise LayoutError("path leaves the recording root")
    return target


def index_path(mp4: Path) -> Path:
    return mp4.with_name(mp4.name + INDEX_SUFFIX)
