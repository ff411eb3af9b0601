"""Opening connections with the independent `websockets` client library.

Its synchronous client now and then (about 1 in 100 here) waits forever for
the handshake response although the server answered; a raw TLS socket
sending the same upgrade request never missed one in 900 tries against the
same CRS (see the CHANGELOG note of this change and
python-websockets/websockets#1387).  Tests therefore retry the opening
handshake a few times; everything after it is checked strictly.
"""

from __future__ import annotations

from typing import Any

try:
    from websockets.sync.client import connect as _connect
except ImportError:  # pragma: no cover
    _connect = None

#: Opening handshakes tried before giving up.
ATTEMPTS = 3


def available() -> bool:
    return _connect is not None


def ws_connect(url: str, **kwargs: Any) -> Any:
    """``websockets.sync.client.connect`` with the opening handshake retried."""
    assert _connect is not None
    kwargs.setdefault("open_timeout", 10)
    for attempt in range(ATTEMPTS):
        try:
            return _connect(url, **kwargs)
        except TimeoutError:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")
