"""Putting local image files on a picstore server over its HTTP API: `picstore publish` and `picstore import`.

Pic Store's planned helper for people who keep images in a repository or a folder. It needs only the
server's URL and an API key, so it works against a remote server; it never touches the database.

Every file is hashed locally (SHA-256, streamed) and looked up by hash in the target project and upload
profile first, so only missing bytes travel and an interrupted run continues where it stopped. Bytes go
straight to object storage through a presigned URL where the storage location can presign, else through
the api (local storage answers 409 to the presign request). An image that a killed run created but never
filled (`awaiting_upload`) is adopted by the next run that brings a file of the same name, so reruns
leave neither duplicates nor empty images behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from picstore.settings import ClientSettings

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".avif", ".heic", ".heif", ".tif", ".tiff", ".svg"}
)
CHUNK = 1024 * 1024
POLL_SECONDS = 0.5
PAGE = 100
# Outputs in these states are still on their way; `skipped` and `obsolete` ones never will be.
PENDING_OUTPUTS = frozenset({"queued", "converting"})
COUNTED_OUTPUTS = PENDING_OUTPUTS | {"ready", "failed"}

Kind = Literal["uploaded", "duplicate", "refused", "failed"]
KINDS: tuple[Kind, ...] = get_args(Kind)


class Fatal(Exception):
    """What stops the whole run (settings, credentials, permissions, network), in one line for people."""


class FileProblem(Exception):
    """One file did not make it; the run goes on."""

    kind: Kind = "failed"


class Refused(FileProblem):
    """The server refused the file (4xx); the message is the server's reason."""

    kind = "refused"


class Failed(FileProblem):
    """A server error or a broken connection: running again may succeed."""

    kind = "failed"


@dataclass(frozen=True, slots=True)
class LocalFile:
    path: Path
    name: str  # the image's filename on the server: the path relative to an imported folder
    size: int


@dataclass(frozen=True, slots=True)
class Target:
    project_id: str
    profile_id: str


@dataclass(frozen=True, slots=True)
class Outcome:
    file: LocalFile
    kind: Kind
    image_id: str | None = None
    reason: str | None = None  # why refused or failed


@dataclass(frozen=True, slots=True)
class Published:
    """What `publish` prints for one file: the picture (HTML or JSON) or why there is none."""

    outcome: Outcome
    picture: str | dict[str, Any] | None = None
    error: str | None = None


@dataclass(slots=True)
class Report:
    """What `import` did, for its summary."""

    folder: Path
    outcomes: list[Outcome]
    seconds: float
    bytes_sent: int

    def count(self, kind: Kind) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)


# The server


