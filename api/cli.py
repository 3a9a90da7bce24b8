"""The `hostplane` command line: apply/diff/get/describe/delete/schema, and the process starters.

Exit codes are decided in one place (`to_cli_error` and `CliError`): 0 success, 1 drift (diff only, for
GitOps), 2 any error (usage, invalid input, refused by the server, server unreachable).
An error in input files prints `file:line: field.path: message` for every problem and
nothing is sent to the server. The process commands (api, agent, controllers, up) import
their packages lazily, so the client commands never pay for them.
This module must never talk to etcd itself; it goes through the API or the entry points.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from api import apply as plan_apply
from api import table
from api.client import (
    Client,
    ClientError,
    ConflictError,
    InvalidError,
    NotFoundError,
    ProblemError,
    TransportError,
)
from api.config import resolve
from reconcile.connection import EtcdConfigError, EtcdConnection
from reconcile.selector import matches, parse_selector
from specs import SpecError, dump_json, dump_yaml, json_schema, kind_for
from specs.kinds import Resource

FORCE_ORPHAN = "hostplane.io/force-orphan"
EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_ERROR = 2
_CONFLICT_RETRIES = 3


class CliError(click.ClickException):
    """An error the CLI reports as lines on stderr and an exit code."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = lines or []

    def show(self, file: Any = None) -> None:
        for line in self.lines:
            click.echo(line, err=True)
        click.echo(f"error: {self.message}", err=True)


def to_cli_error(exc: BaseException) -> CliError:
    """The one place where failures become what the CLI prints (and so its exit code)."""
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, SpecError):
        return CliError(f"{len(exc.details)} problem(s) in the input; nothing was changed",
                        [str(d) for d in exc.details])
    if isinstance(exc, InvalidError):
        lines = [f"{e.get('path') or '<object>'}: {e.get('message')}" for e in exc.errors]
        return CliError(f"the server rejected the object: {exc.detail}", lines)
    if isinstance(exc, ProblemError):
        return CliError(f"{exc.detail} (HTTP {exc.status})")
    if isinstance(exc, TransportError | ClientError | plan_apply.InputError | ValueError | OSError):
        return CliError(str(exc))
    return CliError(f"unexpected failure: {exc!r}")


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.UsageError):
            raise
        except CliError:
            raise
        except (ClientError, SpecError, plan_apply.InputError, ValueError, OSError) as exc:
            raise to_cli_error(exc) from None


@dataclass
class _Ctx:
    server: str | None
    token: str | None
    ca: str | None = None
    _client: Client | None = field(default=None)

    def client(self) -> Client:
        if self._client is None:
            cfg = resolve(self.server, self.token, self.ca)
            if cfg.token is None:
                raise CliError("no API token: pass --token, set HOSTPLANE_TOKEN, or run `hostplane up` "
                               "(it writes ~/.config/hostplane/config.yaml)")
            self._client = Client(cfg.server, cfg.token, ca=cfg.ca)
        return self._client


def _kind(name: str) -> type[Resource]:
    try:
        return kind_for(name)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", metavar="URL", help="API URL (else $HOSTPLANE_SERVER, else the config file)")
@click.option("--token", metavar="TOKEN", help="bearer token (else $HOSTPLANE_TOKEN, else the config file)")
@click.option("--ca", metavar="FILE", help="CA certificate to trust for an https server (else $HOSTPLANE_CA, "
              "else the config file's, else the system's)")
@click.pass_context
def main(ctx: click.Context, server: str | None, token: str | None, ca: str | None) -> None:
    """Hostplane: a declarative control plane for VPS hosting."""
    ctx.obj = _Ctx(server, token, ca)
    ctx.call_on_close(lambda: ctx.obj._client.close() if ctx.obj._client else None)


_files = click.option("-f", "--filename", "files", multiple=True, required=True, metavar="FILE|DIR",
                      help="YAML/JSON file or directory (recursive); repeatable")
_source = click.option("--source", help="value of the hostplane.io/source label (default: from the -f names)")


def _source_label(source: str | None, files: tuple[str, ...]) -> str:
    if source is None:
        return plan_apply.derive_source(files)
    if plan_apply.sanitize_label_value(source) != source:
        raise CliError(f"--source {source!r} is not a valid label value (≤63 of A-Z a-z 0-9 . _ -)")
    return source


def _prune_selector(source: str, selector: str | None) -> str:
    base = f"{plan_apply.SOURCE_LABEL}={source}"
    return f"{base},{selector}" if selector else base


