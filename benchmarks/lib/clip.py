"""The test clip: the reference clip of /work/shared/bench/README.md, made once with ffmpeg and cached,
and its FLV tags as the RTMP messages a looping encoder sends (`Clip`), pre-chunked per loop (`EncodedClip`).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from benchmarks.lib.flvfile import TAG_AUDIO, TAG_SCRIPT, TAG_VIDEO, FlvTag, read_flv
from mediaserver.formats.flv import FlvError, parse_audio, parse_video
from mediaserver.rtmp.amf import encode_amf0
from mediaserver.rtmp.chunk import encode_message

DEFAULT_CLIP = Path(__file__).resolve().parents[1] / ".cache" / "clip.flv"

# The encoding arguments of the reference workload, verbatim; only the output path is ours.
REFERENCE_ARGS = [
    "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
    "-t", "20",
    "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-b:v", "2M", "-pix_fmt", "yuv420p",
    "-c:a", "aac", "-b:a", "128k", "-ac", "2",
    "-f", "flv",
]  # fmt: skip

CHUNK_SIZE = 4096
MEDIA_STREAM_ID = 1
CSID_VIDEO, CSID_AUDIO, CSID_DATA = 6, 4, 5
_CSID = {TAG_VIDEO: CSID_VIDEO, TAG_AUDIO: CSID_AUDIO, TAG_SCRIPT: CSID_DATA}


def make_clip(out: Path, args: list[str] | None = None) -> Path:
    """Run ffmpeg with `args` (default: the reference workload) into `out`, atomically."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is not installed")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    command = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", *(args or REFERENCE_ARGS), str(partial)]
    try:
        subprocess.run(command, check=True, stdin=subprocess.DEVNULL, timeout=600)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


def ensure_clip(path: Path | None = None, force: bool = False) -> Path:
    """The reference clip at `path` (default benchmarks/.cache/clip.flv), made if missing."""
    target = path or DEFAULT_CLIP
    if force or not target.exists():
        print(f"making the reference clip {target} ...", file=sys.stderr, flush=True)
        make_clip(target)
    return target


@dataclass(frozen=True, slots=True)
class ClipMessage:
    """One tag of the clip as an RTMP message."""

    csid: int
    type_id: int  # the FLV tag type: 8 audio, 9 video, 18 data (here with "@setDataFrame" in front)
    timestamp: int  # ms
    payload: bytes
    config: bool  # metadata or a sequence header: sent once, before the media
    media_offset: int  # where the codec's own data starts in `payload` (5 for legacy AVC video)


class Clip:
    """The clip's tags as the messages a looping encoder sends: metadata, sequence headers, then media.

    Tags that carry no media (end of sequence: a looping encoder never sends it mid-stream) and tags our
    FLV parser refuses are left out. `duration_ms` is one loop: the last timestamp plus a frame interval
    (the median gap between video frames), so that loop k's media is sent at k * duration_ms + timestamp.
    """

    def __init__(self, tags: list[FlvTag]) -> None:
        if not any(tag.type == TAG_VIDEO for tag in tags):
            raise ValueError("the clip has no video")
        self.messages: list[ClipMessage] = []
        for tag in tags:
            if tag.type not in _CSID:
                continue
            if tag.type == TAG_SCRIPT:
                payload = encode_amf0("@setDataFrame") + tag.body
                self.messages.append(ClipMessage(CSID_DATA, tag.type, tag.timestamp, payload, True, 0))
                continue
            try:
                packet = (parse_video if tag.type == TAG_VIDEO else parse_audio)(tag.body, tag.timestamp)
            except FlvError:
                packet = None
            if packet is not None:
                message = ClipMessage(
                    _CSID[tag.type], tag.type, tag.timestamp, tag.body, packet.is_config, packet.offset
                )
                self.messages.append(message)
        self.media = [m for m in self.messages if not m.config]
        video_times = [tag.timestamp for tag in tags if tag.type == TAG_VIDEO]
        gaps = sorted(b - a for a, b in itertools.pairwise(video_times) if b > a) or [33]
        frame_gap = gaps[len(gaps) // 2]
        self.duration_ms = max(tag.timestamp for tag in tags) + frame_gap
        self.bitrate_bps = sum(len(m.payload) for m in self.media) * 8 / (self.duration_ms / 1000)

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls(read_flv(path))


class EncodedClip(Clip):
    """The clip as RTMP chunks (chunk size 4096, message stream 1), one encoding per loop shared by every
    publisher.

    Loop 0 carries everything (metadata, sequence headers, media); later loops carry only media, with
    timestamps moved forward by the clip's duration per loop, as a continuous encoder would send them.
    """

    def __init__(self, tags: list[FlvTag]) -> None:
        super().__init__(tags)
        self.first_offsets = self._offsets(self.messages)
        self.rest_offsets = self._offsets(self.media)
        self._cache: dict[int, list[bytes]] = {}

    @staticmethod
    def _offsets(messages: list[ClipMessage]) -> list[float]:
        """Send times in seconds from the loop's start, never decreasing."""
        offsets: list[float] = []
        latest = 0
        for message in messages:
            latest = max(latest, message.timestamp)
            offsets.append(latest / 1000)
        return offsets

    def loop(self, index: int) -> list[bytes]:
        """The chunks of loop `index` (made on first use, the older ones forgotten)."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        shift = index * self.duration_ms
        messages = self.messages if index == 0 else self.media
        encoded = [
            encode_message(m.csid, m.type_id, MEDIA_STREAM_ID, m.timestamp + shift, m.payload, CHUNK_SIZE)
            for m in messages
        ]
        self._cache[index] = encoded
        for old in [k for k in self._cache if k < index - 1]:
            del self._cache[old]
        return encoded

    def offsets(self, index: int) -> list[float]:
        return self.first_offsets if index == 0 else self.rest_offsets
