"""How long one request body holds the server's event loop.

Builds the app of ``shoal serve COHORT`` (default flags, one thread) in this process and hands
it bodies straight over ASGI, in 64 KiB messages as uvicorn does, while a heartbeat task on the
same loop wakes every millisecond; the longest gap between two wake-ups, less the millisecond,
is the longest the loop was held. The bodies: one short text (the heartbeat's own jitter, for
reference), ``--mib`` MiB of one-word batch items (``{"inputs": [["a"], ["a"], ...]}``,
refused with 413), and the largest valid batch as ``json.dumps`` sends it by default
(``max_client_batch_size`` pairs of ``max_input_chars`` characters outside the BMP, escaped;
answered). Prints one JSON object.

    python scripts/loop_block.py runs/demo/cohort --mib 2.5 --repeats 5

Reproduces the loop-block table of docs/results/serve.md ("Request bodies").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from shoal.serve.server import ServeConfig, build_app

TICK_S = 0.001


CHUNK = 1 << 16
"""Bytes per ``http.request`` message, as uvicorn hands a body over."""


def split(body: bytes) -> list[bytes]:
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]


async def post(app: Any, chunks: list[bytes]) -> tuple[int, dict[str, Any]]:
    """POST a body of ``chunks`` to /predict straight into the ASGI app: the status and the
    JSON answer (no client shares the loop)."""
    chunks = list(chunks)
    size = sum(map(len, chunks))
    sent: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(size).encode()),
        ],
    }
    await app(scope, receive, send)
    done.set()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    answer = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(answer)


async def held_ms(app: Any, body: bytes) -> tuple[float, float, int, dict[str, Any]]:
    """The longest the loop was held while ``body`` was posted, the request's own time (both
    in ms), the status and the answer."""
    chunks = split(body)
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            gaps.append(now - last - TICK_S)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.05)  # the heartbeat's own rhythm first
    gaps.clear()
    started = time.perf_counter()
    status, answer = await post(app, chunks)
    took = time.perf_counter() - started
    await asyncio.sleep(0.01)
    stop.set()
    await beat
    return max(gaps) * 1e3, took * 1e3, status, answer


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    config = ServeConfig(threads=1, profile_cache=args.profile_cache)
    n, chars = config.max_client_batch_size, config.max_input_chars
    item = json.dumps(["a"]) + ", "
    items = int(args.mib * (1 << 20)) // len(item)
    bodies = {
        "small": json.dumps({"inputs": "a good movie"}).encode(),
        "items": json.dumps({"inputs": [["a"]] * items}).encode(),
        "largest_valid": json.dumps({"inputs": [["😀" * chars, "😀" * chars]] * n}).encode(),
    }
    app = build_app(args.cohort, config)
    out: dict[str, Any] = {"body_limit": config.body_limit, "max_client_batch_size": n}
    async with app.router.lifespan_context(app):
        await post(app, split(json.dumps({"inputs": "warm up"}).encode()))
        for name, body in bodies.items():
            runs = [await held_ms(app, body) for _ in range(args.repeats)]
            held = [round(ms, 2) for ms, _, _, _ in runs]
            took = [round(ms, 1) for _, ms, _, _ in runs]
            _, _, status, answer = runs[-1]
            out[name] = {
                "body_bytes": len(body),
                "status": status,
                "error": answer.get("error") if isinstance(answer, dict) else None,
                "loop_held_ms": held,
                "loop_held_ms_median": round(statistics.median(held), 2),
                "loop_held_ms_max": max(held),
                "request_ms_median": round(statistics.median(took), 1),
            }
    out["items"]["items"] = items
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cohort", help="cohort folder (as for shoal serve)")
    parser.add_argument("--mib", type=float, default=2.5, help="size of the items body, MiB")
    parser.add_argument("--repeats", type=int, default=5, help="bodies of each kind")
    parser.add_argument("--profile-cache", default=None, help="as shoal serve --profile-cache")
    args = parser.parse_args()
    if args.mib <= 0 or args.repeats < 1:
        raise SystemExit(f"error: --mib {args.mib} and --repeats {args.repeats} must be positive")
    print(json.dumps(asyncio.run(measure(args)), indent=2))


if __name__ == "__main__":
    main()
