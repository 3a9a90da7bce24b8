"""API access benchmark: GET/PUT latency with 200 SSE watchers and 50 writers; write-to-event delay at every watcher.

Starts a private etcd and `hostplane api` (a separate process) on loopback. 50 writer
connections each loop PUT-then-GET on their own Plan (admin token; every PUT a real
compare-and-swap). Phase 1 runs the writers alone (the baseline); phase 2 adds 200 SSE
watchers on /v1/watch?kinds=plans, half with the admin token and half with customer tokens
(ten customers; their streams go through per-principal filtering), all fed by the API's one
shared etcd watch. For every write, each watcher's receipt time is compared with the writer's
request start and answer. Clients are minimal asyncio HTTP/1.1 connections (see bench_api).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from reconcile.etcd_server import EtcdServer
from tests.bench.bench_api import RawConnection, api_process, pct, plan

WRITERS = 50
WATCHERS = 200
CUSTOMERS = 10
ROUNDS = 20  # PUT + GET per writer per phase
_SPEC_EVENT = re.compile(rb'"part":"spec","kind":"Plan","name":"[^"]*","resourceVersion":"(\d+)"')


class Watcher:
    """One SSE stream on a raw connection; records (resourceVersion -> receipt time) of plan events."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.seen: dict[int, float] = {}
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        self.writer.write((f"GET /v1/watch?kinds=plans HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Authorization: Bearer {self.token}\r\nAccept: text/event-stream\r\n\r\n").encode())
        await self.writer.drain()
        status = (await reader.readline()).split()[1]
        if status != b"200":
            raise RuntimeError(f"watch answered {status!r}")
        # One regex pass per chunk read: the load generator shares the cores with the server.
        tail = b""
        while chunk := await reader.read(1 << 16):
            now = time.perf_counter()
            text = tail + chunk
            cut = text.rfind(b"\n")
            tail, text = text[cut + 1:], text[:cut + 1]
            if not self.ready.is_set() and b": watching" in text:
                self.ready.set()
            for m in _SPEC_EVENT.finditer(text):
                self.seen[int(m.group(1))] = now

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


async def writers_phase(port: int, token: str, tag: str) -> dict[str, Any]:
    conns = [RawConnection(port, token) for _ in range(WRITERS)]
    await asyncio.gather(*(c.open() for c in conns))
    versions: dict[int, str] = {}
    for i, c in enumerate(conns):
        status, body = await c.request("POST", "/v1/plans", json.dumps(plan(f"{tag}-{i}", 1)).encode())
        assert status == 201, (status, body[:200])
        versions[i] = json.loads(body)["metadata"]["resourceVersion"]
    gets: list[float] = []
    puts: list[float] = []
    writes: dict[int, tuple[float, float]] = {}  # resourceVersion -> (request start, answer)
    errors: list[int] = []

    async def worker(i: int) -> None:
        for k in range(ROUNDS):
            body = json.dumps(plan(f"{tag}-{i}", 2 + k % 2, versions[i])).encode()
            t0 = time.perf_counter()
            status, resp = await conns[i].request("PUT", f"/v1/plans/{tag}-{i}", body)
            t1 = time.perf_counter()
            puts.append(t1 - t0)
            if status != 200:
                errors.append(status)
                continue
            versions[i] = json.loads(resp)["metadata"]["resourceVersion"]
            writes[int(versions[i])] = (t0, t1)
            t2 = time.perf_counter()
            status, _ = await conns[i].request("GET", f"/v1/plans/{tag}-{i}")
            gets.append(time.perf_counter() - t2)
            if status != 200:
                errors.append(status)

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(WRITERS)))
    wall = time.perf_counter() - start
    for c in conns:
        c.close()
    return {"gets": gets, "puts": puts, "writes": writes, "errors": errors, "wall": wall}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(port: int, admin: str, customer_tokens: list[str], pid: int, etcd_pid: int) -> dict[str, Any]:
    cpu0 = cpu_seconds(pid)
    baseline = await writers_phase(port, admin, "base")
    baseline["cpu"] = cpu_seconds(pid) - cpu0
    watchers = [Watcher(port, admin if i % 2 == 0 else customer_tokens[i % len(customer_tokens)])
                for i in range(WATCHERS)]
    for w in watchers:
        w.start()
    await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in watchers)), 60)
    cpu0 = cpu_seconds(pid)
    gen0, etcd0, wall0 = cpu_seconds(os.getpid()), cpu_seconds(etcd_pid), time.perf_counter()
    loaded = await writers_phase(port, admin, "load")
    wall = time.perf_counter() - wall0
    loaded["shares"] = {"api": (cpu_seconds(pid) - cpu0) / wall, "etcd": (cpu_seconds(etcd_pid) - etcd0) / wall,
                        "load generator": (cpu_seconds(os.getpid()) - gen0) / wall}
    await asyncio.sleep(2.0)  # let the last events arrive
    loaded["cpu"] = cpu_seconds(pid) - cpu0
    for w in watchers:
        w.stop()
    after_answer: list[float] = []
    after_start: list[float] = []
    missing = 0
    per_watcher_missing: dict[int, int] = defaultdict(int)
    for n, w in enumerate(watchers):
        for rv, (t0, t1) in loaded["writes"].items():
            got = w.seen.get(rv)
            if got is None:
                missing += 1
                per_watcher_missing[n] += 1
                continue
            after_start.append(got - t0)
            after_answer.append(max(0.0, got - t1))
    return {"baseline": baseline, "loaded": loaded, "after_answer": after_answer, "after_start": after_start,
            "missing": missing, "expected": len(loaded["writes"]) * WATCHERS}


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd").start()
        try:
            with api_process(Path(tmp), etcd.endpoint) as api:
                tokens = []
                with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api.admin_token}"},
                                  timeout=10) as c:
                    for i in range(CUSTOMERS):
                        c.post("/v1/customers", json={"metadata": {"name": f"c{i}"},
                                                      "spec": {"email": f"c{i}@example.com"}}).raise_for_status()
                        r = c.post("/v1/tokens", json={"role": "customer", "customer": f"c{i}"})
                        r.raise_for_status()
                        tokens.append(r.json()["token"])
                assert etcd.proc is not None
                res = asyncio.run(drive(api.port, api.admin_token, tokens, api.proc.pid, etcd.proc.pid))
        finally:
            etcd.stop()
    return report(res)


