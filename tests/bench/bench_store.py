"""Store benchmark: Hostplane's typed store against the raw etcd client, in the same run.

A private etcd is started in a temp dir; the raw client and the store use separate key
prefixes on it. For each operation the raw client does the equivalent etcd work:

* create  — raw: one transaction "put if absent" of the same JSON bytes the store writes;
* update  — raw: one transaction "mod_revision is what I read, then put";
* list    — raw: one range read of the prefix, values materialised as bytes.

The store does what its callers get: models in, validated models out. Each pass alternates
which side goes first and the best of the passes is reported, to keep the two fair against
background noise. Watch latency is the time from the start of a put to the store's watch
callback receiving it, one put at a time.

TLS and RBAC cost: the same raw operations (create, CAS update, list, watch latency) against
the production etcd (TLS, client-certificate auth, RBAC on, as the `controllers` identity) and
against a throw-away plaintext etcd without auth started here for the baseline only (the store
has no plaintext mode). Both etcds run at once and the two sides alternate in chunks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyetcd

from reconcile.etcd import WatchEvent
from reconcile.etcd_server import EtcdServer, free_port
from reconcile.objects import _encode_doc as encode
from specs import Plan

N = 5000
PASSES = 2
CHUNK = 250
LIST_REPEATS = 5
WATCH_SAMPLES = 500


def _plan(i: int, vcpus: int = 1) -> Plan:
    return Plan.model_validate({
        "kind": "Plan",
        "metadata": {"name": f"plan-{i:05d}", "labels": {"tier": ("small", "large")[i % 2], "bench": "store"}},
        "spec": {"vcpus": vcpus, "memoryMiB": 1024, "diskGiB": 25, "trafficGiB": 1000,
                 "price": {"amount": "4.49", "currency": "EUR"}, "description": "A plan for the benchmark"},
    })


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cpu_timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, CPU of this process) seconds: CPU shows the store's own cost without the etcd wait."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


class _Raw:
    """The baseline: the same etcd operations through pyetcd, bytes in and bytes out."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.c = client
        self.prefix = prefix

    def create(self, docs: list[tuple[str, bytes]]) -> None:
        t = self.c.transactions
        for name, value in docs:
            key = self.prefix + name
            ok, _ = self.c.transaction(compare=[t.mod(key) == 0], success=[t.put(key, value)], failure=[])
            assert ok

    def revisions(self) -> dict[str, int]:
        return {m.key.decode(): m.mod_revision for _, m in self.c.get_prefix(self.prefix, keys_only=True)}

    def update(self, docs: list[tuple[str, bytes]], revs: dict[str, int]) -> None:
        t = self.c.transactions
        for name, value in docs:
            key = self.prefix + name
            ok, _ = self.c.transaction(compare=[t.mod(key) == revs[key]], success=[t.put(key, value)], failure=[])
            assert ok

    def list(self) -> int:
        return len([bytes(v) for v, _ in self.c.get_prefix(self.prefix)])

    def list_decoded(self) -> int:
        return len([json.loads(v) for v, _ in self.c.get_prefix(self.prefix)])


Timing = tuple[float, float, float, float]  # raw wall, store wall, raw CPU, store CPU


def _interleaved(raw_fn: Callable[[slice], Any], store_fn: Callable[[slice], Any], n: int) -> Timing:
    """Totals of each side doing `n` operations in alternating chunks (cancels drift and noise)."""
    tot = [0.0, 0.0, 0.0, 0.0]

    def side(which: int, fn: Callable[[slice], Any], part: slice) -> None:
        wall, cpu = _cpu_timed(lambda: fn(part))
        tot[which] += wall
        tot[which + 2] += cpu

    for k, start in enumerate(range(0, n, CHUNK)):
        part = slice(start, min(n, start + CHUNK))
        order = [(1, store_fn), (0, raw_fn)] if k % 2 else [(0, raw_fn), (1, store_fn)]
        for which, fn in order:
            side(which, fn, part)
    return tot[0], tot[1], tot[2], tot[3]


