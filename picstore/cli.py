"""The `picstore` command: serve, worker, migrate, bootstrap, init-local, add-api-key, hash-password, and the
HTTP clients publish and import (their logic lives in publish.py)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from picstore import auth, bootstrap, conversion, db, ids, models, publish, team
from picstore.settings import ClientSettings, MissingSetting, Settings

ALEMBIC_INI = Path(__file__).resolve().parents[1] / "alembic.ini"


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except MissingSetting as exc:
        raise SystemExit(f"picstore: {exc}") from None


def migrate(url: str, revision: str = "head", downgrade: bool = False) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = url
    (command.downgrade if downgrade else command.upgrade)(config, revision)


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = _settings()
    worker = None
    if args.with_worker:
        worker = subprocess.Popen([sys.executable, "-m", "picstore", "worker"])
    try:
        uvicorn.run(
            "picstore.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            workers=args.workers,
            access_log=False,
            # uvicorn's loggers propagate to the root handler create_app installs (logs.py): one format.
            log_config=None,
        )
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)


def cmd_worker(args: argparse.Namespace) -> None:
    from picstore import tasks

    settings = _settings()
    asyncio.run(tasks.run_worker(settings, concurrency=args.concurrency or settings.worker_concurrency))


def cmd_migrate(args: argparse.Namespace) -> None:
    migrate(_settings().database_url, args.revision, args.downgrade)


async def _with_session(settings: Settings, work: Any) -> Any:
    engine = db.make_engine(settings.database_url, 2)
    try:
        async with db.make_sessionmaker(engine)() as session, session.begin():
            return await work(session)
    finally:
        await engine.dispose()


def cmd_bootstrap(args: argparse.Namespace) -> None:
    settings = _settings()
    try:
        found = bootstrap.read(Path(args.path), os.environ)
        count = asyncio.run(_with_session(settings, lambda s: bootstrap.load(s, settings, found)))
    except bootstrap.BootstrapError as exc:
        raise SystemExit(f"picstore bootstrap: {exc}; nothing was written") from None
    print(f"bootstrap: loaded {count} objects")


def _expires(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        expires = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"picstore: --expires: {text!r} is not an ISO 8601 time") from None
    if expires.tzinfo is None:
        raise SystemExit("picstore: --expires: give a time zone, e.g. 2030-01-01T00:00:00Z")
    return expires


def cmd_add_api_key(args: argparse.Namespace) -> None:
    settings = _settings()
    try:
        user_id = ids.parse_id(ids.USER, args.user)
    except ids.InvalidId as exc:
        raise SystemExit(f"picstore: --user: {exc}") from None
    expires = _expires(args.expires)
    key = auth.new_key()

    async def add(session: Any) -> None:
        user = await session.get(models.User, user_id)
        if user is None or user.deleted is not None:
            raise SystemExit(f"picstore: user {args.user} not found")
        await team.insert_key(session, key, user.team_id, user.id, args.name, expires, not args.no_inherit)

    asyncio.run(_with_session(settings, add))
    print(key)


def cmd_hash_password(args: argparse.Namespace) -> None:
    password = args.password if args.password is not None else getpass.getpass("Password: ")
    print(auth.hash_password(password))


def local_objects(settings: Settings, key: str) -> dict[str, list[dict[str, Any]]]:
    """The default team of a fresh install: admin user and key, project, local storage, default profiles."""
    team_id, user_id, role_id = (ids.format_id(p, ids.new_uuid()) for p in (ids.TEAM, ids.USER, ids.ROLE))
    project_id = ids.format_id(ids.PROJECT, ids.new_uuid())
    storage_id = ids.format_id(ids.STORAGE_LOCATION, ids.new_uuid())
    conversion_id = ids.format_id(ids.CONVERSION_PROFILE, ids.new_uuid())
    upload_id = ids.format_id(ids.UPLOAD_PROFILE, ids.new_uuid())
    return {
        "team": [{"id": team_id, "name": "Default team"}],
        "project": [{"id": project_id, "team_id": team_id, "name": "Default project"}],
        "storage_location": [
            {
                "id": storage_id,
                "team_id": team_id,
                "name": "Local files",
                "provider": {"type": "local"},
                "base_location": "default",
                "public_url_base": f"{settings.public_url}/files/default",
            }
        ],
        "conversion_profile": [
            {
                "id": conversion_id,
                "team_id": team_id,
                "name": "Default",
                "output": conversion.encode_profile(conversion.default_profile()),
            }
        ],
        "upload_profile": [
            {
                "id": upload_id,
                "team_id": team_id,
                "project_id": project_id,
                "name": "Default",
                "short_id": "default",
                "base_storage_location_id": storage_id,
                "base_storage_location_path": "originals",
                "output_storage_location_id": storage_id,
                "output_storage_location_path": "outputs",
                "conversion_profile_id": conversion_id,
            }
        ],
        "user": [
            {
                "id": user_id,
                "team_id": team_id,
                "email": "admin@localhost",
                "name": "Admin",
                "default_upload_profile_id": upload_id,
            }
        ],
        "role": [{"id": role_id, "team_id": team_id, "name": "Admin"}],
        "user_role": [{"user_id": user_id, "role_id": role_id}],
        "role_permission": [{"team_id": team_id, "role_id": role_id, "permission": "team:admin"}],
        "api_key": [{"key": key, "team_id": team_id, "user_id": user_id, "name": "local admin"}],
    }


async def init_local(settings: Settings, data_dir: Path) -> dict[str, Any]:
    """Create the default team once; later runs find it through the state file and reuse its key."""
    state_file = data_dir / "local.json"

    async def work(session: Any) -> dict[str, Any]:
        if state_file.exists():
            state: dict[str, Any] = json.loads(state_file.read_text())
            if await session.get(models.Team, ids.parse_id(ids.TEAM, state["team"][0]["id"])) is not None:
                return state
        state = local_objects(settings, auth.new_key())
        await bootstrap.load(session, settings, state)
        data_dir.mkdir(parents=True, exist_ok=True)
        state_file.touch(mode=0o600)
        state_file.write_text(json.dumps(state, indent=2))
        return state

    result: dict[str, Any] = await _with_session(settings, work)
    return result


def cmd_init_local(args: argparse.Namespace) -> None:
    settings = _settings()
    state = asyncio.run(init_local(settings, Path(args.data_dir)))
    key = state["api_key"][0]["key"]
    project = state["project"][0]["id"]
    print(f"""
