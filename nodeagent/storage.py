"""Volumes in the agent's libvirt storage pool: image bases, root-disk overlays, NoCloud seeds.

Every volume is created through libvirt's storage API (vol XML; a qcow2 overlay names its base
in `<backingStore>`; growing uses virStorageVolResize or, for a running domain, blockResize), so
the same code drives a real dir pool and the in-memory test driver. The test driver keeps no
bytes and cannot upload or resize; there (`simulated`) contents are skipped and a grow re-creates
the volume larger. Image bytes are fetched once per image (concurrent callers share the fetch, and
a failure, which backs off), only from sources the node's `ImagePolicy` allows, sha256-verified
before they enter the pool, and uploaded as a read-only base.

It must never delete a volume on its own initiative: deletions happen only when the agent's
plan says so (a tombstone for the volume's uid).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import libvirt

from nodeagent import images
from nodeagent.domain_xml import root_volume_name, seed_volume_name
from nodeagent.errors import (
    ActionFailed,
    ChecksumMismatch,
    ImageError,
    ImageRefused,
    ImageUnreachable,
    PoolUnusable,
    StorageFull,
)
from nodeagent.images import ImagePolicy
from specs.domain import DomainImage

log = logging.getLogger(__name__)

GiB = 1024**3
_SAFE = re.compile(r"[^a-zA-Z0-9._-]")
_CHUNK = 1 << 20
IMAGE_RETRY_BASE = 10.0
IMAGE_RETRY_CAP = 600.0


@dataclass(frozen=True)
class BaseVolumes:
    disk: str
    kernel: str | None = None
    initrd: str | None = None


def _vol_xml(name: str, capacity: int, fmt: str, *, backing: tuple[str, str] | None = None) -> str:
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
    ET.SubElement(vol, "allocation", unit="bytes").text = "0"
    target = ET.SubElement(vol, "target")
    ET.SubElement(target, "format", type=fmt)
    if backing is not None:
        bs = ET.SubElement(vol, "backingStore")
        ET.SubElement(bs, "path").text = backing[0]
        ET.SubElement(bs, "format", type=backing[1])
    return ET.tostring(vol, encoding="unicode")


def _no_such_volume(exc: libvirt.libvirtError) -> bool:
    return bool(exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL)


class Storage:
    """One agent's pool. Thread-safe: volume operations of different VPSs may run concurrently."""

    def __init__(self, conn: libvirt.virConnect, *, pool_name: str, pool_dir: Path, work_dir: Path,
                 simulated: bool, min_free_bytes: int = 64 * 1024**2,
                 image_policy: ImagePolicy | None = None) -> None:
        self.conn = conn
        self.pool_name = pool_name
        self.pool_dir = pool_dir
        self.work_dir = work_dir
        self.simulated = simulated
        self.min_free_bytes = min_free_bytes
        self.image_policy = image_policy or ImagePolicy.for_data_dir(pool_dir.parent)
        # Per image base: (monotonic time of the next attempt, failures so far, the last error).
        self._failures: dict[str, tuple[float, int, ImageError]] = {}
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.pool = self._ensure_pool()

    # ------------------------------------------------------------------ pool

    def _ensure_pool(self) -> libvirt.virStoragePool:
        """The pool at `pool_dir`: defined if missing; one defined elsewhere or damaged is refused, not reused."""
        try:
            try:
                pool = self.conn.storagePoolLookupByName(self.pool_name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                root = ET.Element("pool", type="dir")
                ET.SubElement(root, "name").text = self.pool_name
                target = ET.SubElement(root, "target")
                ET.SubElement(target, "path").text = str(self.pool_dir)
                pool = self.conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
                if not self.simulated:
                    pool.build(0)
            where = ET.fromstring(pool.XMLDesc(0)).findtext("target/path")
            if where is None or os.path.realpath(where) != os.path.realpath(self.pool_dir):
                raise PoolUnusable(f"storage pool {self.pool_name} is at {where}, not at this node's "
                                   f"{self.pool_dir}: not reused; remove or rename that pool, or set the data dir")
            if not pool.isActive():
                pool.create(0)
            if not self.simulated:
                pool.setAutostart(1)
        except libvirt.libvirtError as exc:
            # A damaged pool ("pool has no config file", a missing directory) is the node's problem
            # to report and the operator's to repair, not a reason to exit and restart in a loop.
            raise PoolUnusable(f"storage pool {self.pool_name}: {exc.get_error_message()}") from exc
        return pool

    def reattach(self, conn: libvirt.virConnect) -> None:
        """After a libvirt reconnect: the old pool handle belongs to the dead connection."""
        self.conn = conn
        self.pool = self._ensure_pool()

    def capacity(self) -> tuple[int, int]:
        """(capacity, available) bytes of the pool."""
        _, cap, _, avail = self.pool.info()
        return int(cap), int(avail)

    def _need(self, nbytes: int, what: str) -> None:
        _, avail = self.capacity()
        if avail < nbytes + self.min_free_bytes:
            raise StorageFull(f"pool {self.pool_name} has {avail // 1024**2} MiB free; {what} needs "
                              f"{(nbytes + self.min_free_bytes) // 1024**2} MiB")

    def _lookup(self, name: str) -> libvirt.virStorageVol | None:
        try:
            return self.pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if _no_such_volume(exc):
                return None
            raise

    def volume_names(self) -> list[str]:
        return [str(n) for n in self.pool.listVolumes()]

    def delete_volume(self, name: str) -> None:
        vol = self._lookup(name)
        if vol is None:
            return
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            if not _no_such_volume(exc):
                raise ActionFailed(f"delete volume {name}: {exc}") from exc

    # ---------------------------------------------------------------- images

    @staticmethod
    def base_names(image: DomainImage) -> BaseVolumes:
        key = _SAFE.sub("-", image.name)[:40] + "-" + (image.sha256 or "unverified")[:12]
        return BaseVolumes(
            disk=f"base-{key}.{image.format}",
            kernel=f"base-{key}.kernel" if image.kernel else None,
            initrd=f"base-{key}.initrd" if image.initrd else None,
        )

    def base_present(self, image: DomainImage) -> bool:
        names = self.base_names(image)
        return all(self._lookup(n) is not None for n in (names.disk, names.kernel, names.initrd) if n)

    def base_paths(self, image: DomainImage) -> BaseVolumes:
        names = self.base_names(image)

        def path(n: str | None) -> str | None:
            vol = self._lookup(n) if n else None
            return None if vol is None else str(vol.path())

        disk = path(names.disk)
        if disk is None:
            raise ImageError(f"image {image.name} is not in the pool")
        return BaseVolumes(disk, path(names.kernel), path(names.initrd))

    def ensure_image(self, image: DomainImage) -> None:
        """Fetch, verify and upload the image's base (and kernel/initrd) once; later calls return at once.

        Sources are checked against the node's image policy first. After a failure the image is not
        fetched again until its backoff has passed (10 s doubling to 10 min): every VPS on the image
        shares the one failure instead of each hammering the source.
        """
        names = self.base_names(image)
        with self._locks_guard:
            lock = self._fetch_locks.setdefault(names.disk, threading.Lock())
        with lock:
            failed = self._failures.get(names.disk)
            now = time.monotonic()
            if failed is not None and now < failed[0]:
                raise type(failed[2])(f"{failed[2]}; next attempt in {failed[0] - now:.0f} s")
            try:
                if not image.sha256:
                    raise ImageRefused(f"image {image.name}: no sha256; the node refuses unverified images")
                self._ensure_file(names.disk, image.path, image.url, image.sha256, image.format, image.name)
                if names.kernel and image.kernel:
                    self._ensure_file(names.kernel, image.kernel, None, None, "raw", image.name + " kernel")
                if names.initrd and image.initrd:
                    self._ensure_file(names.initrd, image.initrd, None, None, "raw", image.name + " initrd")
            except ImageError as exc:
                count = (failed[1] if failed else 0) + 1
                delay = min(IMAGE_RETRY_BASE * 2 ** (count - 1), IMAGE_RETRY_CAP)
                self._failures[names.disk] = (time.monotonic() + delay, count, exc)
                raise
            self._failures.pop(names.disk, None)

    def _ensure_file(self, vol_name: str, path: str | None, url: str | None, sha256: str | None, fmt: str,
                     what: str) -> None:
        if self._lookup(vol_name) is not None:
            return
        if not path and not url:
            raise ImageError(f"image {what} has neither path nor url")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.work_dir / f".{vol_name}.partial"
        try:
            digest, size = self._fetch(path, url, tmp, what)
            if sha256 and digest != sha256.lower():
                log.warning("image %s: sha256 is %s, expected %s", what, digest, sha256)
                raise ChecksumMismatch(f"image {what}: the file's sha256 does not match the image's")
            self._need(size, f"image {what}")
            self._upload_new(vol_name, tmp, size, fmt)
        finally:
            tmp.unlink(missing_ok=True)

    def _fetch(self, path: str | None, url: str | None, dest: Path, what: str) -> tuple[str, int]:
        """Copy or download to `dest` under the image policy, hashing as the bytes pass; logs progress."""
        h = hashlib.sha256()
        done = 0
        last_log = time.monotonic()
        limit = self.image_policy.max_bytes
        src: IO[bytes]
        if path:
            src, total = images.open_path(self.image_policy, path, what)
        else:
            assert url is not None
            src, total = images.open_url(self.image_policy, url, what)
        try:
            with src, open(dest, "wb") as out:
                while chunk := src.read(_CHUNK):
                    done += len(chunk)
                    if done > limit:
                        raise ImageRefused(f"image {what}: larger than the node's limit of {limit} bytes")
                    h.update(chunk)
                    out.write(chunk)
                    if time.monotonic() - last_log > 5:
                        last_log = time.monotonic()
                        pct = f"{100 * done // total}%" if total else f"{done // 1024**2} MiB"
                        log.info("image %s: %s fetched", what, pct)
        except (OSError, http.client.HTTPException) as exc:
            log.warning("image %s: reading %s failed: %s", what, images.redact(path or url or ""), exc)
            raise ImageUnreachable(f"image {what}: reading the source failed ({type(exc).__name__})") from exc
        log.info("image %s: %d bytes fetched", what, done)
        return h.hexdigest(), done

    def _upload_new(self, vol_name: str, src: Path, size: int, fmt: str) -> None:
        partial = vol_name + ".partial"
        self.delete_volume(partial)
        if self.simulated:
            self.pool.createXML(_vol_xml(vol_name, max(size, 1), fmt), 0)
            return
        if fmt == "qcow2":
            # Through a raw upload the base keeps its own qcow2 header; the pool re-reads it on refresh.
            vol = self.pool.createXML(_vol_xml(partial, size, "raw"), 0)
        else:
            vol = self.pool.createXML(_vol_xml(partial, size, fmt), 0)
        stream = self.conn.newStream(0)
        try:
            vol.upload(stream, 0, size, 0)
            with open(src, "rb") as f:
                while chunk := f.read(_CHUNK):
                    stream.send(chunk)
            stream.finish()
        except BaseException:
            stream.abort()
            self.delete_volume(partial)
            raise
        # The finished file takes its final name only when complete: a crash mid-upload leaves a
        # `.partial` the next attempt deletes, never a truncated base. libvirt has no rename, so the
        # file is renamed in the pool directory and the pool re-scanned.
        path = Path(str(vol.path()))
        os.replace(path, path.with_name(vol_name))
        self.pool.refresh(0)

    # ------------------------------------------------------------- root disk

    def root_gib(self, name: str) -> int | None:
        vol = self._lookup(root_volume_name(name))
        if vol is None:
            return None
        return int(vol.info()[1]) // GiB

    def root_path(self, name: str) -> str:
        vol = self._lookup(root_volume_name(name))
        return str(vol.path()) if vol is not None else str(self.pool_dir / root_volume_name(name))

    def create_root(self, name: str, image: DomainImage, size_gib: int) -> None:
        if self._lookup(root_volume_name(name)) is not None:
            return
        base = self.base_paths(image)
        base_vol = self._lookup(self.base_names(image).disk)
        base_cap = int(base_vol.info()[1]) if base_vol is not None else 0
        self._need(0, f"root disk of {name}")
        xml = _vol_xml(root_volume_name(name), max(size_gib * GiB, base_cap), "qcow2",
                       backing=(base.disk, image.format))
        try:
            self.pool.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            raise ActionFailed(f"create root disk of {name}: {exc}") from exc

    def grow_root(self, name: str, size_gib: int, domain: libvirt.virDomain | None, image: DomainImage) -> None:
        """Grow, never shrink: online through the running domain, else through the volume."""
        vol = self._lookup(root_volume_name(name))
        if vol is None:
            raise ActionFailed(f"root disk of {name} is missing")
        current = int(vol.info()[1])
        want = size_gib * GiB
        if want <= current:
            return
        if self.simulated:
            # The test driver keeps no bytes and cannot resize: a larger empty volume is the same to it.
            vol.delete(0)
            self.create_root(name, image, size_gib)
            return
        try:
            if domain is not None and domain.isActive():
                domain.blockResize("vda", want, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            else:
                vol.resize(want, 0)
        except libvirt.libvirtError as exc:
            raise ActionFailed(f"grow root disk of {name} to {size_gib} GiB: {exc}") from exc

    def recreate_root(self, name: str, image: DomainImage, size_gib: int) -> None:
        self.delete_volume(root_volume_name(name))
        self.create_root(name, image, size_gib)

    # ------------------------------------------------------------------- seed

    def seed_present(self, name: str) -> bool:
        return self._lookup(seed_volume_name(name)) is not None

    def seed_path(self, name: str) -> str:
        vol = self._lookup(seed_volume_name(name))
        return str(vol.path()) if vol is not None else str(self.pool_dir / seed_volume_name(name))

    def write_seed(self, name: str, iso: bytes) -> None:
        vol_name = seed_volume_name(name)
        self.delete_volume(vol_name)
        self._need(len(iso), f"seed of {name}")
        vol = self.pool.createXML(_vol_xml(vol_name, len(iso), "raw"), 0)
        if self.simulated:
            return
        stream = self.conn.newStream(0)
        try:
            vol.upload(stream, 0, len(iso), 0)
            stream.send(iso)
            stream.finish()
        except BaseException:
            stream.abort()
            self.delete_volume(vol_name)
            raise

    def delete_domain_volumes(self, name: str) -> None:
        self.delete_volume(root_volume_name(name))
        self.delete_volume(seed_volume_name(name))
