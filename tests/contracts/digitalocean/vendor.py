"""Copy the subset of DigitalOcean's OpenAPI description that /v2 serves (run by hand when updating).

    python tests/contracts/digitalocean/vendor.py GIT_DIR   # a clone of github.com/digitalocean/openapi

Keeps the chosen paths of `specification/DigitalOcean-public.v2.yaml` and every file their
`$ref`s reach, byte for byte, under `specification/` here; records the source commit in SOURCE.
"""

from __future__ import annotations

import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
PATHS = ("/v2/account", "/v2/account/keys", "/v2/account/keys/{ssh_key_identifier}", "/v2/actions",
         "/v2/actions/{action_id}", "/v2/droplets", "/v2/droplets/{droplet_id}",
         "/v2/droplets/{droplet_id}/actions", "/v2/droplets/{droplet_id}/actions/{action_id}",
         "/v2/images", "/v2/images/{image_id}", "/v2/regions", "/v2/sizes")


def show(git_dir: str, path: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:specification/{path}"],
                          check=True, capture_output=True, text=True).stdout


def refs(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        out = [doc["$ref"]] if isinstance(doc.get("$ref"), str) else []
        return out + [r for v in doc.values() for r in refs(v)]
    if isinstance(doc, list):
        return [r for v in doc for r in refs(v)]
    return []


def main(git_dir: str) -> None:
    main_doc = yaml.safe_load(show(git_dir, "DigitalOcean-public.v2.yaml"))
    subset = {"openapi": main_doc["openapi"], "info": main_doc["info"], "servers": main_doc["servers"],
              "paths": {p: main_doc["paths"][p] for p in PATHS},
              "components": {"securitySchemes": {"bearer_auth": main_doc["components"]["securitySchemes"]
                                                 ["bearer_auth"]}},
              "security": main_doc["security"]}
    out = HERE / "specification"
    out.mkdir(exist_ok=True)
    (out / "DigitalOcean-public.v2.yaml").write_text(
        "# A subset of DigitalOcean's OpenAPI description (Apache-2.0, see LICENSE); made by ../vendor.py\n"
        + yaml.safe_dump(subset, sort_keys=False))
    todo = [("", r) for r in refs(subset)]
    done: set[str] = set()
    while todo:
        base, ref = todo.pop()
        file = ref.split("#", 1)[0]
        if not file:
            continue
        path = posixpath.normpath(posixpath.join(posixpath.dirname(base), file))
        if path in done:
            continue
        done.add(path)
        text = show(git_dir, path)
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
        todo.extend((path, r) for r in refs(yaml.safe_load(text)))
    commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    (HERE / "SOURCE").write_text(f"https://github.com/digitalocean/openapi commit {commit}\n"
                                 f"{len(done) + 1} files; paths: {', '.join(PATHS)}\n")
    license_text = subprocess.run(["git", f"--git-dir={git_dir}", "show", "HEAD:LICENSE"], check=True,
                                  capture_output=True, text=True).stdout
    (HERE / "LICENSE").write_text(license_text)


if __name__ == "__main__":
    main(sys.argv[1])