def error_message(response: httpx.Response) -> str:
    """The server's one-line reason from its error shape `{"error": {"kind", "message"}}`, else the body."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:200] or response.reason_phrase


def problem(response: httpx.Response) -> FileProblem:
    message = error_message(response)
    if response.status_code < 500:
        return Refused(message)
    return Failed(f"server error {response.status_code}: {message}")


class Api:
    """An httpx client for the api with the key, and a bare one for object storage.

    Credential, permission and connection failures become Fatal here, so callers only handle per-file
    answers."""

    def __init__(self, settings: ClientSettings, timeout: float = 60.0) -> None:
        self.url = settings.url
        limits = httpx.Timeout(timeout, connect=10.0)
        self.http = httpx.AsyncClient(
            base_url=settings.url,
            timeout=limits,
            headers={"Authorization": f"Bearer {settings.api_key}", "User-Agent": "picstore-publish"},
        )
        # Presigned URLs carry their own authorisation: object storage must never see our API key.
        self.storage = httpx.AsyncClient(timeout=limits)
        self.presign = True  # until the server says this profile's storage cannot presign

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.storage.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Fatal(f"cannot reach the server at {self.url}: {exc or type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise Failed(f"the connection to {self.url} broke: {exc or type(exc).__name__}") from None
        if response.status_code == 401:
            raise Fatal(f"the server at {self.url} refused the API key (401): {error_message(response)}")
        if response.status_code == 403:
            raise Fatal(f"the API key may not do this (403): {error_message(response)}")
        return response

    async def json(self, method: str, path: str, missing: str = "", **kwargs: Any) -> Any:
        """A call the whole run depends on: any failure stops it. `missing` names what a 404 means."""
        try:
            response = await self.request(method, path, **kwargs)
        except FileProblem as exc:
            raise Fatal(str(exc)) from None
        if response.status_code == 404 and missing:
            raise Fatal(f"{missing} not found")
        if response.status_code >= 300:
            raise Fatal(f"{method} {path}: {response.status_code} {error_message(response)}")
        return response.json()


async def resolve_target(api: Api, project: str | None, upload_profile: str | None) -> Target:
    """The project (given, or the only one the key sees) and the upload profile (by id or short id, or the
    project's only one)."""
    project_id = project or await _only_project(api)
    path = f"/api/projects/{project_id}/upload_profiles"
    profiles: list[dict[str, Any]] = await api.json("GET", path, missing=f"project {project_id}")
    if upload_profile is not None:
        chosen = [p for p in profiles if upload_profile in (p["id"], p["short_id"])]
        if not chosen:
            raise Fatal(f"upload profile {upload_profile!r} not found in project {project_id}")
        return Target(project_id, chosen[0]["id"])
    if len(profiles) != 1:
        names = ", ".join(p["short_id"] or p["id"] for p in profiles) or "none"
        raise Fatal(f"{len(profiles)} upload profiles in {project_id} ({names}): pass --upload-profile")
    return Target(project_id, profiles[0]["id"])


async def _only_project(api: Api) -> str:
    found: list[dict[str, Any]] = await api.json("GET", "/api/projects")
    if len(found) != 1:
        names = ", ".join(f"{p['id']} ({p['name']})" for p in found) or "none"
        raise Fatal(f"the API key sees {len(found)} projects ({names}): pass --project")
    return str(found[0]["id"])


async def pending_images(api: Api, target: Target) -> dict[str, list[str]]:
    """Images an earlier run created but never filled, by filename; an upload of that name adopts one."""
    pending: dict[str, list[str]] = {}
    params: dict[str, Any] = {"status": "awaiting_upload", "upload_profile": target.profile_id, "limit": PAGE}
    while True:
        page = await api.json("GET", f"/api/projects/{target.project_id}/images", params=params)
        for image in page["images"]:
            pending.setdefault(image["filename"], []).append(image["id"])
        if page["next_after"] is None:
            return pending
        params["after"] = page["next_after"]


async def find_existing(api: Api, target: Target, sha256: str) -> dict[str, Any] | None:
    response = await api.request(
        "GET",
        f"/api/image_by_hash/{sha256}",
        params={"project": target.project_id, "upload_profile": target.profile_id},
    )
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise problem(response)
    found: dict[str, Any] = response.json()
    return found


async def create_image(api: Api, target: Target, file: LocalFile, alt: str) -> str:
    body = {"filename": file.name, "alt_text": alt, "upload_profile_id": target.profile_id}
    response = await api.request("POST", "/api/images", json=body)
    if response.status_code != 201:
        raise problem(response)
    return str(response.json()["id"])


async def discard(api: Api, image_id: str) -> None:
    """Best effort: a key without image:edit leaves the empty image behind, and the next run adopts it."""
    with suppress(httpx.HTTPError):
        await api.http.delete(f"/api/images/{image_id}")


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


async def chunks(path: Path, sent: Callable[[int], None]) -> AsyncIterator[bytes]:
    """The file in pieces, read off the event loop, reporting each piece as it goes out."""
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            sent(len(chunk))
            yield chunk


def content_type(path: Path) -> str | None:
    guessed = mimetypes.guess_type(path.name)[0]
    return guessed if guessed and guessed.startswith("image/") else None


async def upload(api: Api, image_id: str, file: LocalFile, sha256: str, sent: Callable[[int], None]) -> None:
    """Presigned straight to object storage where possible, else through the api."""
    if api.presign:
        body: dict[str, Any] = {"content_length": file.size, "sha256": sha256}
        if (ctype := content_type(file.path)) is not None:
            body["content_type"] = ctype
        response = await api.request("POST", f"/api/images/{image_id}/upload_url", json=body)
        if response.status_code == 200:
            await _put_presigned(api, response.json(), file, sent)
            _check(await api.request("POST", f"/api/images/{image_id}/complete"))
            return
        if response.status_code != 409:
            raise problem(response)
        api.presign = False  # local storage: the profile's storage is fixed, so ask only once per run
    # A known length lets the server refuse an oversized file before the body arrives.
    headers = {"Content-Length": str(file.size)}
    path = f"/api/images/{image_id}/upload"
    _check(await api.request("POST", path, content=chunks(file.path, sent), headers=headers))


async def _put_presigned(
    api: Api, signed: dict[str, Any], file: LocalFile, sent: Callable[[int], None]
) -> None:
    headers = {**signed["headers"], "Content-Length": str(file.size)}
    body = chunks(file.path, sent)
    try:
        response = await api.storage.request(signed["method"], signed["url"], content=body, headers=headers)
    except httpx.TransportError as exc:
        raise Failed(f"object storage did not take the upload: {exc or type(exc).__name__}") from None
    if response.status_code >= 300:
        reason = response.text.strip()[:200]
        raise Failed(f"object storage refused the upload ({response.status_code}): {reason}")


def _check(response: httpx.Response) -> None:
    if response.status_code >= 300:
        raise problem(response)


class Publisher:
    """Sends files to one target. Files with equal bytes within a run are sent once; the others wait for the
    first and count as duplicates of it."""

    def __init__(
        self, api: Api, target: Target, pending: dict[str, list[str]], alt: str, sent: Callable[[int], None]
    ) -> None:
        self.api, self.target, self.pending, self.alt, self.sent = api, target, pending, alt, sent
        self._first: dict[str, asyncio.Future[Outcome]] = {}

    async def publish(self, file: LocalFile) -> Outcome:
        try:
            sha256 = await asyncio.to_thread(sha256_of, file.path)
        except OSError as exc:
            return Outcome(file, "refused", reason=f"cannot read the file: {exc.strerror or exc}")
        if (earlier := self._first.get(sha256)) is not None:
            return _same_as(file, await earlier)
        future = asyncio.get_running_loop().create_future()
        self._first[sha256] = future
        try:
            outcome = await self._send(file, sha256)
        except BaseException:
            future.cancel()  # the run is stopping (Fatal, Ctrl-C); waiters stop with it
            raise
        future.set_result(outcome)
        return outcome

    async def _send(self, file: LocalFile, sha256: str) -> Outcome:
        try:
            if (existing := await find_existing(self.api, self.target, sha256)) is not None:
                return Outcome(file, "duplicate", existing["id"], f"already there as {existing['filename']}")
            adopted = self.pending.get(file.name)
            image_id = adopted.pop() if adopted else await create_image(self.api, self.target, file, self.alt)
        except FileProblem as exc:
            return Outcome(file, exc.kind, reason=str(exc))
        try:
            await upload(self.api, image_id, file, sha256, self.sent)
        except Refused as exc:
            await discard(self.api, image_id)
            return Outcome(file, exc.kind, reason=str(exc))
        except Failed as exc:
            return Outcome(file, exc.kind, reason=str(exc))  # the empty image is adopted by the next run
        return Outcome(file, "uploaded", image_id)


def _same_as(file: LocalFile, first: Outcome) -> Outcome:
    if first.image_id is not None and first.kind in ("uploaded", "duplicate"):
        return Outcome(file, "duplicate", first.image_id, f"same bytes as {first.file.name}")
    return Outcome(file, first.kind, reason=f"same bytes as {first.file.name}: {first.reason}")


# Progress on stderr (rich draws a live bar on a terminal and prints the final state otherwise)


@dataclass(slots=True)
class ImportProgress:
    total: int
    started: float = field(default_factory=time.monotonic)
    bytes_sent: int = 0
    counts: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    bar: Progress = field(init=False)
    task: TaskID = field(init=False)

    def __post_init__(self) -> None:
        self.bar = Progress(
            TextColumn("importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.task = self.bar.add_task("import", total=self.total, counts=self._counts(), rate="")

    def sent(self, size: int) -> None:
        self.bytes_sent += size
        self.bar.update(self.task, rate=f"{decimal(int(self.bytes_sent / self.seconds()))}/s")

    def done(self, outcome: Outcome) -> None:
        self.counts[outcome.kind] += 1
        self.bar.update(self.task, advance=1, counts=self._counts())

    def seconds(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)

    def _counts(self) -> str:
        c = self.counts
        return f"{c['uploaded']} new, {c['duplicate']} duplicate, {c['refused'] + c['failed']} refused"


# import


def find_images(folder: Path) -> list[LocalFile]:
    """Image files under `folder` by extension, in a stable order; hidden ones (and .git) left out."""
    found = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append(LocalFile(path, path.relative_to(folder).as_posix(), path.stat().st_size))
    return found


async def import_folder(
    settings: ClientSettings, folder: Path, project: str | None, upload_profile: str | None, concurrency: int
) -> Report:
    if not folder.is_dir():
        raise Fatal(f"{folder} is not a folder")
    files = find_images(folder)
    async with Api(settings) as api:
        target = await resolve_target(api, project, upload_profile)
        pending = await pending_images(api, target)
        progress = ImportProgress(len(files))
        publisher = Publisher(api, target, pending, "", progress.sent)
        limit = asyncio.Semaphore(concurrency)

        async def one(file: LocalFile) -> Outcome:
            async with limit:
                outcome = await publisher.publish(file)
            progress.done(outcome)
            return outcome

        with progress.bar, _fatal_first():
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(f)) for f in files]
    return Report(folder, [t.result() for t in tasks], progress.seconds(), progress.bytes_sent)


@contextmanager
def _fatal_first() -> Iterator[None]:
    """A TaskGroup wraps errors in an ExceptionGroup; a Fatal in it is what people need to see."""
    try:
        yield
    except ExceptionGroup as group:
        fatal = next((e for e in group.exceptions if isinstance(e, Fatal)), None)
        if fatal is None:
            raise
        raise fatal from None


def summary(report: Report) -> str:
    lines = [
        f"{len(report.outcomes)} image files in {report.folder}: "
        f"{decimal(report.bytes_sent)} sent in {report.seconds:.1f} s "
        f"({decimal(int(report.bytes_sent / report.seconds))}/s)",
        f"  uploaded              {report.count('uploaded')}",
        f"  skipped as duplicate  {report.count('duplicate')}",
        f"  refused               {report.count('refused')}",
    ]
    if failed := report.count("failed"):
        lines.append(f"  failed (run again)    {failed}")
    for outcome in report.outcomes:
        if outcome.kind in ("refused", "failed"):
            lines.append(f"{outcome.kind}: {outcome.file.name}: {outcome.reason}")
    return "\n".join(lines)


def exit_code(outcomes: Sequence[Outcome]) -> int:
    return 1 if any(o.kind in ("refused", "failed") for o in outcomes) else 0


# publish


async def publish_files(
    settings: ClientSettings,
    paths: Sequence[Path],
    project: str | None,
    upload_profile: str | None,
    alt: str,
    as_json: bool,
    timeout: float,
) -> list[Published]:
    """Upload what is missing, wait for every image's outputs, and fetch each picture."""
    files = [_local(p) for p in paths]
    async with Api(settings) as api:
        target = await resolve_target(api, project, upload_profile)
        publisher = Publisher(api, target, await pending_images(api, target), alt, lambda _: None)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        ) as bar:
            return [await _publish_one(api, publisher, bar, f, as_json, timeout) for f in files]


