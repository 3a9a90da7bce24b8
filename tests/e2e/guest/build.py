"""The e2e suite's test guest: the product's builder (`api.testguest`), cached per user.

Agents take image files only from their image directories (`nodeagent.images`), so the guest the
tests hand to them is a copy under /var/lib/hostplane/images/e2e-test-guest/<key>/, one of the
default directories, whenever that is writable (as root); otherwise the cache itself is returned
and a test must give its agent that directory (`ImagePolicy.for_data_dir(..., extra_dirs=...)`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from api.testguest import GuestImage, cache_root
from api.testguest import build as build_into
from nodeagent.images import DEFAULT_IMAGE_DIR

__all__ = ["GuestImage", "build", "cache_root"]


def build(root: Path | None = None) -> GuestImage:
    """Build (or reuse) the guest; without `root`, return it from an image directory agents accept."""
    if root is not None:
        return build_into(root)
    cached = build_into(cache_root())
    dest = DEFAULT_IMAGE_DIR / "e2e-test-guest" / cache_root().name
    manifest = dest / "image.json"
    if manifest.exists():
        return GuestImage(**json.loads(manifest.read_text()))
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for d in (DEFAULT_IMAGE_DIR.parent, DEFAULT_IMAGE_DIR, dest.parent, dest):
            os.chmod(d, 0o755)
        moved = {}
        for field in ("kernel", "initrd", "disk"):
            src = Path(getattr(cached, field))
            shutil.copyfile(src, dest / src.name)
            os.chmod(dest / src.name, 0o644)
            moved[field] = str(dest / src.name)
    except PermissionError:
        return cached
    img = dataclasses.replace(cached, **moved)
    manifest.write_text(json.dumps(dataclasses.asdict(img), indent=1))
    return img
