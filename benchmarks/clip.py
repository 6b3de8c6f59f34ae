"""The reference clip of /work/shared/bench/README.md, made once with ffmpeg and cached.

python -m benchmarks.clip [--out PATH] [--force]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_CLIP = Path(__file__).resolve().parent / ".cache" / "clip.flv"

# The encoding arguments of the reference workload, verbatim; only the output path is ours.
REFERENCE_ARGS = [
    "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
    "-t", "20",
    "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-b:v", "2M", "-pix_fmt", "yuv420p",
    "-c:a", "aac", "-b:a", "128k", "-ac", "2",
    "-f", "flv",
]  # fmt: skip


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--force", action="store_true", help="make it again even if it exists")
    args = parser.parse_args(argv)
    print(ensure_clip(args.out, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
