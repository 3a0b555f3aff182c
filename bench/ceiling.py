"""The framework's ceiling: a trivial Litestar JSON endpoint served exactly like `picstore serve` serves.

Same uvicorn.run arguments as picstore.cli.cmd_serve (one process, same loop and HTTP implementation,
access log off); no database, no auth, no dependencies. `python -m bench.ceiling PORT`.
"""

from __future__ import annotations

import sys

import uvicorn
from litestar import Litestar, get


@get("/ping")
async def ping() -> dict[str, bool]:
    return {"ok": True}


def create_app() -> Litestar:
    return Litestar(route_handlers=[ping], debug=False)


def main(port: int) -> None:
    uvicorn.run(
        "bench.ceiling:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        workers=1,
        access_log=False,
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
