"""Test media for the HLS tests: a clip made by real ffmpeg, and what real ffprobe decodes of served bytes."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require


def make_clip(path: Path, seconds: int) -> Path:
    """An FLV of testsrc2 640x360 at 25 fps (H.264, a keyframe a second) and a 48 kHz sine (AAC)."""
    subprocess.run(
        [
            require("ffmpeg"), "-v", "error",
            "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "1500k", "-g", "25",
            "-c:a", "aac", "-b:a", "96k",
            "-f", "flv", str(path),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    return path


def decoded_frames(media: Path) -> tuple[list[str], list[str]]:
    """ffprobe's (codec, frames read) for the video and the audio stream of `media`; it must decode cleanly."""
    probe = subprocess.run(
        [require("ffprobe"), "-v", "error", "-count_frames", "-show_entries", "stream=codec_name,nb_read_frames",
         "-of", "csv=p=0", str(media)],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert probe.returncode == 0 and not probe.stderr.strip(), probe.stderr
    video, audio = (line.split(",") for line in probe.stdout.split())
    return video, audio
