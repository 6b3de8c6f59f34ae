"""Shared by the benchmark smoke tests: a short, light version of the reference clip."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.lib.clip import make_clip
from tests.conftest import require

# 4 s at 320x240, a keyframe every second: HLS segments of ~2 s, parts of ~0.3 s.
SMALL_CLIP_ARGS = [
    "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
    "-t", "4",
    "-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-b:v", "300k", "-pix_fmt", "yuv420p",
    "-c:a", "aac", "-b:a", "64k", "-ac", "2",
    "-f", "flv",
]  # fmt: skip


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require("ffmpeg")
    return make_clip(tmp_path_factory.mktemp("clip") / "small.flv", SMALL_CLIP_ARGS)