def _local(path: Path) -> LocalFile:
    try:
        return LocalFile(path, path.name, path.stat().st_size)
    except OSError as exc:
        raise Fatal(f"cannot read {path}: {exc.strerror or exc}") from None


async def _publish_one(
    api: Api, publisher: Publisher, bar: Progress, file: LocalFile, as_json: bool, timeout: float
) -> Published:
    task = bar.add_task(file.name, total=None, state="uploading")
    outcome = await publisher.publish(file)
    if outcome.image_id is None or outcome.kind in ("refused", "failed"):
        bar.update(task, state=outcome.kind)
        return Published(outcome, error=outcome.reason)

    def show(done: int, total: int, state: str) -> None:
        bar.update(task, completed=done, total=total, state=state)

    try:
        await wait_for_outputs(api, outcome.image_id, show, timeout)
        picture = await fetch_picture(api, outcome.image_id, as_json)
    except FileProblem as exc:
        return Published(outcome, error=str(exc))
    return Published(outcome, picture=picture)


async def wait_for_outputs(
    api: Api, image_id: str, show: Callable[[int, int, str], None], timeout: float
) -> None:
    """Poll the image until it is ready or failed; `show(done, total, status)` after every look."""
    deadline = time.monotonic() + timeout
    while True:
        response = await api.request("GET", f"/api/images/{image_id}")
        _check(response)
        image = response.json()
        outputs = [o for o in image["output"] if o["status"] in COUNTED_OUTPUTS]
        done = sum(1 for o in outputs if o["status"] not in PENDING_OUTPUTS)
        show(done, len(outputs), image["status"])
        if image["status"] == "failed":
            raise Refused(f"conversion failed: {image['error']}")
        if image["status"] == "ready":
            return
        if time.monotonic() > deadline:
            raise Failed(f"outputs still {image['status']} after {timeout:.0f} s; run again to keep waiting")
        await asyncio.sleep(POLL_SECONDS)


