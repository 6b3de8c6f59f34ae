"""The `mediaserver` command."""

from __future__ import annotations

import argparse
import asyncio
import sys

from mediaserver.config import ConfigError, load_config
from mediaserver.logs import setup_logging


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_serve(args: argparse.Namespace) -> int:
    from mediaserver.app import MediaServer, prepare_machine
    from mediaserver.cluster.role import WorkerRole
    from mediaserver.cluster.supervisor import Supervisor

    try:
        config = load_config(args.config)
        if args.workers is not None:
            config.cluster.workers = args.workers
            config.validate()
    except ConfigError as exc:
        print(f"mediaserver: configuration error: {exc}", file=sys.stderr)
        return 2
    # A worker started by its parent, the parent of several workers, or one lone process.
    role = WorkerRole.from_environ()
    setup_logging(config.server.log_level, config.server.log_format, role.index if role is not None else None)
    _install_uvloop()
    from control.store import StoreError

    workers = config.worker_count()
    try:
        if role is not None:
            asyncio.run(MediaServer(config, role=role).run_forever())
        elif workers > 1:
            return asyncio.run(Supervisor(config, args.config, workers, prepare_machine).run())
        else:
            asyncio.run(MediaServer(config).run_forever())
    except (ConfigError, StoreError) as exc:
        print(f"mediaserver: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.config)
    except ConfigError as exc:
        print(f"mediaserver: configuration error: {exc}", file=sys.stderr)
        return 2
    print("configuration ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mediaserver", description="RTMP/HLS/WebRTC media server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--config", "-c", help="TOML configuration file (default: embedded defaults)")
    serve.add_argument(
        "--workers", type=int, help="worker processes sharing the ports (0: one per core; default: cluster.workers)"
    )
    serve.set_defaults(func=cmd_serve)
    check = commands.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("--config", "-c", help="TOML configuration file")
    check.set_defaults(func=cmd_check_config)
    from control.cli import add_control_commands

    add_control_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
