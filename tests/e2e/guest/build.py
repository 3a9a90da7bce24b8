"""The e2e suite's test guest: the product's builder (`api.testguest`), cached per user."""

from __future__ import annotations

from api.testguest import GuestImage, build, cache_root

__all__ = ["GuestImage", "build", "cache_root"]
