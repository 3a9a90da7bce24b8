"""The engine's error tree. Backend errors are translated to these at the edge.

    StoreError
      ├── NotFound          the key or object does not exist
      ├── AlreadyExists     create of a name that is taken
      ├── Conflict          compare-and-swap lost: the object changed since it was read
      ├── TooLarge          the value exceeds what etcd accepts in one request
      ├── Compacted         a watch start revision is older than etcd's compaction
      │                       (.compact_revision: the oldest revision still available)
      ├── Unavailable       etcd could not be reached within the retry budget
      └── PermissionDenied  etcd's RBAC refused this identity the key range (.prefix names
                              it); never retried: it will not pass by waiting
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every store error."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    pass


class TooLarge(StoreError):
    pass


class Unavailable(StoreError):
    pass


class Compacted(StoreError):
    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"revision compacted; oldest available is {compact_revision}")


class PermissionDenied(StoreError):
    def __init__(self, prefix: str, detail: str = "") -> None:
        self.prefix = prefix
        self.detail = detail
        super().__init__(f"etcd permission denied for this identity on {prefix}" + (f" ({detail})" if detail else ""))