def _measure_ops(etcd: EtcdServer, pass_no: int) -> dict[str, Timing]:
    root = f"/bench{pass_no}/hostplane/v1"
    store = etcd.store(root=root)
    host, port = etcd.endpoint.rsplit(":", 1)
    conn = store.conn
    raw = _Raw(pyetcd.client(host=host, port=int(port), ca_cert=str(conn.ca), cert_key=str(conn.key),
                             cert_cert=str(conn.cert)), f"/raw{pass_no}/plans/")
    try:
        objs = [_plan(i) for i in range(N)]
        # The raw side writes the bytes the store writes for the same objects.
        raw_docs = [(o.name, encode(store._doc(o))) for o in objs]
        results: dict[str, Timing] = {}
        created: list[Plan | None] = [None] * N

        def store_create(part: slice) -> None:
            for i in range(part.start, part.stop):
                created[i] = store.create(objs[i])

        results["create"] = _interleaved(lambda p: raw.create(raw_docs[p]), store_create, N)

        changed = [c.model_copy(update={"spec": c.spec.model_copy(update={"vcpus": 2})})
                   for c in created if c is not None]
        raw_changed = [(o.name, encode(store._doc(o))) for o in changed]
        revs = raw.revisions()

        def store_update(part: slice) -> None:
            for c in changed[part]:
                store.update(c)

        results["update (CAS)"] = _interleaved(lambda p: raw.update(raw_changed[p], revs), store_update, N)

        counts: list[int] = []
        raw_list = store_list = decoded = float("inf")
        for k in range(LIST_REPEATS):
            order = [0, 1, 2] if k % 2 == 0 else [2, 1, 0]
            for side in order:
                if side == 0:
                    raw_list = min(raw_list, _timed(lambda: counts.append(raw.list())))
                elif side == 1:
                    decoded = min(decoded, _timed(lambda: counts.append(raw.list_decoded())))
                else:
                    store_list = min(store_list, _timed(lambda: counts.append(len(store.list(Plan).items))))
        assert set(counts) == {N}, counts
        results["list"] = (raw_list, store_list, 0.0, 0.0)
        results["list (raw + json.loads)"] = (raw_list, decoded, 0.0, 0.0)
        return results
    finally:
        store.kv_delete(root + "/", prefix=True)
        raw.c.delete_prefix(f"/raw{pass_no}/")
        raw.c.close()
        store.close()


def _watch_latency(etcd: EtcdServer) -> list[float]:
    store = etcd.store(root="/benchwatch")
    prefix = store.root + "/w/"
    seen: dict[str, float] = {}
    cond = threading.Condition()

    def on_events(events: list[WatchEvent], revision: int) -> None:
        now = time.perf_counter()
        with cond:
            for e in events:
                seen[e.key] = now
            cond.notify_all()

    w = store.watch(prefix, start_revision=store.revision() + 1, on_events=on_events)
    w.connected.wait(5)
    samples: list[float] = []
    try:
        for i in range(WATCH_SAMPLES):
            key = f"{prefix}{i}"
            t0 = time.perf_counter()
            store.kv_put(key, b"x" * 200)
            with cond:
                if not cond.wait_for(lambda key=key: key in seen, timeout=5):  # type: ignore[misc]
                    raise TimeoutError(f"watch event for {key} not delivered")
            samples.append(seen[key] - t0)
    finally:
        w.stop()
        store.kv_delete(prefix, prefix=True)
        store.close()
    return samples


TLS_N = 2000


class _PlainEtcd:
    """The baseline's etcd: plaintext, no auth. Benchmark only; stopped by its PID."""

    def __init__(self, data: Path) -> None:
        self.port, peer = free_port(), free_port()
        url, purl = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{peer}"
        self.log = open(data.parent / "plain-etcd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [shutil.which("etcd") or "/usr/bin/etcd", "--name", "plain", "--data-dir", str(data),
             "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", purl,
             "--initial-advertise-peer-urls", purl, "--initial-cluster", f"plain={purl}",
             "--log-level", "warn", "--logger", "zap"], stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _raw_watch_latency(client: Any, prefix: str, samples: int) -> list[float]:
    seen: dict[str, float] = {}
    cond = threading.Condition()

    def cb(resp: Any) -> None:
        now = time.perf_counter()
        with cond:
            for e in getattr(resp, "events", []):
                seen[e.key.decode()] = now
            cond.notify_all()

    wid = client.add_watch_prefix_callback(prefix, cb)
    out: list[float] = []
    try:
        for i in range(samples):
            key = f"{prefix}{i}"
            t0 = time.perf_counter()
            client.put(key, b"x" * 200)
            with cond:
                if not cond.wait_for(lambda key=key: key in seen, timeout=5):  # type: ignore[misc]
                    raise TimeoutError(f"watch event for {key} not delivered")
            out.append(seen[key] - t0)
    finally:
        client.cancel_watch(wid)
    return out


