"""Make the reference clip of /work/shared/bench/README.md once and cache it (`benchmarks.lib.clip`).

python -m benchmarks.clip [--out PATH] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.lib.clip import DEFAULT_CLIP, ensure_clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--force", action="store_true", help="make it again even if it exists")
    args = parser.parse_args(argv)
    print(ensure_clip(args.out, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