async def fetch_picture(api: Api, image_id: str, as_json: bool) -> str | dict[str, Any]:
    response = await api.request(
        "GET", f"/api/images/{image_id}/picture", params={"format": "json" if as_json else "html"}
    )
    if response.status_code != 200:
        raise problem(response)
    return response.json() if as_json else response.text


def render_published(results: Sequence[Published], as_json: bool) -> str:
    """JSON Lines (one object per file) with --json; else the tags, each after a comment naming its file
    when there are several."""
    if as_json:
        return "\n".join(json.dumps(_as_record(r)) for r in results)
    tags = [r for r in results if isinstance(r.picture, str)]
    if len(tags) == 1:
        return str(tags[0].picture)
    return "\n\n".join(f"<!-- {r.outcome.file.name} -->\n{r.picture}" for r in tags)


def _as_record(result: Published) -> dict[str, Any]:
    outcome = result.outcome
    record = {"file": str(outcome.file.path), "image_id": outcome.image_id, "status": outcome.kind}
    if result.error is not None:
        return {**record, "error": result.error}
    return {**record, "picture": result.picture}


def problems(results: Sequence[Published]) -> list[str]:
    """One line per file that has no picture, for stderr."""
    return [f"{r.outcome.file.path}: {r.error}" for r in results if r.error is not None]


def publish_exit_code(results: Sequence[Published]) -> int:
    return 1 if any(r.error is not None for r in results) else 0
