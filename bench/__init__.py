"""picstore's benchmarks (`scripts/bench`): every comparison runs both of its sides in the same run.

Kept out of the `picstore` package on purpose: nothing here ships with the service. Each section
module (conversion, pillow, api, upload, huge, scale) exposes ``async def run(ctx) -> list[Row]``.
"""