def report(res: dict[str, Any]) -> str:
    b, ld = res["baseline"], res["loaded"]

    def row(name: str, phase: dict[str, Any], key: str) -> str:
        s = phase[key]
        return (f"| {name} | {len(s)} | {pct(s, 0.5):.1f} | {pct(s, 0.99):.1f} | {len(phase['errors'])} |")

    delivered = res["expected"] - res["missing"]
    ratio_get = pct(ld["gets"], 0.99) / max(pct(b["gets"], 0.99), 1e-9)
    ratio_put = pct(ld["puts"], 0.99) / max(pct(b["puts"], 0.99), 1e-9)
    return (
        "## API access\n\n"
        f"`tests/bench/bench_access.py`: one `hostplane api` process and a single-member etcd on loopback on the\n"
        f"same {os.cpu_count()}-core machine as the load generator. {WRITERS} writer connections each loop PUT then\n"
        f"GET on their own Plan ({ROUNDS} rounds; admin token; every PUT a compare-and-swap write plus its audit\n"
        f"record). Baseline: the writers alone. Loaded: the same writers with {WATCHERS} SSE watchers on\n"
        f"`/v1/watch?kinds=plans`, half admin, half customer tokens ({CUSTOMERS} customers, filtered per\n"
        "principal), all fed by the process's one shared etcd watch. Latency client-side, ms.\n\n"
        "| requests | n | p50 ms | p99 ms | errors |\n| --- | ---: | ---: | ---: | ---: |\n"
        f"{row('GET, baseline', b, 'gets')}\n{row('PUT, baseline', b, 'puts')}\n"
        f"{row(f'GET, {WATCHERS} watchers', ld, 'gets')}\n{row(f'PUT, {WATCHERS} watchers', ld, 'puts')}\n\n"
        f"p99 with watchers / baseline: GET {ratio_get:.2f}x, PUT {ratio_put:.2f}x (targets: p99 <= 100 ms).\n"
        f"API process CPU: baseline {b['cpu']:.1f} s, with watchers {ld['cpu']:.1f} s (for "
        f"{res['expected'] - res['missing']} deliveries: "
        f"{max(0.0, ld['cpu'] - b['cpu']) / max(1, res['expected'] - res['missing']) * 1e6:.0f} us per event per "
        "watcher).\n\n"
        "CPU while loaded (cores): " + ", ".join(f"{k} {v:.2f}" for k, v in ld["shares"].items()) + ".\n\n"
        "| write to event at every watcher | samples | p50 ms | p99 ms | max ms |\n"
        "| --- | ---: | ---: | ---: | ---: |\n"
        f"| after the PUT's answer | {len(res['after_answer'])} | {pct(res['after_answer'], 0.5):.1f} | "
        f"{pct(res['after_answer'], 0.99):.1f} | {max(res['after_answer'] or [0]) * 1000:.1f} |\n"
        f"| after the PUT was sent | {len(res['after_start'])} | {pct(res['after_start'], 0.5):.1f} | "
        f"{pct(res['after_start'], 0.99):.1f} | {max(res['after_start'] or [0]) * 1000:.1f} |\n\n"
        f"Events delivered: {delivered} of {res['expected']} (every write at every watcher; target p99 <= 200 ms).\n"
    )


if __name__ == "__main__":
    print(run())
