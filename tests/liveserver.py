"""A real `picstore serve` process on a loopback port, for tests whose client is outside Python's
reach (a browser) or must talk over real HTTP (the publishing CLI).

The server uses the test database and storage roots from the `env` fixture; its public URL is its
own address, so the `/files` route serves local storage outputs to whoever fetches them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"picstore serve exited with {proc.returncode} before answering")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    raise RuntimeError(f"picstore serve did not answer on {url} within {START_TIMEOUT} s")


@contextmanager
def running_api(env: dict[str, str], log: Path | None = None) -> Iterator[str]:
    """Start the api, yield its base URL (http://127.0.0.1:PORT), stop it with SIGTERM.

    With `log`, the server's output (its request log included) goes to that file for the test to read."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    output = None if log is None else log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "picstore", "serve"],
        env={**env, "PICSTORE_HOST": "127.0.0.1", "PICSTORE_PORT": str(port), "PICSTORE_PUBLIC_URL": url},
        cwd=ROOT,
        stdout=output,
        stderr=output,
    )
    if output is not None:
        output.close()  # the child has its own copy
    try:
        _wait_healthy(proc, url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