def _apply_one(client: Client, desired: Resource, dry_run: bool) -> str:
    for _ in range(_CONFLICT_RETRIES):
        current = client.get_or_none(desired.KIND, desired.name)
        if current is None:
            if not dry_run:
                try:
                    client.create(desired)
                except ConflictError:
                    continue  # created meanwhile by someone else: compare with theirs
            return "created"
        if plan_apply.is_unchanged(current, desired):
            return "unchanged"
        if not dry_run:
            try:
                client.replace(plan_apply.merged_for_update(current, desired))
            except ConflictError:
                continue  # changed under us: re-read and decide again
        return "configured"
    raise CliError(f"{plan_apply.ref(desired)}: kept changing on the server; try again")


def _prune_candidates(client: Client, source: str, selector: str | None,
                      keep: set[tuple[str, str]]) -> Iterator[Resource]:
    sel = _prune_selector(source, selector)
    for kind in reversed(plan_apply.KIND_ORDER):
        items, _ = client.list(kind, sel)
        for obj in items:
            if (obj.KIND, obj.name) not in keep:
                yield obj


@main.command("apply")
@_files
@click.option("--dry-run", is_flag=True, help="show what would change; change nothing")
@click.option("--prune", is_flag=True, help="delete objects of this source that are no longer in the files")
@click.option("-l", "--selector", help="with --prune: only prune objects also matching this label selector")
@_source
@click.pass_obj
def apply_cmd(obj: _Ctx, files: tuple[str, ...], dry_run: bool, prune: bool, selector: str | None,
              source: str | None) -> None:
    """Create or update the objects in FILE|DIR; a second apply of the same files changes nothing."""
    if selector and not prune:
        raise click.UsageError("-l/--selector only applies together with --prune")
    docs = plan_apply.load_all(plan_apply.collect_files(files))
    label = _source_label(source, files)
    client = obj.client()
    suffix = " (dry run)" if dry_run else ""
    for doc in plan_apply.in_apply_order(docs):
        desired = plan_apply.with_source(doc.obj, label)
        click.echo(f"{plan_apply.ref(desired)} {_apply_one(client, desired, dry_run)}{suffix}")
    if prune:
        keep = {(d.obj.KIND, d.obj.name) for d in docs}
        for stale in _prune_candidates(client, label, selector, keep):
            marked = None if dry_run else client.delete(stale.KIND, stale.name)
            what = "pruned" if marked is None else "marked for deletion (finalizers pending)"
            click.echo(f"{plan_apply.ref(stale)} {what}{suffix}")


@main.command("diff")
@_files
@click.option("--prune", is_flag=True, help="also show objects of this source that apply --prune would delete")
@click.option("-l", "--selector", help="with --prune: only objects also matching this label selector")
@_source
@click.pass_obj
def diff_cmd(obj: _Ctx, files: tuple[str, ...], prune: bool, selector: str | None, source: str | None) -> None:
    """Show how the server differs from FILE|DIR. Exit 0: no drift, 1: drift, 2: error."""
    docs = plan_apply.load_all(plan_apply.collect_files(files))
    label = _source_label(source, files)
    client = obj.client()
    drift = False
    for doc in plan_apply.in_apply_order(docs):
        desired = plan_apply.with_source(doc.obj, label)
        text = plan_apply.diff_text(client.get_or_none(desired.KIND, desired.name), desired)
        if text:
            drift = True
            click.echo(text, nl=False)
    if prune:
        keep = {(d.obj.KIND, d.obj.name) for d in docs}
        for stale in _prune_candidates(client, label, selector, keep):
            drift = True
            click.echo(plan_apply.removal_text(stale), nl=False)
    if drift:
        sys.exit(EXIT_DRIFT)


def _print_objects(kind: str, items: list[Resource], output: str | None, single: bool) -> None:
    if output == "yaml":
        click.echo(dump_yaml(list(items)), nl=False)
    elif output == "json":
        click.echo(dump_json(items[0] if single else list(items)))
    else:
        data = [o.model_dump(mode="json", exclude_none=True) for o in items]
        if data or single:
            click.echo(table.render(kind, data, wide=output == "wide"))
        else:
            click.echo(f"No {kind} objects found.", err=True)


