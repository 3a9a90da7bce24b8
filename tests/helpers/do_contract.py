"""DigitalOcean's own OpenAPI (the vendored subset in tests/contracts/digitalocean) as a check on /v2 answers."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import httpx
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

VENDORED = Path(__file__).resolve().parents[1] / "contracts" / "digitalocean" / "specification"
MAIN = "DigitalOcean-public.v2.yaml"
# Two corrections, applied to a copy (the vendored files stay byte for byte DigitalOcean's):
ERRATA = [
    # `- off` is the boolean false in YAML 1.1, which every Python YAML loader speaks: the schema would
    # demand `false` where DigitalOcean's API (and its own examples) answer the string "off".
    ("resources/droplets/models/droplet.yml", "      - off\n", '      - "off"\n'),
    # The list of DigitalOcean's own datacentres is data, not shape: a hoster's regions are its own.
    ("shared/attributes/region_slug.yml", "enum:\n", "x-digitalocean-regions:\n"),
]
_OPENAPI: list[OpenAPI] = []
_COPY: list[tempfile.TemporaryDirectory[str]] = []


def do_spec() -> OpenAPI:
    """The description with ERRATA, loaded once (its operations are `$ref`s, which the spec validator refuses)."""
    if not _OPENAPI:
        tmp = tempfile.TemporaryDirectory(prefix="do-openapi-")
        _COPY.append(tmp)
        root = Path(tmp.name) / "specification"
        shutil.copytree(VENDORED, root)
        for rel, old, new in ERRATA:
            text = (root / rel).read_text()
            assert text.count(old) == 1, f"erratum for {rel} no longer applies: re-check it"
            (root / rel).write_text(text.replace(old, new))
        _OPENAPI.append(OpenAPI.from_file_path(str(root / MAIN), config=Config(spec_validator_cls=None)))
    return _OPENAPI[0]


def check_contract(resp: httpx.Response) -> None:
    """httpx response hook: validate one /v2 answer (status, headers, body) against DigitalOcean's operation."""
    resp.read()
    path = resp.request.url.path.rstrip("/")
    req = MockRequest("https://api.digitalocean.com", resp.request.method.lower(), path,
                      args=dict(resp.request.url.params), headers={"Authorization": "Bearer x"})
    ctype = resp.headers.get("content-type", "application/json").split(";")[0] if resp.content else None
    mock = MockResponse(resp.content, status_code=resp.status_code, headers=dict(resp.headers),
                        content_type=ctype or "application/json")
    do_spec().validate_response(req, mock)
