"""Memory per idle WebSocket server connection: wsproto (ours) vs autobahn.

Builds N server-side connections in memory (no sockets, no TLS), completes
the umsg.1 handshake on each, and reports the Python heap each one keeps
(tracemalloc) as one JSON line.  autobahn is measured only if installed.

    .venv/bin/python bench/ws_memory.py [--connections N]
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import tracemalloc
from collections.abc import Callable
from typing import Any

from twisted.internet.testing import StringTransport

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: crs.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: umsg.1\r\n\r\n"
)


def request() -> bytes:
    return REQUEST % base64.b64encode(os.urandom(16))


def wsproto_conn() -> Any:
    from cryptify.protocols.umsg_ws import Opened, UmsgWebSocket

    ws = UmsgWebSocket.server()
    events = ws.receive(request())
    assert events == [Opened("/")], events
    ws.outgoing()
    return ws


def wsproto_full() -> Any:
    """wsproto's WSConnection, which keeps its HTTP parser for the connection's life."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request

    conn = WSConnection(ConnectionType.SERVER)
    conn.receive_data(request())
    for event in conn.events():
        if isinstance(event, Request):
            conn.send(AcceptConnection(subprotocol="umsg.1"))
    return conn


def autobahn_factory() -> Callable[[], Any]:
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

    class Proto(WebSocketServerProtocol):  # type: ignore[misc]
        def onConnect(self, request: Any) -> str:
            return "umsg.1"

    factory = WebSocketServerFactory()
    factory.protocol = Proto
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)

    def make() -> Any:
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        proto.dataReceived(request())
        assert proto.state == proto.STATE_OPEN, proto.state
        return (proto, proto.transport)

    return make


def measure(make: Callable[[], Any], count: int) -> float:
    keep = [make() for _ in range(50)]  # warm caches
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    keep = [make() for _ in range(count)]
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keep
    return (after - before) / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    result: dict[str, Any] = {"connections": args.connections}
    result["wsproto_frames_only_bytes"] = round(measure(wsproto_conn, args.connections))
    result["wsproto_wsconnection_bytes"] = round(measure(wsproto_full, args.connections))
    try:
        make = autobahn_factory()
    except ImportError:
        result["autobahn_bytes"] = None
    else:
        result["autobahn_bytes"] = round(measure(make, args.connections))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
