"""`picstore publish` and `picstore import` as people run them: real processes talking HTTP to a real
api server, with a real worker making the outputs. The CLI gets only a URL and a key, never the database.

Local storage cannot presign, so those uploads go through the api after its 409 to the presign request;
on S3 (a real SeaweedFS) the bytes go straight to the bucket through the presigned URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pyvips
from conftest import CORPUS, ROOT, S3_BUCKET, Tenant, make_pipeline
from liveserver import free_port, running_api
from s3server import S3Server

PROFILE = {
    "type": "cross",
    "formats": [
        {"format": "webp", "quality": 60, "effort": 0},
        {"format": "jpg", "condition": {"type": "must", "formats": ["jpg"]}},
    ],
    "sizes": [{"width": 48}],
}

BUCKET = S3_BUCKET

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def live_api(env: dict[str, str]) -> Iterator[str]:
    with running_api(env) as url:
        yield url


def client_env(url: str | None, key: str | None) -> dict[str, str]:
    """The caller's environment: no database or server settings, only where the server is and a key."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PICSTORE_")}
    return {**base, **({"PICSTORE_URL": url} if url else {}), **({"PICSTORE_API_KEY": key} if key else {})}


async def start(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "picstore",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def picstore(*args: str, env: dict[str, str]) -> Run:
    proc = await start(*args, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def project_images(client: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        r = await client.get(
            f"/api/projects/{tenant.project}/images", params=params, headers=tenant.headers()
        )
        assert r.status_code == 200, r.text
        found += r.json()["images"]
        if (after := r.json()["next_after"]) is None:
            return found
        params["after"] = after


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def target(pipe: dict[str, Any], tenant: Tenant) -> list[str]:
    return ["--project", tenant.project, "--upload-profile", pipe["short_id"]]


def summary_counts(stdout: str) -> dict[str, int]:
    return {
        name: int(m.group(1))
        for name in ("uploaded", "skipped as duplicate", "refused")
        if (m := re.search(rf"^  {name} +(\d+)$", stdout, re.MULTILINE))
    }


async def test_publish_prints_the_picture_and_reuses_what_is_there(client, tenant, worker, live_api):
    pipe = await make_pipeline(client, tenant, PROFILE, files_url=f"{live_api}/files")
    env = client_env(live_api, tenant.admin_key)
    photo = CORPUS / "Landscape_1.jpg"

    first = await picstore("publish", str(photo), *target(pipe, tenant), "--alt", "a landscape", env=env)
    assert first.code == 0, first
    tag = first.stdout.strip()
    assert tag.startswith("<picture>") and tag.endswith("</picture>"), tag
    assert 'type="image/webp"' in tag and 'alt="a landscape"' in tag and f"{live_api}/files/" in tag
    src = re.search(r'<img src="([^"]+)"', tag)
    assert src is not None and httpx.get(src.group(1)).headers["content-type"] == "image/jpeg"
    [image] = await project_images(client, tenant)
    assert image["hash"] == sha256(photo) and image["status"] == "ready"

    again = await picstore("publish", str(photo), *target(pipe, tenant), "--json", env=env)
    assert again.code == 0, again
    record = json.loads(again.stdout)
    assert (record["status"], record["image_id"]) == ("duplicate", image["id"])
    assert record["picture"]["img"]["src"] == src.group(1)
    assert len(await project_images(client, tenant)) == 1


async def test_publish_reports_a_refusal_and_leaves_no_empty_image(client, tenant, worker, live_api):
    pipe = await make_pipeline(client, tenant, PROFILE, files_url=f"{live_api}/files")
    env = client_env(live_api, tenant.admin_key)
    bad, good = CORPUS / "corrupt-header.jpg", CORPUS / "Landscape_6.jpg"

    run = await picstore("publish", str(bad), str(good), *target(pipe, tenant), env=env)
    assert run.code == 1, run
    [line] = [x for x in run.stderr.splitlines() if x.startswith("picstore publish:")]
    prefix = f"picstore publish: {bad}: "
    assert line.startswith(prefix) and len(line) > len(prefix) + 10, line  # with the server's reason
    assert run.stdout.strip().startswith("<picture>") and run.stdout.count("<picture>") == 1
    [image] = await project_images(client, tenant)  # the refused file's empty image was deleted
    assert image["hash"] == sha256(good)


@pytest.mark.parametrize("case", ["no url", "no key", "bad key", "unreachable"])
async def test_one_line_messages_for_what_stops_a_run(client, tenant, live_api, case):
    url, key = {
        "no url": (None, tenant.admin_key),
        "no key": (live_api, None),
        "bad key": (live_api, "ps1.AAAAAAAAAAAAAAAAAAAAAA.not-a-real-secret"),
        "unreachable": (f"http://127.0.0.1:{free_port()}", tenant.admin_key),
    }[case]
    expected = {
        "no url": "no server URL: set PICSTORE_URL or pass --url",
        "no key": "no API key: set PICSTORE_API_KEY or pass --api-key",
        "bad key": f"the server at {live_api} refused the API key (401)",
        "unreachable": f"cannot reach the server at {url}",
    }[case]
    run = await picstore("import", str(CORPUS), "--project", tenant.project, env=client_env(url, key))
    assert run.code == 2, run
    assert run.stderr.startswith(f"picstore import: {expected}") and run.stderr.count("\n") == 1, run.stderr
    assert run.stdout == ""


async def test_image_by_hash_narrowed_to_a_project_and_upload_profile(client, tenant):
    """What publish asks before sending a file: "are these bytes already in this profile?"."""
    first = await make_pipeline(client, tenant, PROFILE)
    second = await make_pipeline(client, tenant, PROFILE)
    photo = CORPUS / "Landscape_1.jpg"
    r = await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": first["short_id"]},
        content=photo.read_bytes(),
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    by_hash = f"/api/image_by_hash/{sha256(photo)}"

    async def lookup(**params: str) -> httpx.Response:
        return await client.get(by_hash, params=params, headers=tenant.headers())

    assert (await lookup()).json()["id"] == r.json()["id"]
    assert (await lookup(project=tenant.project, upload_profile=first["upload_profile"])).status_code == 200
    assert (await lookup(upload_profile=second["upload_profile"])).status_code == 404
    assert (await lookup(upload_profile="not-an-id")).status_code == 400


def make_folder(root: Path) -> dict[str, Path]:
    """Accepted files (one twice, under another name), two the server refuses, and files import ignores."""
    files = {
        "a.jpg": "Landscape_1.jpg",
        "sub/b.jpg": "Landscape_6.jpg",
        "sub/deeper/c.png": "with-alpha.png",
        "anim.gif": "animated-loop-3.gif",
        "copy-of-a.jpg": "Landscape_1.jpg",
        "circle.svg": "circle.svg",
        "corrupt-header.jpg": "corrupt-header.jpg",
        ".hidden/d.jpg": "Portrait_6.jpg",
    }
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CORPUS / source, root / name)
    (root / "notes.txt").write_text("not an image")
    return {name: root / name for name in files}


async def test_import_summary_and_rerun(client, tenant, worker, live_api, tmp_path):
    pipe = await make_pipeline(client, tenant, PROFILE, files_url=f"{live_api}/files")
    env = client_env(live_api, tenant.admin_key)
    files = make_folder(tmp_path)

    run = await picstore("import", str(tmp_path), *target(pipe, tenant), "--concurrency", "2", env=env)
    assert run.code == 1, run  # refusals make the exit code non-zero
    assert summary_counts(run.stdout) == {"uploaded": 4, "skipped as duplicate": 1, "refused": 2}, run.stdout
    refusals = [x for x in run.stdout.splitlines() if x.startswith("refused: ")]
    assert [x.split(":")[1].strip() for x in refusals] == ["circle.svg", "corrupt-header.jpg"], refusals
    assert all(len(x) > 40 for x in refusals), refusals  # with the server's reason

    images = await project_images(client, tenant)
    accepted = ("a.jpg", "sub/b.jpg", "sub/deeper/c.png", "anim.gif")
    expected = sorted((name, sha256(files[name])) for name in accepted)
    assert sorted((i["filename"], i["hash"]) for i in images) == expected

    rerun = await picstore("import", str(tmp_path), *target(pipe, tenant), env=env)
    assert rerun.code == 1, rerun
    counts = summary_counts(rerun.stdout)
    assert counts == {"uploaded": 0, "skipped as duplicate": 5, "refused": 2}, rerun.stdout
    assert len(await project_images(client, tenant)) == 4


def distinct_photos(folder: Path, count: int) -> list[Path]:
    """`count` small JPEGs of random noise: every one has different bytes."""
    folder.mkdir()
    paths = []
    for n in range(count):
        path = folder / f"img-{n:03}.jpg"
        pyvips.Image.gaussnoise(200, 150).cast("uchar").jpegsave(str(path), Q=80)
        paths.append(path)
    return paths


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
async def test_import_stopped_part_way_continues_without_duplicates(
    client, tenant, worker, live_api, tmp_path, stop
):
    pipe = await make_pipeline(client, tenant, PROFILE, files_url=f"{live_api}/files")
    env = client_env(live_api, tenant.admin_key)
    photos = distinct_photos(tmp_path / "photos", 30)
    # What a run killed between creating an image and sending its bytes leaves behind.
    r = await client.post(
        "/api/images",
        json={"filename": "img-000.jpg", "upload_profile_id": pipe["upload_profile"]},
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    orphan = r.json()["id"]

    folder = str(tmp_path / "photos")
    proc = await start("import", folder, *target(pipe, tenant), "--concurrency", "1", env=env)
    while len([i for i in await project_images(client, tenant) if i["hash"]]) < 3:
        assert proc.returncode is None, "the import finished before it could be killed: give it more files"
        await asyncio.sleep(0.05)
    proc.send_signal(stop)
    _, err = await proc.communicate()
    if stop == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "interrupted; run the same command again to continue" in err.decode(), err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert len(await project_images(client, tenant)) < len(photos)

    rerun = await picstore("import", folder, *target(pipe, tenant), env=env)
    assert rerun.code == 0, rerun
    counts = summary_counts(rerun.stdout)
    assert counts["skipped as duplicate"] >= 3 and counts["uploaded"] >= 1 and counts["refused"] == 0, counts
    assert counts["skipped as duplicate"] + counts["uploaded"] == len(photos), counts

    images = await project_images(client, tenant)
    assert sorted(i["hash"] for i in images) == sorted(sha256(p) for p in photos)  # one image per file
    assert {i["filename"] for i in images} == {p.name for p in photos}
    assert next(i for i in images if i["id"] == orphan)["hash"] == sha256(photos[0])  # adopted, not doubled


async def s3_pipeline(client: httpx.AsyncClient, tenant: Tenant, server: S3Server) -> str:
    """An upload profile keeping originals and outputs in the bucket; its short id."""
    h, p, name = tenant.headers(), tenant.project, uuid.uuid4().hex[:8]
    r = await client.post(
        f"/api/projects/{p}/storage_locations",
        headers=h,
        json={
            "name": "seaweedfs",
            "base_location": f"{BUCKET}/{name}",
            "public_url_base": f"{server.endpoint}/{BUCKET}/{name}",
            "provider": {
                "type": "s3",
                "endpoint": server.endpoint,
                "region": "us-east-1",
                "access_key_id": server.access_key,
                "secret_key": server.secret_key,
            },
        },
    )
    assert r.status_code == 201, r.text
    location = r.json()["id"]
    r = await client.post(
        f"/api/projects/{p}/conversion_profiles", headers=h, json={"name": "s3", "output": PROFILE}
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        f"/api/projects/{p}/upload_profiles",
        headers=h,
        json={
            "name": "s3",
            "short_id": f"s3{name}",
            "conversion_profile_id": r.json()["id"],
            "base_storage_location_id": location,
            "output_storage_location_id": location,
        },
    )
    assert r.status_code == 201, r.text
    return f"s3{name}"


async def test_publish_to_s3_uploads_through_the_presigned_url(
    client, tenant, worker, env, seaweedfs, tmp_path
):
    profile = await s3_pipeline(client, tenant, seaweedfs)
    photo = CORPUS / "Landscape_8.jpg"
    log = tmp_path / "api.log"
    with running_api(env, log) as url:
        run = await picstore(
            "publish",
            str(photo),
            "--project",
            tenant.project,
            "--upload-profile",
            profile,
            "--json",
            env=client_env(url, tenant.admin_key),
        )
    assert run.code == 0, run
    record = json.loads(run.stdout)
    assert record["status"] == "uploaded", record
    src = record["picture"]["img"]["src"]
    assert src.startswith(f"{seaweedfs.endpoint}/{BUCKET}/") and httpx.get(src).status_code == 200
    [image] = await project_images(client, tenant)
    assert image["hash"] == sha256(photo)
    assert httpx.get(image["url"]).content == photo.read_bytes()  # the original, in the bucket
    # The api handed out a URL and checked the object; it never carried the bytes itself.
    requests = log.read_text()
    assert re.search(r"POST /api/images/\{image_id\}/upload_url 200", requests), requests[-2000:]
    assert re.search(r"POST /api/images/\{image_id\}/complete 200", requests), requests[-2000:]
    assert not re.search(r"POST /api/images/\{image_id\}/upload ", requests), requests[-2000:]