def _watch_rows(client: Client, cls: type[Resource], name: str | None, selector: str | None,
                output: str | None, rv: str, known: dict[str, dict[str, Any]], max_events: int | None) -> None:
    seen = 0
    wanted = parse_selector(selector)
    while True:
        try:
            for ev in client.watch([cls.KIND], rv):
                if ev.get("type") in ("COMPACTED", "RELIST"):
                    items, rv = client.list(cls.KIND, selector)
                    known.clear()
                    known.update({o.name: o.model_dump(mode="json", exclude_none=True) for o in items})
                    break
                rv = str(ev.get("_id") or rv)
                ev_name = str(ev.get("name"))
                if name is not None and ev_name != name:
                    continue
                row = dict(known.get(ev_name) or {})
                if ev.get("part") == "spec" and ev.get("type") == "DELETE":
                    known.pop(ev_name, None)
                    row.setdefault("metadata", {"name": ev_name})
                    click.echo(f"{_one_row(cls.KIND, row, output)}   (deleted)")
                elif ev.get("part") == "spec" and isinstance(ev.get("object"), dict):
                    new = dict(ev["object"])
                    labels = (new.get("metadata") or {}).get("labels") or {}
                    if not matches(wanted, labels):
                        known.pop(ev_name, None)
                        continue
                    if "status" in row:
                        new["status"] = row["status"]
                    known[ev_name] = new
                    click.echo(_one_row(cls.KIND, new, output))
                elif ev.get("part") == "status" and ev_name in known:
                    row["status"] = ev.get("object") or {}
                    known[ev_name] = row
                    click.echo(_one_row(cls.KIND, row, output))
                else:
                    continue
                seen += 1
                if max_events is not None and seen >= max_events:
                    return
            else:
                click.echo("# the watch stream ended; reconnecting", err=True)
        except TransportError as exc:
            # An API restart or a dropped connection: resume after the last revision printed.
            click.echo(f"# {exc}; reconnecting", err=True)
        time.sleep(1.0)


def _one_row(kind: str, data: dict[str, Any], output: str | None) -> str:
    if output in ("yaml", "json"):
        return json.dumps(data) if output == "json" else "---\n" + dump_yaml_dict(data).rstrip()
    return "   ".join(table.rows(kind, [data], wide=output == "wide")[0])


