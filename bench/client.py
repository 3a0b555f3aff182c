"""HTTP steps every section shares: one-call uploads and waiting for outputs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

POLL_S = 0.02


async def quick_upload(
    client: httpx.AsyncClient, project: str, data: bytes, filename: str, profile: str, dedupe: bool = False
) -> httpx.Response:
    return await client.post(
        f"/api/projects/{project}/quick_upload",
        params={"filename": filename, "upload_profile": profile, "dedupe": str(dedupe).lower()},
        content=data,
    )


async def wait_settled(client: httpx.AsyncClient, image_id: str, timeout: float = 600) -> dict[str, Any]:
    """Poll GET /api/images/{id} every 20 ms until the image is ready or failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/api/images/{image_id}")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if body["status"] in ("ready", "failed"):
            return body
        await asyncio.sleep(POLL_S)
    raise TimeoutError(f"image {image_id} did not settle within {timeout} s")


async def convert_through_api(
    client: httpx.AsyncClient, project: str, profile: str, path: Path, filename: str
) -> tuple[float, dict[str, Any]]:
    """Seconds from the upload request's start until every output is ready, and the final image."""
    data = path.read_bytes()
    started = time.perf_counter()
    response = await quick_upload(client, project, data, filename, profile)
    if response.status_code != 201:
        raise RuntimeError(f"quick_upload of {path.name} answered {response.status_code}: {response.text}")
    body = await wait_settled(client, response.json()["id"])
    seconds = time.perf_counter() - started
    if body["status"] != "ready":
        raise RuntimeError(f"{path.name} did not convert: {body['error']}")
    return seconds, body


def ready_outputs(image: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in image["output"] if o["status"] == "ready"]
