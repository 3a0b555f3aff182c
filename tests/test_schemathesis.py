"""Property-based API tests from picstore's own OpenAPI document (schemathesis).

Every operation in `/schema/openapi.json` gets generated requests, valid and invalid, sent with a team
admin's key to a real `picstore serve` on a loopback port (a real server, so bodies and headers travel as
bytes on a socket exactly as schemathesis builds them). Checked for every response: not a server error, a
status code the document declares, and a body that matches the schema declared for that status.

Path parameters naming the team's real project, image, profiles, storage location and webhook are filled
in with real ids for reads and writes (DELETEs keep the generated ids, so the objects survive the run), so
generated bodies and queries reach the handlers' logic rather than stopping at a 404. The upload routes
declare a raw `application/octet-stream` body, so schemathesis sends them arbitrary bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import CORPUS, make_pipeline, make_tenant
from hypothesis import HealthCheck, settings
from liveserver import running_api
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from picstore.app import create_app
from picstore.settings import Settings

# Per operation: a quick pass in the default suite (about a minute on a loaded 2-core machine), a deeper one
# in `scripts/test --slow`. Derandomized, so a run is reproducible.
MAX_EXAMPLES = 6
MAX_EXAMPLES_SLOW = 25
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_api(env: dict[str, str]) -> Iterator[str]:
    with running_api(env) as url:
        yield url


@pytest.fixture(scope="module")
async def world(sessions: Any, live_api: str) -> dict[str, Any]:
    """One team with a project, a pipeline, an uploaded image and a webhook; ids by path parameter name."""
    tenant = await make_tenant(sessions, "schemathesis")
    async with httpx.AsyncClient(base_url=live_api, timeout=30) as client:
        pipe = await make_pipeline(client, tenant, files_url=f"{live_api}/files")
        h, p = tenant.headers(), tenant.project
        r = await client.post(
            f"/api/projects/{p}/quick_upload",
            params={"upload_profile": pipe["short_id"], "filename": "a.jpg"},
            content=(CORPUS / "Landscape_1.jpg").read_bytes(),
            headers=h,
        )
        assert r.status_code == 201, r.text
        image = r.json()
        r = await client.post(
            f"/api/projects/{p}/webhooks", json={"url": "https://hooks.example.com/x"}, headers=h
        )
        assert r.status_code == 201, r.text
        webhook_id = r.json()["webhook"]["id"]
        r = await client.get(f"/api/projects/{p}/upload_profiles/{pipe['upload_profile']}", headers=h)
        conversion_profile_id = r.json()["conversion_profile_id"]
    return {
        "url": live_api,
        "key": tenant.admin_key,
        "ids": {
            "project_id": p,
            "image_id": image["id"],
            "location_id": pipe["storage_id"],
            "webhook_id": webhook_id,
        },
        "profile_ids": {
            "upload_profiles": pipe["upload_profile"],
            "conversion_profiles": conversion_profile_id,
        },
        "image_hash": image["hash"],
    }


def _document() -> dict[str, Any]:
    """The OpenAPI document the app serves, built without a database (nothing connects before startup).

    Loaded at import because schemathesis' fixture-based loader (`from_fixture`) does not work on pytest 9
    (it sets `node._nodeid`, which pytest 9 no longer has); test_the_served_document_is_this_one checks
    that the live server serves exactly this document."""
    settings = Settings(
        database_url="postgresql+asyncpg://unused@127.0.0.1:1/unused",
        secret_key="unused",
        local_storage_roots=(),
    )
    return create_app(settings).openapi_schema.to_schema()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_served_document_is_this_one(live_api: str) -> None:
    served = httpx.get(f"{live_api}/schema/openapi.json", timeout=30)
    assert served.status_code == 200
    assert served.json() == DOCUMENT


def exercise(case: Any, world: dict[str, Any]) -> None:
    params = case.path_parameters
    if params and case.method != "DELETE":
        for name in params:
            if name in world["ids"]:
                params[name] = world["ids"][name]
        if "profile_id" in params:
            kind = "upload_profiles" if "/upload_profiles/" in case.path else "conversion_profiles"
            params["profile_id"] = world["profile_ids"][kind]
        if "sha256" in params:
            params["sha256"] = world["image_hash"]
    case.call_and_validate(
        base_url=world["url"], headers={"Authorization": f"Bearer {world['key']}"}, checks=CHECKS, timeout=30
    )


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: Any, world: dict[str, Any]) -> None:
    exercise(case, world)


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES_SLOW, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
def test_every_operation_answers_as_documented_deeper(case: Any, world: dict[str, Any]) -> None:
    exercise(case, world)