def dump_yaml_dict(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@main.command("get")
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-l", "--selector", help="label selector, e.g. tier=standard,!legacy")
@click.option("-o", "--output", type=click.Choice(["yaml", "json", "wide"]), help="output format")
@click.option("-w", "--watch", is_flag=True, help="after listing, print changes as they happen")
@click.option("--max-events", type=int, hidden=True, help="stop watching after this many changes")
@click.pass_obj
def get_cmd(obj: _Ctx, kind: str, name: str | None, selector: str | None, output: str | None, watch: bool,
            max_events: int | None) -> None:
    """List objects of KIND, or show one."""
    cls = _kind(kind)
    client = obj.client()
    if name is not None:
        item = client.get(cls.KIND, name)
        items, rv = [item], item.metadata.resourceVersion or ""
    else:
        items, rv = client.list(cls.KIND, selector)
    _print_objects(cls.KIND, items, output, single=name is not None)
    if watch:
        known = {o.name: o.model_dump(mode="json", exclude_none=True) for o in items}
        if name is not None:
            # The object's own version may be older than the cluster's; resume from the list's.
            _, rv = client.list(cls.KIND)
        try:
            _watch_rows(client, cls, name, selector, output, rv, known, max_events)
        except KeyboardInterrupt:
            return


@main.command("describe")
@click.argument("kind")
@click.argument("name")
@click.pass_obj
def describe_cmd(obj: _Ctx, kind: str, name: str) -> None:
    """Show one object: metadata, spec, status, conditions and recorded events."""
    cls = _kind(kind)
    client = obj.client()
    item = client.get(cls.KIND, name)
    data = item.model_dump(mode="json", exclude_none=True)
    status = data.pop("status", None) or {}
    click.echo(dump_yaml_dict(data).rstrip())
    conditions = status.pop("conditions", []) if isinstance(status, dict) else []
    click.echo("status:" if status else "status: {}  # not reported yet")
    if status:
        click.echo("\n".join("  " + line for line in dump_yaml_dict(status).rstrip().splitlines()))
    click.echo("\nConditions:")
    if conditions:
        body = [[str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason", "")),
                 str(c.get("lastTransitionTime", "")), str(c.get("message", ""))] for c in conditions]
        click.echo(table.format_table(["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], body))
    else:
        click.echo("  <none>")
    click.echo("\nEvents:")
    events = client.events(cls.KIND, name)
    if events:
        body = [[str(e.get("time", "")), str(e.get("type", "")), str(e.get("reason", "")), str(e.get("count", 1)),
                 str(e.get("message", ""))] for e in events]
        click.echo(table.format_table(["TIME", "TYPE", "REASON", "COUNT", "MESSAGE"], body))
    else:
        click.echo("  <none>")


@main.command("delete")
@click.argument("kind", required=False)
@click.argument("name", required=False)
@click.option("-f", "--filename", "files", multiple=True, metavar="FILE|DIR", help="delete the objects in these files")
@click.option("--force-orphan", is_flag=True,
              help=f"do not wait for the node to clean up (sets {FORCE_ORPHAN}); the node's agent deletes "
                   "the domain when it next runs (its tombstone stays)")
@click.pass_obj
def delete_cmd(obj: _Ctx, kind: str | None, name: str | None, files: tuple[str, ...], force_orphan: bool) -> None:
    """Delete KIND NAME, or every object named in -f files."""
    if files and (kind or name):
        raise click.UsageError("give either KIND NAME or -f, not both")
    if files:
        docs = plan_apply.load_all(plan_apply.collect_files(files))
        targets = [(d.obj.KIND, d.obj.name) for d in reversed(plan_apply.in_apply_order(docs))]
    elif kind and name:
        targets = [(_kind(kind).KIND, name)]
    else:
        raise click.UsageError("give KIND NAME, or -f FILE")
    client = obj.client()
    for k, n in targets:
        try:
            if force_orphan:
                # Set before (or after) the delete: the controllers then release the object at once.
                client.patch(k, n, {"metadata": {"annotations": {FORCE_ORPHAN: "true"}}})
            marked = client.delete(k, n)
        except NotFoundError:
            if force_orphan and client.get_or_none(k, n) is None:
                click.echo(f"{k.lower()}/{n} deleted")  # released between the annotation and the delete
                continue
            if not files:
                raise
            click.echo(f"{k.lower()}/{n} not found")
            continue
        if marked is None:
            click.echo(f"{k.lower()}/{n} deleted")
        else:
            click.echo(f"{k.lower()}/{n} marked for deletion (finalizers: {', '.join(marked.metadata.finalizers)})")


@click.command("orphans")
@click.argument("node")
@click.option("--purge", is_flag=True, help="delete the listed orphan domains and their disks (admin, operator)")
@click.option("--uid", "uids", multiple=True, metavar="UID", help="purge only these orphans (repeatable)")
@click.pass_obj
def node_orphans_cmd(obj: _Ctx, node: str, purge: bool, uids: tuple[str, ...]) -> None:
    """List NODE's orphan domains (no desired entry, no tombstone: left running), or purge them."""
    client = obj.client()
    if uids and not purge:
        raise click.UsageError("--uid selects what --purge deletes; add --purge")
    if purge:
        body = {"uids": list(uids)} if uids else {}
        data = client.request("POST", f"/v1/nodes/{node}/orphans/purge", json=body).json()
        for uid in data.get("requested", []):
            click.echo(f"orphan {uid} on {node}: purge requested; the node deletes its domain and volumes "
                       "(unless it is desired there again: see `hostplane describe node`)")
        if not data.get("requested"):
            click.echo(f"node {node} reports no orphan domains")
        return
    orphans = client.request("GET", f"/v1/nodes/{node}/orphans").json().get("orphans", [])
    if not orphans:
        click.echo(f"node {node} reports no orphan domains")
        return
    click.echo(f"{'DOMAIN':<40} {'VPS':<24} UID")
    for o in orphans:
        click.echo(f"{o['domain']:<40} {o['vps']:<24} {o['uid']}")


@main.command("schema")
@click.argument("kind")
def schema_cmd(kind: str) -> None:
    """Print the JSON Schema of KIND."""
    click.echo(json.dumps(json_schema(_kind(kind)), indent=2))


# ------------------------------------------------------------------ processes


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT, for entry points that return when it is set."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _etcd(fn: Callable[..., None]) -> Callable[..., None]:
    """`--etcd --etcd-ca --etcd-cert --etcd-key` (or `--etcd-config FILE`), passed on as `etcd`:
    an EtcdConnection. TLS only; each also reads $HOSTPLANE_ETCD, $HOSTPLANE_ETCD_CA, ..."""

    def env(name: str, default: str | None = None) -> Callable[[], str | None]:
        return lambda: os.environ.get(name, default)

    @click.option("--etcd", "etcd_endpoints", default=env("HOSTPLANE_ETCD", "127.0.0.1:2379"),
                  show_default="127.0.0.1:2379 or $HOSTPLANE_ETCD", help="etcd endpoints, comma-separated")
    @click.option("--etcd-ca", default=env("HOSTPLANE_ETCD_CA"), help="CA certificate etcd's certificate is signed by")
    @click.option("--etcd-cert", default=env("HOSTPLANE_ETCD_CERT"), help="this process's client certificate")
    @click.option("--etcd-key", default=env("HOSTPLANE_ETCD_KEY"), help="its private key")
    @click.option("--etcd-config", default=env("HOSTPLANE_ETCD_CONFIG"),
                  help="a TOML file with endpoints, ca, cert, key (instead of the four options)")
    @functools.wraps(fn)
    def wrapper(*args: Any, etcd_endpoints: str, etcd_ca: str | None, etcd_cert: str | None,
                etcd_key: str | None, etcd_config: str | None, **kwargs: Any) -> None:
        kwargs["etcd"] = etcd_connection(etcd_endpoints, etcd_ca, etcd_cert, etcd_key, etcd_config)
        fn(*args, **kwargs)

    return wrapper


def etcd_connection(endpoints: str, ca: str | None, cert: str | None, key: str | None,
                    config: str | None) -> EtcdConnection:
    """The connection the options describe; a missing or unreadable setting is a usage error."""
    try:
        if config:
            conn = EtcdConnection.from_file(config)
        else:
            missing = [f"--etcd-{n}" for n, v in (("ca", ca), ("cert", cert), ("key", key)) if not v]
            if missing:
                raise EtcdConfigError(f"etcd is TLS-only: give {', '.join(missing)} (or --etcd-config FILE)")
            conn = EtcdConnection.make(endpoints, ca=str(ca), cert=str(cert), key=str(key))
        conn.read()
    except EtcdConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    return conn


_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), default=Path("var"), show_default=True)


@main.command("api")
@_etcd
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="serve HTTPS with this certificate (PEM; with --tls-key)")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="its private key")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDR",
              help="a TLS-terminating proxy (IP or CIDR, repeatable) whose X-Forwarded-Proto/-For are believed")
