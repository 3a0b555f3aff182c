"""/metrics after real work, the exposition format, and the logs: one JSON line per request and per job,
and no API key or secret in any line."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from typing import Any

import pytest
from conftest import CORPUS, make_pipeline, wait_settled
from procrastinate import JobContext
from procrastinate.jobs import Job

from picstore import jobs, logs, metrics, tasks, webhooks

LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? (\S+)$'
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
QUICK_UPLOAD = "/api/projects/{project_id}/quick_upload"


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every non-comment line must be `name{labels} value`."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"not an exposition line: {line!r}"
        samples[(match[1], frozenset(LABEL.findall(match[2] or "")))] = float(match[3])
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}; have {[k for k in samples if k[0] == name]}"
    return samples[key]


async def test_metrics_after_an_upload(client, tenant, worker):
    pipe = await make_pipeline(client, tenant)
    data = (CORPUS / "Landscape_8.jpg").read_bytes()
    r = await client.post(
        f"/api/projects/{tenant.project}/quick_upload",
        params={"upload_profile": pipe["short_id"]},
        content=data,
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    done = await wait_settled(client, tenant, r.json()["id"])
    assert done["status"] == "ready"
    assert (await client.get("/no/such/route")).status_code == 404
    assert (await client.request("BREW", "/api/health")).status_code >= 400

    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = parse(r.text)
    assert (
        value(samples, "picstore_http_requests_total", method="POST", route=QUICK_UPLOAD, status="201") >= 1
    )
    assert value(samples, "picstore_http_requests_total", method="GET", route="unmatched", status="404") >= 1
    assert value(samples, "picstore_upload_bytes_total", method="POST", route=QUICK_UPLOAD) >= len(data)
    assert (
        value(samples, "picstore_http_request_duration_seconds_count", method="POST", route=QUICK_UPLOAD) >= 1
    )
    assert value(samples, "picstore_jobs", task=jobs.CONVERT, status="succeeded") >= 1
    assert value(samples, "picstore_queue_depth", queue=jobs.QUEUE) >= 0
    assert value(samples, "picstore_database_up") == 1
    for fmt in ("avif", "webp", "jpg"):
        mine = sum(o["file_size"] for o in done["output"] if o["format"] == fmt)
        assert value(samples, "picstore_output_bytes", format=fmt) >= mine > 0
        buckets = sorted(
            (float("inf") if dict(labels)["le"] == "+Inf" else float(dict(labels)["le"]), n)
            for (name, labels), n in samples.items()
            if name == "picstore_conversion_seconds_bucket" and dict(labels)["format"] == fmt
        )
        counts = [n for _, n in buckets]
        assert counts == sorted(counts) and counts[-1] == value(
            samples, "picstore_conversion_seconds_count", format=fmt
        )
        assert counts[-1] >= 2 and value(samples, "picstore_conversion_seconds_sum", format=fmt) > 0
    assert not any(tenant.project in v for _, labels in samples for _, v in labels), (
        "raw paths leaked into labels"
    )
    methods = {
        v
        for name, labels in samples
        if name == "picstore_http_requests_total"
        for k, v in labels
        if k == "method"
    }
    assert "other" in methods and "BREW" not in methods


def test_exposition_escapes_label_values_and_renders_histograms():
    family = metrics.Family(
        "x", "histogram", "help", metrics.histogram_samples((("k", 'a"b\\c\nd'),), (0.5, 1.0), [1, 2, 3], 4.5)
    )
    assert metrics.exposition([family]).splitlines() == [
        "# HELP x help",
        "# TYPE x histogram",
        'x_bucket{k="a\\"b\\\\c\\nd",le="0.5"} 1',
        'x_bucket{k="a\\"b\\\\c\\nd",le="1"} 2',
        'x_bucket{k="a\\"b\\\\c\\nd",le="+Inf"} 3',
        'x_sum{k="a\\"b\\\\c\\nd"} 4.5',
        'x_count{k="a\\"b\\\\c\\nd"} 3',
    ]


@pytest.fixture
def log_lines() -> Any:
    """What logs.configure writes, captured (a StringIO is not a TTY, so the lines are JSON)."""
    stream = io.StringIO()
    logs.configure("INFO", stream)
    yield lambda: stream.getvalue()
    logs.configure("INFO")


async def test_one_json_line_per_request_and_no_key_in_any_line(client, tenant, log_lines):
    key = tenant.admin_key
    r = await client.get("/api/projects", headers={**tenant.headers(), "X-Request-Id": "trace-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42"
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert (
        await client.get("/api/projects", headers={"Authorization": f"Bearer {wrong_secret}"})
    ).status_code == 401
    r = await client.get(
        f"/api/projects/{tenant.project}", headers={**tenant.headers(), "X-Request-Id": "bad id!"}
    )
    generated = r.headers["x-request-id"]
    assert generated != "bad id!"
    logging.getLogger("picstore.test").warning("a careless line: Authorization: Bearer %s, key %s", key, key)

    text = log_lines()
    assert key not in text and wrong_secret not in text and key.split(".")[2] not in text
    lines = [json.loads(line) for line in text.splitlines()]
    requests = [e for e in lines if e["logger"] == "picstore.requests"]
    first = next(e for e in requests if e["request_id"] == "trace-42")
    assert (first["method"], first["route"], first["status"], first["level"]) == (
        "GET",
        "/api/projects",
        200,
        "info",
    )
    assert isinstance(first["duration_ms"], float) and first["path"] == "/api/projects"
    assert [e["status"] for e in requests if e["route"] == "/api/projects"] == [200, 401]
    assert next(e for e in requests if e["request_id"] == generated)["route"] == "/api/projects/{project_id}"
    assert any("ps1.<redacted>" in e["msg"] for e in lines if e["logger"] == "picstore.test")
    # Request lines take a shorter road than logging's (logs.access); the shape is that of any other line.
    careless = next(e for e in lines if e["logger"] == "picstore.test")
    assert list(first)[:4] == list(careless)[:4] == ["ts", "level", "logger", "msg"]
    assert first["ts"][:10] == careless["ts"][:10] and first["msg"] == "GET /api/projects 200"


async def test_request_lines_follow_the_log_level(client, tenant):
    stream = io.StringIO()
    logs.configure("WARNING", stream)
    try:
        assert (await client.get("/api/projects", headers=tenant.headers())).status_code == 200
        logging.getLogger("picstore.test").warning("a warning")
    finally:
        logs.configure("INFO")
    assert [json.loads(line)["logger"] for line in stream.getvalue().splitlines()] == ["picstore.test"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Bearer abc.def", "Bearer <redacted>"),
        ("AUTHORIZATION: BEARER abc.def", "AUTHORIZATION: Bearer <redacted>"),
        ("Bearer ps1.AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB", "Bearer <redacted>"),
        (
            "PS1.AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB",
            "PS1.AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB",
        ),
        (
            "https://a:b@x and ps1.AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB",
            "https://<redacted>@x and ps1.<redacted>",
        ),
        ("key=ps1.AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB end", "key=ps1.<redacted> end"),
        ("secret whsec_abc-DEF_123", "secret whsec_<redacted>"),
        ("postgresql://user:hunter2@db/x", "postgresql://<redacted>@db/x"),
        ("nothing to hide", "nothing to hide"),
    ],
)
def test_redaction(line, expected):
    assert logs.redact(line) == expected


def _context(task: str, **kwargs: Any) -> JobContext:
    job = Job(
        id=7, queue=jobs.QUEUE, lock=None, queueing_lock=None, task_name=task, task_kwargs=kwargs, attempts=1
    )
    return JobContext(app=jobs.app, job=job, start_timestamp=time.time(), abort_reason=lambda: None)


async def test_one_line_per_job_with_outcome(log_lines):
    async def succeed() -> str:
        logging.getLogger("picstore.worker").info("working")
        return "done"

    async def retry() -> None:
        raise webhooks.RetryLater(0.1, "HTTP 500")

    assert await tasks._log_job(succeed, _context(jobs.CONVERT, image_id="abc"), None) == "done"
    with pytest.raises(webhooks.RetryLater):
        await tasks._log_job(retry, _context(jobs.DELIVER, delivery_id="def"), None)

    working, converted, delivery = [json.loads(line) for line in log_lines().splitlines()]
    assert (working["msg"], working["image_id"], working["job_id"]) == ("working", "abc", 7)
    assert (converted["task"], converted["image_id"], converted["outcome"], converted["attempt"]) == (
        jobs.CONVERT,
        "abc",
        "succeeded",
        2,
    )
    assert converted["duration_ms"] >= 0 and converted["error"] is None
    assert (delivery["delivery_id"], delivery["outcome"]) == ("def", "retrying")
    assert "HTTP 500" in delivery["error"]
