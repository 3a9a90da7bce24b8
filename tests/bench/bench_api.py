"""API benchmark: single-object GET and PUT latency (p50/p99) and throughput at 50 concurrent clients.

Starts a private etcd and `hostplane api` (a separate process, as deployed) on loopback,
then drives it from this process with 50 asyncio httpx clients for a bounded number of
requests. GETs all read one object; each PUT client replaces its own object (a real
compare-and-swap write every time, never a 409 from a neighbour).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from reconcile.etcd_server import EtcdServer, free_port

CLIENTS = 50
GET_REQUESTS = 4000
PUT_REQUESTS = 2000
HTTPX_GET_REQUESTS = 1000


def plan(name: str, vcpus: int, rv: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if rv is not None:
        # As a client that read the object sends it back; a PUT omitting finalizers costs
        # the API one more etcd read (it keeps the server's).
        meta["resourceVersion"] = rv
        meta["finalizers"] = []
    return {"kind": "Plan", "metadata": meta,
            "spec": {"vcpus": vcpus, "memoryMiB": 1024, "diskGiB": 25, "price": {"amount": "4.49", "currency": "EUR"}}}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


class RawConnection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams.

    The load generator shares two cores with the server and etcd; httpx's async pool spends
    milliseconds of CPU per request at 50 connections and would end up measuring itself.
    """

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        await self.writer.drain()
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def summary(samples: list[float], errors: int, wall: float) -> dict[str, float]:
    return {"n": len(samples), "errors": errors, "p50": pct(samples, 0.50), "p99": pct(samples, 0.99),
            "mean": statistics.fmean(samples) * 1000, "rps": len(samples) / wall}


async def drive(port: int, token: str) -> dict[str, dict[str, float]]:
    conns = [RawConnection(port, token) for _ in range(CLIENTS)]
    await asyncio.gather(*(c.open() for c in conns))
    status, _ = await conns[0].request("POST", "/v1/plans", json.dumps(plan("bench-get", 1)).encode())
    assert status == 201, status
    versions: dict[int, str] = {}
    for i in range(CLIENTS):
        status, body = await conns[0].request("POST", "/v1/plans", json.dumps(plan(f"bench-put-{i}", 1)).encode())
        assert status == 201, status
        versions[i] = json.loads(body)["metadata"]["resourceVersion"]

    async def get_worker(conn: RawConnection, n: int, out: list[float], errors: list[int]) -> None:
        for _ in range(n):
            t = time.perf_counter()
            status, _ = await conn.request("GET", "/v1/plans/bench-get")
            out.append(time.perf_counter() - t)
            if status != 200:
                errors.append(status)

    async def put_worker(i: int, n: int, out: list[float], errors: list[int]) -> None:
        for k in range(n):
            body = json.dumps(plan(f"bench-put-{i}", 2 + k % 2, versions[i])).encode()
            t = time.perf_counter()
            status, resp = await conns[i].request("PUT", f"/v1/plans/bench-put-{i}", body)
            out.append(time.perf_counter() - t)
            if status != 200:
                errors.append(status)
            else:
                versions[i] = json.loads(resp)["metadata"]["resourceVersion"]

    results: dict[str, dict[str, float]] = {}
    for name, total in (("GET", GET_REQUESTS), ("PUT", PUT_REQUESTS)):
        samples: list[float] = []
        errors: list[int] = []
        per = total // CLIENTS
        start = time.perf_counter()
        if name == "GET":
            await asyncio.gather(*(get_worker(c, per, samples, errors) for c in conns))
        else:
            await asyncio.gather(*(put_worker(i, per, samples, errors) for i in range(CLIENTS)))
        results[name] = summary(samples, len(errors), time.perf_counter() - start)
    for c in conns:
        c.close()
    return results


async def drive_httpx(url: str, token: str) -> dict[str, float]:
    """The same GET load through httpx.AsyncClient, for comparison with the raw client."""
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=30) as client:
        samples: list[float] = []
        errors: list[int] = []

        async def worker(n: int) -> None:
            for _ in range(n):
                t = time.perf_counter()
                r = await client.get("/v1/plans/bench-get")
                samples.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append(r.status_code)

        start = time.perf_counter()
        await asyncio.gather(*(worker(HTTPX_GET_REQUESTS // CLIENTS) for _ in range(CLIENTS)))
        return summary(samples, len(errors), time.perf_counter() - start)


@dataclass
class ApiProcess:
    proc: subprocess.Popen[bytes]
    port: int
    url: str
    data: Path
    admin_token: str


@contextmanager
def api_process(tmp: Path, etcd_args: list[str]) -> Iterator[ApiProcess]:
    """`hostplane api` on a free loopback port, ready to serve; stopped by its PID afterwards."""
    port = free_port()
    data = tmp / "var"
    log_path = tmp / "api.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from api.cli import main; main()", "api", *etcd_args,
             "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the API did not start: " + log_path.read_text()[-2000:])
            time.sleep(0.1)
        yield ApiProcess(proc, port, url, data, (data / "admin-token").read_text().strip())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run() -> str:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd").start()
        try:
            with api_process(Path(tmp), etcd.args("api")) as api:
                results = asyncio.run(drive(api.port, api.admin_token))
                results["GET via httpx.AsyncClient"] = asyncio.run(drive_httpx(api.url, api.admin_token))
        finally:
            etcd.stop()
    rows = "\n".join(
        f"| {op} | {r['n']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['mean']:.1f} | {r['rps']:.0f} "
        f"| {r['errors']:.0f} |" for op, r in results.items())
    return (
        "## API\n\n"
        f"`tests/bench/bench_api.py`: {CLIENTS} concurrent keep-alive connections against one `hostplane api`\n"
        "process (uvicorn, one worker, httptools + uvloop) and a single-member etcd, all on loopback on the\n"
        f"same {os.cpu_count()}-core machine. GET reads one object; each PUT connection replaces its own object\n"
        "with compare-and-swap (every PUT is a real etcd write; the body carries resourceVersion and finalizers\n"
        "as read). Latency is client-side, in ms.\n"
        "The load comes from a minimal asyncio HTTP/1.1 client; the last row drives the same GETs through\n"
        "httpx.AsyncClient, whose own CPU cost on the shared cores then dominates.\n\n"
        "| op | requests | p50 ms | p99 ms | mean ms | req/s | errors |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        f"{rows}\n"
    )


if __name__ == "__main__":
    print(run())
