"""How the API serves the panel: compressed, versioned and cached assets, history fallback, API paths untouched."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.panel import STATIC_DIR, Bundle
from api.server import create_app, serving
from reconcile.objects import Store


@pytest.fixture
def base(store: Store) -> Iterator[str]:
    """The API with the panel, over the test's store."""
    with serving(create_app(store)) as url:
        yield url


def _assets(page: str) -> list[str]:
    return re.findall(r'(?:href|src)="(/assets/[^"]+)"', page)


def test_index_links_versioned_assets_that_are_cached_for_a_year_and_gzipped(base: str) -> None:
    """/ is revalidated each load; every asset it names is immutable, gzip-compressed and answers 304 to its ETag."""
    r = httpx.get(base + "/")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    links = _assets(r.text)
    assert any(u.endswith("/js/main.js") for u in links) and any(u.endswith("/app.css") for u in links)
    for url in links:
        a = httpx.get(base + url, headers={"Accept-Encoding": "gzip"})
        assert a.status_code == 200, url
        assert a.headers["cache-control"] == "public, max-age=31536000, immutable"
        if url.endswith((".js", ".css")):
            assert a.headers["content-encoding"] == "gzip"
            assert int(a.headers["content-length"]) < len(a.content)  # httpx decoded it
        again = httpx.get(base + url, headers={"If-None-Match": a.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


def test_a_client_without_gzip_gets_identity_bytes(base: str) -> None:
    """Without Accept-Encoding: gzip the asset comes uncompressed, byte for byte as on disk."""
    url = next(u for u in _assets(httpx.get(base + "/").text) if u.endswith("/js/main.js"))
    r = httpx.get(base + url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in r.headers
    assert r.content == (STATIC_DIR / "js" / "main.js").read_bytes()
    assert r.headers["content-type"].startswith("text/javascript")


def test_page_paths_fall_back_to_the_app_and_api_paths_are_never_shadowed(base: str) -> None:
    """A browser asking for /servers/x gets index.html; /v1, /docs, health and unknown assets keep their answers."""
    page = httpx.get(base + "/servers/web-1", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "<div id=\"app\"" in page.text
    assert httpx.get(base + "/ops/customers/alice", headers={"Accept": "text/html"}).text == page.text
    api = httpx.get(base + "/v1/plans", headers={"Accept": "text/html"})
    assert api.status_code == 401 and api.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(base + "/v1", headers={"Accept": "text/html"}).status_code == 404
    assert httpx.get(base + "/healthz", headers={"Accept": "text/html"}).json() == {"status": "ok"}
    assert "swagger" in httpx.get(base + "/docs", headers={"Accept": "text/html"}).text.lower()
    assert httpx.get(base + "/openapi.json").json()["info"]["title"] == "Hostplane API"
    assert httpx.get(base + "/assets/000000000000/nope.js").status_code == 404
    assert httpx.get(base + "/favicon.ico").status_code == 404  # not a page: no HTML for it
    assert httpx.post(base + "/", json={}).status_code in (404, 405)


def test_an_old_version_url_is_served_but_not_cached_forever(base: str) -> None:
    """After an upgrade a page still holding old asset URLs gets today's files, revalidated instead of immutable."""
    r = httpx.get(base + "/assets/0123456789ab/app.css")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"


def test_bundle_version_changes_with_any_asset(tmp_path: Path) -> None:
    """The asset version is a hash of every file, so changing one file gives every URL a new version."""
    root = tmp_path
    (root / "index.html").write_text('<script src="{{ASSETS}}a.js"></script>{{PRELOAD}}')
    (root / "a.js").write_text("export const a = 1;\n" * 50)
    first = Bundle(root)
    assert f'src="/assets/{first.version}/a.js"' in first.index.body.decode()
    assert f'rel="modulepreload" href="/assets/{first.version}/a.js"' in first.index.body.decode()
    assert first.assets["a.js"].gzipped is not None
    assert gzip.decompress(first.assets["a.js"].gzipped) == (root / "a.js").read_bytes()
    (root / "a.js").write_text("export const a = 2;\n")
    assert Bundle(root).version != first.version


def test_without_panel_files_the_api_still_serves(tmp_path: Path) -> None:
    """A package stripped of the panel's files serves its routes; / is then a plain 404."""
    from fastapi import FastAPI

    from api.panel import install

    app = FastAPI()
    app.get("/healthz")(lambda: {"status": "ok"})
    assert install(app, tmp_path) is None
    with serving(app) as url:
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        assert httpx.get(url + "/", headers={"Accept": "text/html"}).status_code == 404
