"""The web panel: serves the single-page app in `api/static/` from the API process itself.

    GET /                       the panel (index.html, revalidated on every load)
    GET /assets/<version>/...   its ES modules, CSS and icons, cached for a year (the version is
                                a hash of every asset, so a new release gets new URLs)
    GET /<anything else>        index.html again when a browser asks for a page (history routing)

Assets are read and gzip-compressed once, when the app is built; a request costs a dict
lookup. The panel is a middleware in front of the routes, not a catch-all route, so it can
never shadow an API route whatever order routes are added in: API paths (`/v1/`, `/docs`,
`/openapi.json`, health and metrics) always go straight through. This module must never
read etcd, hold a session or answer an API path.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
API_PATHS = ("/v1/", "/v1", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz", "/metrics")
ASSETS = "/assets/"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8", ".json": "application/json"}
_COMPRESSIBLE = (".js", ".css", ".svg", ".html", ".json")
_VERSION = re.compile(r"^[0-9a-f]{12}$")
# Scripts, styles and connections only from this origin; nothing inline, no frames.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                               "form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    etag: str
    media_type: str


def _asset(body: bytes, name: str) -> Asset:
    suffix = Path(name).suffix
    media = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    packed = gzip.compress(body, compresslevel=9, mtime=0) if suffix in _COMPRESSIBLE else None
    if packed is not None and len(packed) >= len(body):
        packed = None
    return Asset(body, packed, '"' + hashlib.sha256(body).hexdigest()[:20] + '"', media)


class Bundle:
    """Every file of the panel, read once; index.html gets the asset version and preload links."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        files: dict[str, bytes] = {}
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not rel.startswith(".") and rel != "index.html":
                files[rel] = path.read_bytes()
        digest = hashlib.sha256()
        for rel, body in files.items():
            digest.update(rel.encode() + b"\0" + body)
        self.version = digest.hexdigest()[:12]
        base = f"{ASSETS}{self.version}/"
        # Preloading every module up front turns the import waterfall into one round trip. Not the
        # vendored console libraries (`vendor/`, 1 MB): the console view imports them when opened.
        preload = "\n".join(f'  <link rel="modulepreload" href="{base}{rel}">' for rel in files
                            if rel.endswith(".js") and not rel.startswith("vendor/"))
        page = (root / "index.html").read_text(encoding="utf-8")
        page = page.replace("{{ASSETS}}", base).replace("{{PRELOAD}}", preload)
        self.index = _asset(page.encode(), "index.html")
        self.assets = {rel: _asset(body, rel) for rel, body in files.items()}

    def lookup(self, path: str) -> tuple[Asset, bool] | None:
        """The asset at an /assets/ path and whether its URL carries the current version."""
        version, _, rel = path[len(ASSETS):].partition("/")
        if not _VERSION.fullmatch(version):
            return None
        asset = self.assets.get(rel)
        return None if asset is None else (asset, version == self.version)


def _is_api(path: str) -> bool:
    return any(path == p or path.startswith(p + ("" if p.endswith("/") else "/")) for p in API_PATHS)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return ""


class PanelMiddleware:
    """Answers GET/HEAD for the panel's pages and assets; everything else goes to the API."""

    def __init__(self, app: ASGIApp, bundle: Bundle) -> None:
        self.app = app
        self.bundle = bundle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD") or _is_api(scope["path"]):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(ASSETS):
            found = self.bundle.lookup(path)
            if found is None:
                await _send(send, scope, 404, b"not found\n", {"content-type": "text/plain; charset=utf-8",
                                                               "cache-control": "no-store"})
                return
            asset, current = found
            await _serve(send, scope, asset, IMMUTABLE if current else "no-cache")
            return
        last = path.rsplit("/", 1)[-1]
        wants_page = path == "/" or ("." not in last and "text/html" in _header(scope, b"accept"))
        if not wants_page:
            await self.app(scope, receive, send)
            return
        await _serve(send, scope, self.bundle.index, "no-cache", SECURITY_HEADERS)


async def _serve(send: Send, scope: Scope, asset: Asset, cache: str, extra: dict[str, str] | None = None) -> None:
    headers = {"content-type": asset.media_type, "cache-control": cache, "etag": asset.etag,
               "x-content-type-options": "nosniff", **(extra or {})}
    if asset.gzipped is not None:
        headers["vary"] = "Accept-Encoding"
    if asset.etag in (t.strip() for t in _header(scope, b"if-none-match").split(",")):
        await _send(send, scope, 304, b"", headers)
        return
    body = asset.body
    if asset.gzipped is not None and "gzip" in _header(scope, b"accept-encoding"):
        body = asset.gzipped
        headers["content-encoding"] = "gzip"
    await _send(send, scope, 200, body, headers)


async def _send(send: Send, scope: Scope, status: int, body: bytes, headers: dict[str, str]) -> None:
    if status != 304:
        headers = {**headers, "content-length": str(len(body))}
    start: Message = {"type": "http.response.start", "status": status,
                      "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]}
    await send(start)
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" or status == 304 else body})


def install(app: FastAPI, root: Path = STATIC_DIR) -> Bundle | None:
    """Serve the panel on `app` (call once, in create_app). Returns the bundle (tests read its version).

    An installation without the panel's files (a stripped package) still serves the API.
    """
    if not (root / "index.html").is_file():
        log.warning("no panel files in %s: serving the API only", root)
        return None
    bundle = Bundle(root)
    app.add_middleware(PanelMiddleware, bundle=bundle)
    return bundle
