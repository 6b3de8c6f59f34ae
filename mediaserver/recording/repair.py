"""Making every recording readable again after a crash: cut the torn tail, rebuild the segment index, and
report the file's facts so that the index (database) can follow the disk."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediaserver.recording import fileformat, layout

log = logging.getLogger("mediaserver.recording")


@dataclass(frozen=True, slots=True)
class FileFacts:
    path: str  # relative to the root
    header: dict[str, Any]
    size: int
    started_at: float
    ended_at: float
    checksum: str
    truncated_bytes: int
    segments: int

    @property
    def duration(self) -> float:
        return round(max(self.ended_at - self.started_at, 0.0), 3)


def recordings_under(root: Path) -> Iterator[str]:
    """Relative paths of the recording files under `root`, in the layout's order (by day, camera, start)."""
    if not root.is_dir():
        return
    for path in sorted(root.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/[0-9][0-9]/*/*.mp4")):
        if path.is_file() and not path.is_symlink():
            yield path.relative_to(root).as_posix()


def sha256_of(path: Path, length: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        remaining = length
        while remaining > 0:
            chunk = stream.read(min(remaining, 1 << 20))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def repair_file(root: Path, relative: str) -> FileFacts:
    """Truncate a recording after its last complete fragment and make its index match; blocking (a thread)."""
    path = layout.resolve(root, relative)
    header = fileformat.read_header(path)
    total = path.stat().st_size
    keep = fileformat.complete_length(path)
    if keep < total:
        with path.open("r+b") as stream:
            stream.truncate(keep)
            stream.flush()
            os.fsync(stream.fileno())
        log.warning("event=recording_repaired path=%s cut_bytes=%d", relative, total - keep)
    index_file = layout.index_path(path)
    entries = fileformat.read_index(index_file)
    covered = entries[-1].offset + entries[-1].size if entries else -1
    if covered != keep:
        anchor_wall = round(float(header["start"]) * 1000)
        entries = fileformat.rebuild_index(path, keep, anchor_wall, int(header["start_ms"]))
        temporary = index_file.with_name(index_file.name + ".tmp")
        temporary.write_text("".join(entry.line() for entry in entries))
        os.replace(temporary, index_file)
    started = float(header["start"])
    ended = entries[-1].end_wallclock if entries else started
    return FileFacts(relative, header, keep, started, ended, sha256_of(path, keep), total - keep, len(entries))
