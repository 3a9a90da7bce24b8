"""The console CLI's pure helpers: the WebSocket URL and the escape key."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from api.console_cli import ESCAPE, split_escape, websocket_url


def test_websocket_url_follows_the_api_scheme() -> None:
    """https → wss, http → ws, the ticket path appended once."""
    assert websocket_url("https://h:8443/", "/v1/console?ticket=t") == "wss://h:8443/v1/console?ticket=t"
    assert websocket_url("http://127.0.0.1:8080", "/v1/console?ticket=t") == "ws://127.0.0.1:8080/v1/console?ticket=t"


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_nothing_typed_after_the_escape_key_is_sent(before: bytes, after: bytes) -> None:
    """Bytes up to the first Ctrl-] are sent, nothing after it; without one, everything is sent."""
    sent, leave = split_escape(before + ESCAPE + after)
    assert leave and ESCAPE not in sent and (before + ESCAPE).startswith(sent + ESCAPE)
    if ESCAPE not in before:
        assert split_escape(before) == (before, False)
