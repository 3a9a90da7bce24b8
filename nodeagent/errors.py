"""The node agent's error tree. libvirt and I/O errors are translated to these at the edge.

    AgentError
      ├── HypervisorUnavailable   libvirt cannot be reached (the connection is retried)
      │     └── PoolUnusable      the storage pool is damaged or points elsewhere (a node condition)
      ├── NameConflict            a domain of the derived name exists without Hostplane metadata
      ├── ImageError              the image cannot be made ready
      │     ├── ChecksumMismatch  the bytes do not hash to the image's sha256
      │     ├── ImageRefused      the source breaks the node's image policy (path, address, size, sha256)
      │     └── ImageUnreachable  the source cannot be read or downloaded now
      ├── StorageFull             the pool lacks the space the action needs
      └── ActionFailed            a libvirt call in an action failed (cause attached)

Each carries a `reason`, the condition reason reported in the VPS's observed status. Messages of
image errors reach customers: they never contain a host path, a URL or a credential.
"""

from __future__ import annotations


class AgentError(Exception):
    reason = "Error"


class HypervisorUnavailable(AgentError):
    reason = "LibvirtUnavailable"


class PoolUnusable(HypervisorUnavailable):
    reason = "PoolUnusable"


class NameConflict(AgentError):
    reason = "NameConflict"


class ImageError(AgentError):
    reason = "ImageUnavailable"


class ChecksumMismatch(ImageError):
    reason = "ImageChecksumMismatch"


class ImageRefused(ImageError):
    reason = "ImageRefused"


class ImageUnreachable(ImageError):
    reason = "ImageUnavailable"


class StorageFull(AgentError):
    reason = "StorageFull"


class ActionFailed(AgentError):
    reason = "ActionFailed"
