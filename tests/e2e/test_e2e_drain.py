"""SIGTERM during load: the server stops taking requests (503), answers every request it had
accepted, then exits with status 0."""

from __future__ import annotations

import asyncio
import time

import httpx


def test_sigterm_drains_every_accepted_request(start_server):
    # One input per batch, so a burst leaves a long queue to drain.
    srv = start_server(
        "--max-batch-size", "1", "--drain-timeout-s", "60", "--queue-capacity", "1024"
    )  # room for the whole burst: this test is about draining, not admission
    n = 300

    async def load() -> tuple[list[tuple[int | str, float]], float]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(
            base_url=srv.url, timeout=60, limits=limits, trust_env=False
        ) as c:
            first_answer = asyncio.Event()

            async def one(i: int) -> tuple[int | str, float]:
                try:
                    r = await c.post("/predict", json={"inputs": f"good movie {i % 7}"})
                except httpx.ConnectError:
                    return "refused", time.monotonic()  # never accepted: socket closed
                except httpx.HTTPError as e:
                    return type(e).__name__, time.monotonic()  # accepted, then lost: a bug
                if r.status_code == 200:
                    first_answer.set()
                return r.status_code, time.monotonic()

            tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
            await asyncio.wait_for(first_answer.wait(), 60)
            srv.proc.send_signal(15)  # SIGTERM while most requests still wait
            signalled = time.monotonic()
            while "received SIGTERM" not in srv.output():  # the server has seen it
                await asyncio.sleep(0.005)
            late = asyncio.ensure_future(one(n))  # arrives while draining
            results = await asyncio.gather(*tasks, late)
            return results, signalled

    results, signalled = asyncio.run(load())
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503, "refused"}, statuses
    after = [s for s, t in results if s == 200 and t > signalled]
    assert after, "no request was answered after SIGTERM: the drain was not exercised"
    assert 503 in statuses  # requests that came during the drain were refused, not queued
    assert srv.proc.wait(60) == 0
    log = srv.output()
    assert "received SIGTERM: draining" in log and "drained every request" in log
    # The server's own account: it answered exactly the requests the client saw answered.
    assert log.count("POST /predict 200") == statuses.count(200)
    assert log.count("POST /predict 503") == statuses.count(503)