@click.option("--join-pki", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="PKI directory (ca.crt, ca.key) to sign joining nodes' certificates with; joins are off without it")
@click.option("--prometheus", "prometheus_url", metavar="URL", default=None,
              help="the Prometheus that scrapes the node endpoints (load graphs; /v1/.../metrics is 503 without it)")
@_data_dir
def api_cmd(etcd: EtcdConnection, host: str, port: int, tls_cert: Path | None, tls_key: Path | None,
            trusted_proxies: tuple[str, ...], join_pki: Path | None, prometheus_url: str | None,
            data_dir: Path) -> None:
    """Run the HTTP(S) API (until SIGTERM/SIGINT)."""
    from api.server import TLSFiles, run_api

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    _log_to_stderr()
    tls = TLSFiles(tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
    from reconcile.pki import PKI

    run_api(etcd=etcd, host=host, port=port, data_dir=data_dir, stop=None, tls=tls,
            trusted_proxies=[p for part in trusted_proxies for p in part.split(",") if p],
            join_pki=PKI(join_pki) if join_pki is not None else None, prometheus_url=prometheus_url)


@main.command("agent")
@_etcd
@click.option("--node", default=socket.gethostname, show_default="this host's name", help="the Node this agent runs")
@click.option("--libvirt", "libvirt_uri", default="qemu:///system", show_default=True, help="libvirt URI")
@_data_dir
@click.option("--image-dir", "image_dirs", multiple=True, type=click.Path(path_type=Path), metavar="DIR",
              help="also allow image files under DIR (repeatable; always: DATA_DIR/images, /var/lib/hostplane/images)")
@click.option("--image-allow-network", "allow_networks", multiple=True, metavar="CIDR",
              help="allow image downloads from this non-public network, e.g. a LAN mirror (repeatable)")
@click.option("--image-max-bytes", type=click.IntRange(min=1), default=32 * 1024**3, show_default=True,
              help="largest image download")
@click.option("--endpoint", "endpoint_listen", metavar="HOST:PORT",
              help="serve consoles (and metrics) to the API here, mutual TLS only (needs --endpoint-cert/-key)")
@click.option("--endpoint-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="the node's endpoint server certificate (CN node-NAME; `hostplane pki` / join issue it)")
@click.option("--endpoint-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="its private key")
@click.option("--endpoint-advertise", metavar="HOST", default="",
              help="the address the API reaches the endpoint at (default: the --endpoint host)")
def agent_cmd(etcd: EtcdConnection, node: str, libvirt_uri: str, data_dir: Path, image_dirs: tuple[Path, ...],
              allow_networks: tuple[str, ...], image_max_bytes: int, endpoint_listen: str | None,
              endpoint_cert: Path | None, endpoint_key: Path | None, endpoint_advertise: str) -> None:
    """Run the node agent for one hypervisor (until SIGTERM/SIGINT)."""
    from nodeagent.endpoint import EndpointConfig
    from nodeagent.images import ImagePolicy
    from nodeagent.main import run_agent  # here, not at the top: only this command needs libvirt

    endpoint = None
    if endpoint_listen is not None:
        host, sep, port = endpoint_listen.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise click.BadParameter(f"{endpoint_listen!r} is not HOST:PORT", param_hint="--endpoint")
        if endpoint_cert is None or endpoint_key is None:
            raise click.UsageError("--endpoint needs --endpoint-cert and --endpoint-key")
        endpoint = EndpointConfig(host.strip("[]"), int(port), cert=endpoint_cert, key=endpoint_key, ca=etcd.ca,
                                  advertise=endpoint_advertise)

    try:
        policy = ImagePolicy.for_data_dir(data_dir, extra_dirs=image_dirs, allow_networks=allow_networks,
                                          max_bytes=image_max_bytes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--image-allow-network") from None
    _run_entry(lambda stop: run_agent(etcd=etcd, node=node, libvirt_uri=libvirt_uri, data_dir=data_dir, stop=stop,
                                      image_policy=policy, endpoint=endpoint))


@main.command("controllers")
@_etcd
@click.option("--identity", default=lambda: f"{socket.gethostname()}-{os.getpid()}",
              show_default="host-pid", help="this manager's name in leader election")
def controllers_cmd(etcd: EtcdConnection, identity: str) -> None:
    """Run the controller manager (one leads at a time; until SIGTERM/SIGINT)."""
    from controllers.main import run_controllers

    _run_entry(lambda stop: run_controllers(etcd=etcd, identity=identity, stop=stop))


@main.command("up")
@_data_dir
@click.option("--port", type=int, default=8080, show_default=True, help="API port on 127.0.0.1")
@click.option("--libvirt", "libvirt_uri", default=None, help="libvirt URI (default: qemu:///session if QEMU "
              "is installed, else test:///default)")
@click.option("--simulate-nodes", type=int, default=0, show_default=True, help="also run N simulated nodes")
@click.option("--etcd-members", type=click.IntRange(1, 7), default=1, show_default=True,
              help="run a local etcd cluster of this many members (3 or 5 to survive a member's loss)")
def up_cmd(data_dir: Path, port: int, libvirt_uri: str | None, simulate_nodes: int, etcd_members: int) -> None:
    """Run everything locally: etcd, API, controllers and a node agent (until Ctrl-C)."""
    from api.up import run_up

    code = run_up(data_dir=data_dir, port=port, libvirt_uri=libvirt_uri, simulate_nodes=simulate_nodes,
                  etcd_members=etcd_members)
    if code:
        sys.exit(code)


@main.command("down")
@click.argument("data_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--purge", is_flag=True, help="destroy and undefine the instance's guests and delete their volumes")
def down_cmd(data_dir: Path, purge: bool) -> None:
    """List what a stopped `hostplane up` on DATA_DIR left running, or remove it with --purge."""
    from api.up import run_down

    code = run_down(data_dir, purge=purge)
    if code:
        sys.exit(code)


def _log_to_stderr() -> None:
    """Long-running processes log to stderr (`hostplane up` keeps it in <data-dir>/logs/)."""
    import logging

    level = os.environ.get("HOSTPLANE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_entry(fn: Callable[[threading.Event], None]) -> None:
    _log_to_stderr()
    with _stop_on_signals() as stop:
        fn(stop)


main.add_command(importlib.import_module("api.billing_cli").billing)
main.add_command(importlib.import_module("api.pki_cli").pki)
main.add_command(importlib.import_module("api.node_cli").node)
main.commands["node"].add_command(node_orphans_cmd)  # type: ignore[attr-defined]  # a Group
for _cmd in importlib.import_module("api.access_cli").COMMANDS:
    main.add_command(_cmd)
main.commands["vps"].add_command(importlib.import_module("api.console_cli").console_cmd)  # type: ignore[attr-defined]  # a Group


if __name__ == "__main__":  # pragma: no cover
    main()