def tls_cost(etcd: EtcdServer, tmp: Path) -> list[str]:
    """Markdown lines: raw etcd operations, TLS + RBAC (controllers identity) against plaintext."""
    plain = _PlainEtcd(tmp / "plain-etcd")
    conn = etcd.connection("controllers")
    host, port = conn.endpoints[0].rsplit(":", 1)
    secure = pyetcd.client(host=host, port=int(port), ca_cert=str(conn.ca), cert_key=str(conn.key),
                           cert_cert=str(conn.cert), timeout=10)
    insecure = pyetcd.client(host="127.0.0.1", port=plain.port, timeout=10)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                insecure.status()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        prefix = "/hostplane/v1/alloc/bench-tls/"  # inside the controllers role
        docs = [(o.name, encode(o.model_dump(mode="json", by_alias=True))) for o in map(_plan, range(TLS_N))]
        sides = {"plain": _Raw(insecure, prefix), "tls": _Raw(secure, prefix)}
        results: dict[str, dict[str, float]] = {"plain": {}, "tls": {}}
        create = _interleaved(lambda part: sides["plain"].create(docs[part]),
                              lambda part: sides["tls"].create(docs[part]), TLS_N)
        revs = {k: sides[k].revisions() for k in sides}
        update = _interleaved(lambda part: sides["plain"].update(docs[part], revs["plain"]),
                              lambda part: sides["tls"].update(docs[part], revs["tls"]), TLS_N)
        lists = {k: min(_timed(sides[k].list) for _ in range(LIST_REPEATS)) for k in sides}
        watch = {k: _raw_watch_latency(c, prefix + "w/", WATCH_SAMPLES // 2)
                 for k, c in (("plain", insecure), ("tls", secure))}
        results["plain"] |= {"create": create[0], "update": update[0], "list": lists["plain"]}
        results["tls"] |= {"create": create[1], "update": update[1], "list": lists["tls"]}
    finally:
        with contextlib.suppress(Exception):
            secure.delete_prefix("/hostplane/v1/alloc/bench-tls/")
        secure.close()
        insecure.close()
        plain.stop()
    lines = [
        "### TLS and RBAC cost",
        "",
        f"Raw pyetcd, {TLS_N:,} `Plan`-sized values: the production etcd (TLS for clients and peers,",
        "client-certificate auth, RBAC on, as the `controllers` identity) against a throw-away plaintext",
        f"etcd without auth, both running at once; creates and updates alternate in chunks of {CHUNK}.",
        "",
        "| operation | plaintext | TLS + RBAC | ratio | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for op in ("create", "update", "list"):
        p, t = results["plain"][op], results["tls"][op]
        label = {"create": f"create of {TLS_N:,}", "update": f"update (CAS) of {TLS_N:,}",
                 "list": f"list of {TLS_N:,} (best of {LIST_REPEATS})"}[op]
        lines.append(f"| {label} | {p:.3f} s | {t:.3f} s | {t / p:.2f}x | ≤ 1.3x |")
    wp, wt = watch["plain"], watch["tls"]
    lines.append(f"| watch put → callback, p50 ({len(wp)} puts) | {_pct(wp, 0.5) * 1000:.2f} ms | "
                 f"{_pct(wt, 0.5) * 1000:.2f} ms | {_pct(wt, 0.5) / _pct(wp, 0.5):.2f}x | ≤ 1.3x |")
    lines.append(f"| watch put → callback, p99 | {_pct(wp, 0.99) * 1000:.2f} ms | "
                 f"{_pct(wt, 0.99) * 1000:.2f} ms | {_pct(wt, 0.99) / _pct(wp, 0.99):.2f}x | |")
    lines.append("")
    return lines


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run() -> str:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hostplane-bench-store-") as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd")
        etcd.start()
        try:
            passes = [_measure_ops(etcd, p) for p in range(PASSES)]
            latency = _watch_latency(etcd)
            tls = tls_cost(etcd, Path(tmp))
        finally:
            etcd.stop()
    lines = [
        "## Store",
        "",
        f"{N:,} `Plan` objects (about 480 bytes of JSON each) on a private single-member etcd on loopback,",
        f"{PASSES} passes summed. Raw = pyetcd doing the equivalent etcd operations on bytes; store =",
        "`reconcile.objects.Store`, models in and validated models out. Creates and updates alternate",
        f"between the two sides in chunks of {CHUNK} so machine noise hits both alike; a list is the best",
        f"of {LIST_REPEATS * PASSES} and reads every object once.",
        "",
        "| operation | raw client | store | store / raw | target | client CPU per op, raw / store |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for op in passes[0]:
        pick = min if op.startswith("list") else sum  # lists: best of all; writes: totals
        raw, st, raw_cpu, st_cpu = (pick(p[op][i] for p in passes) for i in range(4))
        reference = "loads" in op
        label = f"list of {N:,}, raw + `json.loads`" if reference else f"{op} of {N:,}"
        target = "(reference)" if reference else "≤ 1.3x"
        ops = N * len(passes)
        cpu = f"{raw_cpu / ops * 1e6:.0f} µs / {st_cpu / ops * 1e6:.0f} µs" if raw_cpu else ""
        lines.append(f"| {label} | {raw:.3f} s | {st:.3f} s | {st / raw:.2f}x | {target} | {cpu} |")
    lines += [
        "",
        f"Watch latency, put → `Store.watch` callback ({len(latency)} puts, one at a time): "
        f"p50 {_pct(latency, 0.5) * 1000:.2f} ms, p99 {_pct(latency, 0.99) * 1000:.2f} ms, "
        f"mean {statistics.fmean(latency) * 1000:.2f} ms.",
        "",
        f"Load average of the machine (2 cores) during the run: {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "",
        *tls,
    ]
    return "\n".join(lines)


def run_tls_only() -> str:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="hostplane-bench-tls-") as tmp:
        etcd = EtcdServer(Path(tmp) / "etcd").start()
        try:
            lines = tls_cost(etcd, Path(tmp))
        finally:
            etcd.stop()
    lines.append(f"Load average (2 cores): {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run_tls_only() if sys.argv[1:] == ["tls"] else run())
