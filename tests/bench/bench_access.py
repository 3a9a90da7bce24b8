"""API access benchmark: GET/PUT latency with 200 SSE watchers and 50 writers; write-to-event delay at every watcher.

Starts a private etcd and `hostplane api` (a separate process) on loopback. 50 writers, each
on its own keep-alive connection, repeat a round of PUT-then-GET on their own Plan (admin
token; every PUT a real compare-and-swap plus its audit record). 200 SSE watchers on
/v1/watch?kinds=plans, half with the admin token and half with customer tokens (ten
customers; their streams go through per-principal filtering), are all fed by the API's one
shared etcd watch. For every write, each watcher's receipt time is compared with the
writer's request start and answer.

Phases, all in one run against the same process:
* closed loop without watchers (the baseline) and with the watchers: every writer starts its
  next round as soon as the last one ends, so the API is saturated by construction and the
  latency is the queue that 50 writers build (Little's law: latency = 50 / throughput);
* paced with the watchers: every writer starts a round every 1/RATE s on a fixed schedule
  (open loop: a late round is measured from when it was due, so a slow server cannot hide
  its queue), at several rates, to show the latency at a given load and where it breaks.

Clients are minimal asyncio HTTP/1.1 connections (see bench_api). On a machine with two or more
cores the API process is pinned to the first and etcd and the load generator to the others, so
the generator's bursts do not preempt the server it measures (the API is one event loop: it
uses one core at most).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from reconcile.etcd_server import EtcdServer
from tests.bench.bench_api import RawConnection, api_process, pct, plan

WRITERS = 50
WATCHERS = 200
CUSTOMERS = 10
ROUNDS = 20  # PUT + GET per writer per phase
RATES = (2.0, 4.0, 6.0)  # paced phases: rounds per second per writer
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


def pin(pid: int, cpus: set[int]) -> None:
    """Keep every thread of `pid` (and threads it starts later) on `cpus`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def writers_phase(port: int, token: str, tag: str, rate: float | None, pids: dict[str, int]) -> dict[str, Any]:
    """One phase: every writer does ROUNDS rounds, back to back (rate None) or one every 1/rate s."""
    conns = [RawConnection(port, token) for _ in range(WRITERS)]
    await asyncio.gather(*(c.open() for c in conns))
    versions: dict[int, str] = {}
    for i, c in enumerate(conns):
        status, body = await c.request("POST", "/v1/plans", json.dumps(plan(f"{tag}-{i}", 1)).encode())
        assert status == 201, (status, body[:200])
        versions[i] = json.loads(body)["metadata"]["resourceVersion"]
    gets: list[float] = []
    puts: list[float] = []
    writes: dict[int, tuple[float, float]] = {}  # resourceVersion -> (request due, answer)
    errors: list[int] = []
    start = time.perf_counter() + 0.05

    async def worker(i: int) -> None:
        for k in range(ROUNDS):
            due = time.perf_counter()
            if rate is not None:
                # Writers spread evenly over the period; a late round starts at once, measured from `due`.
                due = start + (k + i / WRITERS) / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            body = json.dumps(plan(f"{tag}-{i}", 2 + k % 2, versions[i])).encode()
            status, resp = await conns[i].request("PUT", f"/v1/plans/{tag}-{i}", body)
            answered = time.perf_counter()
            puts.append(answered - due)
            if status != 200:
                errors.append(status)
                continue
            versions[i] = json.loads(resp)["metadata"]["resourceVersion"]
            writes[int(versions[i])] = (due, answered)
            t2 = time.perf_counter()
            status, _ = await conns[i].request("GET", f"/v1/plans/{tag}-{i}")
            gets.append(time.perf_counter() - t2)
            if status != 200:
                errors.append(status)

    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(WRITERS)))
    wall = time.perf_counter() - t0
    shares = {name: (cpu_seconds(pid) - cpu0[name]) / wall for name, pid in pids.items()}
    for c in conns:
        c.close()
    return {"gets": gets, "puts": puts, "writes": writes, "errors": errors, "wall": wall, "shares": shares,
            "rate": rate, "api_cpu": shares["api"] * wall}


def deliveries(phase: dict[str, Any], watchers: list[Watcher]) -> None:
    """Add to `phase` the delay of every write at every watcher (from the request and from its answer)."""
    after_answer: list[float] = []
    after_start: list[float] = []
    missing = 0
    for w in watchers:
        for rv, (t0, t1) in phase["writes"].items():
            got = w.seen.get(rv)
            if got is None:
                missing += 1
                continue
            after_start.append(got - t0)
            after_answer.append(max(0.0, got - t1))
    phase.update(after_answer=after_answer, after_start=after_start, missing=missing,
                 expected=len(phase["writes"]) * len(watchers))