picstore is starting on {settings.public_url}

  admin API key: {key}

  try it:
    curl -s -H 'Authorization: Bearer {key}' {settings.public_url}/api/projects
    curl -s -H 'Authorization: Bearer {key}' --data-binary @photo.jpg \\
      '{settings.public_url}/api/projects/{project}/quick_upload?filename=photo.jpg'
""")


def _run_client(args: argparse.Namespace, work: Callable[[ClientSettings], int]) -> None:
    """publish and import: one line and exit 2 for what stops a run, 130 for Ctrl-C."""
    try:
        code = work(ClientSettings.from_env(args.url, args.api_key))
    except (MissingSetting, publish.Fatal) as exc:
        print(f"picstore {args.command}: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(
            f"picstore {args.command}: interrupted; run the same command again to continue "
            "(files already uploaded are skipped)",
            file=sys.stderr,
        )
        code = 130
    raise SystemExit(code)


def cmd_publish(args: argparse.Namespace) -> None:
    def work(client: ClientSettings) -> int:
        results = asyncio.run(
            publish.publish_files(
                client,
                [Path(f) for f in args.files],
                args.project,
                args.upload_profile,
                args.alt,
                args.json,
                args.timeout,
            )
        )
        for line in publish.problems(results):
            print(f"picstore publish: {line}", file=sys.stderr)
        if text := publish.render_published(results, args.json):
            print(text)
        return publish.publish_exit_code(results)

    _run_client(args, work)


def cmd_import(args: argparse.Namespace) -> None:
    def work(client: ClientSettings) -> int:
        report = asyncio.run(
            publish.import_folder(
                client, Path(args.folder), args.project, args.upload_profile, args.concurrency
            )
        )
        print(publish.summary(report))
        return publish.exit_code(report.outcomes)

    _run_client(args, work)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _client_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--url", help="the server, e.g. https://pics.example.com (default: PICSTORE_URL)")
    command.add_argument("--api-key", help="prefer PICSTORE_API_KEY: flags show up in process lists")
    command.add_argument("--project", help="project id (default: the only project the key can see)")
    command.add_argument(
        "--upload-profile", help="upload profile id or short id (default: the project's only one)"
    )


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="picstore", description="Multi-tenant image CDN backend")
    sub = root.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--with-worker", action="store_true", help="also run a conversion worker")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.set_defaults(run=cmd_serve)
    worker = sub.add_parser("worker", help="run the background job worker")
    worker.add_argument(
        "--concurrency", type=int, default=0, help="parallel jobs (default PICSTORE_WORKER_CONCURRENCY)"
    )
    worker.set_defaults(run=cmd_worker)
    mig = sub.add_parser("migrate", help="apply database migrations")
    mig.add_argument("revision", nargs="?", default="head")
    mig.add_argument("--downgrade", action="store_true")
    mig.set_defaults(run=cmd_migrate)
    boot = sub.add_parser("bootstrap", help="load teams, users, profiles... from a JSON file or folder")
    boot.add_argument("path")
    boot.set_defaults(run=cmd_bootstrap)
    init = sub.add_parser("init-local", help="create the default team for a local install (idempotent)")
    init.add_argument("data_dir")
    init.set_defaults(run=cmd_init_local)
    key = sub.add_parser("add-api-key", help="create an API key for a user and print it")
    key.add_argument("--user", required=True, help="user id (usr... or UUID)")
    key.add_argument("--name", default="")
    key.add_argument("--expires", help="ISO 8601 time, e.g. 2030-01-01T00:00:00Z")
    key.add_argument("--no-inherit", action="store_true", help="the key gets no permissions of its user")
    key.set_defaults(run=cmd_add_api_key)
    pw = sub.add_parser("hash-password", help="print an argon2id hash of a password")
    pw.add_argument("password", nargs="?")
    pw.set_defaults(run=cmd_hash_password)
    pub = sub.add_parser(
        "publish", help="upload image files (unless already there) and print their <picture> tags"
    )
    pub.add_argument("files", nargs="+", metavar="FILE")
    _client_flags(pub)
    pub.add_argument("--alt", default="", help="alt text for the uploaded images")
    pub.add_argument("--json", action="store_true", help="print one JSON object per file instead of HTML")
    pub.add_argument("--timeout", type=float, default=300, help="seconds to wait for each image's outputs")
    pub.set_defaults(run=cmd_publish)
    imp = sub.add_parser("import", help="upload every image under a folder, skipping what is already there")
    imp.add_argument("folder", metavar="DIR")
    _client_flags(imp)
    imp.add_argument("--concurrency", type=_positive, default=4, help="uploads at once (default 4)")
    imp.set_defaults(run=cmd_import)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.run(args)
