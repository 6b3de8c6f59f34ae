"""Control-plane sub-commands of `mediaserver`: migrate, user create, camera add."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import select

from control.api.cameras import new_camera, publish_url_for
from control.api.schemas import CameraCreate, normalised_email
from control.api.users import create_user
from control.audit import Actor, Audit
from control.rbac import Role
from control.security import PasswordHasher
from control.store import Store, StoreError, User
from mediaserver.config import Config, ConfigError, load_config

CLI_ACTOR = Actor(None, "cli", "")


def _fail(message: str, code: int = 1) -> int:
    print(f"mediaserver: {message}", file=sys.stderr)
    return code


async def open_store(config: Config, migrate: bool | None = None) -> Store:
    store = Store.from_config(config)
    try:
        if migrate or (migrate is None and (store.is_sqlite or config.database.auto_migrate)):
            await store.migrate()
        else:
            await store.check_schema()
    except BaseException:
        await store.close()
        raise
    return store


def _run(args: argparse.Namespace, work: Callable[[Config], Coroutine[Any, Any, int]]) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    try:
        return asyncio.run(work(config))
    except (StoreError, ConfigError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"database unreachable: {exc}")


def cmd_migrate(args: argparse.Namespace) -> int:
    async def work(config: Config) -> int:
        store = Store.from_config(config)
        try:
            revision = await store.migrate()
        finally:
            await store.close()
        print(f"database {store.safe_url} is at revision {revision}")
        return 0

    return _run(args, work)


def _read_password(args: argparse.Namespace) -> str:
    if args.password:
        return str(args.password)
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise ConfigError("the passwords differ")
    return first


def cmd_user_create(args: argparse.Namespace) -> int:
    async def work(config: Config) -> int:
        password = _read_password(args)
        if len(password) < config.auth_api.min_password_length:
            return _fail(f"the password needs at least {config.auth_api.min_password_length} characters")
        auth = config.auth_api
        hasher = PasswordHasher(auth.argon2_time_cost, auth.argon2_memory_kib, auth.argon2_parallelism)
        store = await open_store(config)
        try:
            async with store.sessions.begin() as session:
                username = args.username.strip().lower()
                if await session.scalar(select(User.id).where(User.username == username)) is not None:
                    return _fail(f"user {username!r} exists")
                email = None
                if args.email:
                    try:
                        email = normalised_email(args.email)
                    except ValueError as exc:
                        return _fail(f"--email: {exc}")
                    if await session.scalar(select(User.id).where(User.email == email)) is not None:
                        return _fail("another user has that email address")
                user = await create_user(session, hasher, username, password, Role(args.role), email)
                Audit(store).add(session, "user.create", CLI_ACTOR, "user", str(user.id), details={"role": user.role})
        finally:
            await store.close()
        print(f"created {user.role} {user.username} (id {user.id})")
        return 0

    return _run(args, work)


def cmd_camera_add(args: argparse.Namespace) -> int:
    async def work(config: Config) -> int:
        fields = CameraCreate(
            name=args.name,
            company=args.company,
            vendor=args.vendor,
            model=args.model,
            serial_number=args.serial,
            location=args.location,
            private=not args.public,
            source_url=args.source_url,
        )
        store = await open_store(config)
        try:
            async with store.sessions.begin() as session:
                camera = new_camera(fields)
                session.add(camera)
                Audit(store).add(
                    session, "camera.create", CLI_ACTOR, "camera", camera.id, details={"name": camera.name}
                )
        finally:
            await store.close()
        print(f"camera {camera.name!r} id {camera.id}")
        print(f"stream key: {camera.stream_key}")
        print(f"publish URL: {publish_url_for(config, '', camera.stream_key)}")
        if config.auth.publish_mode != "database":
            print(
                f'note: auth.publish_mode is {config.auth.publish_mode!r}; set it to "database" '
                "(MEDIASERVER_AUTH_PUBLISH_MODE=database) so only camera keys may publish",
                file=sys.stderr,
            )
        return 0

    return _run(args, work)


def add_control_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    migrate = commands.add_parser("migrate", help="create or upgrade the control-plane database schema")
    migrate.add_argument("--config", "-c", help="TOML configuration file")
    migrate.set_defaults(func=cmd_migrate)

    user = commands.add_parser("user", help="manage users")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    create = user_commands.add_parser("create", help="create a user (the password is read from stdin or a prompt)")
    create.add_argument("--config", "-c", help="TOML configuration file")
    create.add_argument("--username", required=True)
    create.add_argument("--email", default=None)
    create.add_argument("--role", choices=[r.value for r in Role], default=Role.VIEWER.value)
    create.add_argument("--password", help="the password (prefer stdin or the prompt: argv is visible to others)")
    create.set_defaults(func=cmd_user_create)

    camera = commands.add_parser("camera", help="manage cameras")
    camera_commands = camera.add_subparsers(dest="camera_command", required=True)
    add = camera_commands.add_parser("add", help="add a camera and print its publish URL")
    add.add_argument("name")
    add.add_argument("--config", "-c", help="TOML configuration file")
    add.add_argument("--company", default="", help="who the camera belongs to")
    add.add_argument("--vendor", default="")
    add.add_argument("--model", default="")
    add.add_argument("--serial", default="")
    add.add_argument("--location", default="")
    add.add_argument("--public", action="store_true", help="playable without a play token")
    add.add_argument(
        "--source-url", default=None, help="pull the camera's stream from this URL (rtsp://user:pass@camera/path ...)"
    )
    add.set_defaults(func=cmd_camera_add)