async def drive(port: int, admin: str, customer_tokens: list[str], pids: dict[str, int]) -> list[dict[str, Any]]:
    phases = [await writers_phase(port, admin, "base", None, pids)]
    watchers = [Watcher(port, admin if i % 2 == 0 else customer_tokens[i % len(customer_tokens)])
                for i in range(WATCHERS)]
    for w in watchers:
        w.start()
    await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in watchers)), 60)
    for n, rate in enumerate((None, *RATES)):
        phase = await writers_phase(port, admin, f"load{n}", rate, pids)
        await asyncio.sleep(2.0)  # let the last events arrive
        deliveries(phase, watchers)
        phases.append(phase)
    for w in watchers:
        w.stop()
    return phases


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd").start()
        try:
            with api_process(Path(tmp), etcd.args("api")) as api:
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
                pids = {"api": api.proc.pid, "etcd": etcd.proc.pid, "load generator": os.getpid()}
                if len(os.sched_getaffinity(0)) >= 2:
                    # The API on a core of its own; etcd and the load generator share the other.
                    cpus = sorted(os.sched_getaffinity(0))
                    pin(api.proc.pid, {cpus[0]})
                    pin(etcd.proc.pid, set(cpus[1:]))
                    pin(os.getpid(), set(cpus[1:]))
                phases = asyncio.run(drive(api.port, api.admin_token, tokens, pids))
        finally:
            etcd.stop()
    return report(phases)


def _name(phase: dict[str, Any], watchers: bool) -> str:
    load = "closed loop" if phase["rate"] is None else f"{phase['rate']:g}/s per writer"
    return f"{load}, {WATCHERS if watchers else 0} watchers"


def report(phases: list[dict[str, Any]]) -> str:
    rows = []
    for n, ph in enumerate(phases):
        rounds = len(ph["puts"]) / ph["wall"]
        rows.append(f"| {_name(ph, n > 0)} | {rounds:.0f} | {pct(ph['gets'], 0.5):.1f} | {pct(ph['gets'], 0.99):.1f} | "
                    f"{pct(ph['puts'], 0.5):.1f} | {pct(ph['puts'], 0.99):.1f} | {len(ph['errors'])} | "
                    f"{ph['shares']['api']:.2f} / {ph['shares']['etcd']:.2f} / {ph['shares']['load generator']:.2f} |")
    events = []
    for ph in phases[1:]:
        events.append(f"| {_name(ph, True)} | {ph['expected'] - ph['missing']} of {ph['expected']} | "
                      f"{pct(ph['after_answer'], 0.5):.1f} | {pct(ph['after_answer'], 0.99):.1f} | "
                      f"{pct(ph['after_start'], 0.5):.1f} | {pct(ph['after_start'], 0.99):.1f} | "
                      f"{max(ph['after_start'] or [0]) * 1000:.1f} |")
    closed, base = phases[1], phases[0]
    fan_out = max(0.0, closed["api_cpu"] / len(closed["puts"]) - base["api_cpu"] / len(base["puts"]))
    per_delivery = fan_out * len(closed["puts"]) / max(1, closed["expected"] - closed["missing"])
    return (
        "## API access\n\n"
        f"`tests/bench/bench_access.py`: one `hostplane api` process and a single-member etcd on loopback on the\n"
        f"same {os.cpu_count()}-core machine as the load generator (the API pinned to one core, etcd and the load\n"
        f"generator to the other). {WRITERS} writers each repeat a round of PUT then\n"
        f"GET on their own Plan ({ROUNDS} rounds per phase; admin token; every PUT a compare-and-swap write plus\n"
        f"its audit record). {WATCHERS} SSE watchers on `/v1/watch?kinds=plans`, half admin, half customer tokens\n"
        f"({CUSTOMERS} customers, filtered per principal), all fed by the process's one shared etcd watch.\n"
        "Closed loop: each writer starts its next round at once (the API saturated by construction).\n"
        "Paced: each writer starts a round every 1/rate s on a fixed schedule; a PUT is timed from when it\n"
        "was due. Latency client-side, ms; rounds/s = PUTs (and GETs) per second over all writers.\n\n"
        "| phase | rounds/s | GET p50 | GET p99 | PUT p50 | PUT p99 | errors | CPU cores api / etcd / load |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n" + "\n".join(rows) + "\n\n"
        "Write to event at every watcher (ms): from the PUT's answer, and from when it was sent (due).\n\n"
        "| phase | events delivered | after answer p50 | p99 | after sent p50 | p99 | max |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(events) + "\n\n"
        f"Watch fan-out CPU in the API (closed loop): {per_delivery * 1e6:.1f} us per event per watcher.\n"
    )


if __name__ == "__main__":
    print(run())
