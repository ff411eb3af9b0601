"""Tests for L{cryptify.protocols.websocket_handshake}: the server's fast
opening handshake answers, fails and times everything exactly as wsproto's
route does, on valid, mutated and random requests cut anywhere."""

from __future__ import annotations

import base64
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols.umsg_ws import Received, UmsgWebSocket, client_frame
from cryptify.protocols.websocket_handshake import (
    FAST_MAX,
    ServerUpgrade,
    accept_response,
    parse_request,
)

MAX_MESSAGE = 1000

Outcome = list[Any]


def reference(pieces: list[bytes]) -> Outcome:
    """wsproto's route, step by step: events, octets out, state, or the error."""
    ws = UmsgWebSocket.server(MAX_MESSAGE)
    steps: Outcome = []
    for piece in pieces:
        try:
            events = ws.receive(piece)
        except Exception as exc:
            steps.append(("raised", type(exc)))
            return steps
        steps.append((events, ws.outgoing(), ws.open, ws.closed))
    return steps


def fast(pieces: list[bytes]) -> Outcome:
    """The route under test, step by step, as the CRS's wiring drives it."""
    upgrade = ServerUpgrade(MAX_MESSAGE)
    ws: UmsgWebSocket | None = None
    steps: Outcome = []
    for piece in pieces:
        try:
            if ws is None:
                handed = upgrade.receive(piece)
                if handed is None:
                    steps.append(([], b"", False, False))
                    continue
                ws, events = handed
            else:
                events = ws.receive(piece)
        except Exception as exc:
            steps.append(("raised", type(exc)))
            return steps
        steps.append((events, ws.outgoing(), ws.open, ws.closed))
    return steps


def request(
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
) -> bytes:
    if headers is None:
        headers = [
            ("Host", "crs.example"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Protocol", "umsg.1"),
        ]
    lines = [f"GET {target} HTTP/1.1", *(f"{n}: {v}" for n, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


_VISIBLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
_VALUE = st.one_of(
    _VISIBLE,
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.text(st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=8),
)


@st.composite
def requests(draw: Any) -> bytes:
    """Upgrade requests near and around the fast route's edges."""

    def cased(name: str) -> str:
        return draw(st.sampled_from([name, name.lower(), name.upper()]))

    def pick(good: str, *bad: str) -> str:
        """Mostly the good value, so that the fast route is taken often."""
        return good if draw(st.integers(0, 4)) else draw(st.sampled_from(bad))

    key = base64.b64encode(draw(st.binary(min_size=16, max_size=16))).decode()
    headers = [
        (cased("Host"), pick("crs.example", "127.0.0.1:5223", "a..b", "[::1]")),
        (cased("Upgrade"), pick("websocket", "WebSocket", "h2c")),
        (cased("Connection"), pick("Upgrade", "keep-alive, upgrade", "close")),
        (cased("Sec-WebSocket-Key"), pick(key, "x", key + " ")),
        (cased("Sec-WebSocket-Version"), pick("13", "8", " 13")),
        (
            cased("Sec-WebSocket-Protocol"),
            pick("umsg.1", "x, umsg.1", "umsg.1 ,y", "umsg.2", "", " umsg.1 "),
        ),
    ]
    extra = draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        "User-Agent",
                        "Origin",
                        "Content-Length",
                        "Transfer-Encoding",
                        "Expect",
                        "Sec-WebSocket-Extensions",
                        "Host",
                        "Sec-WebSocket-Key",
                        "X-Y",
                        "Bad Name",
                    ]
                ),
                _VALUE,
            ),
            max_size=2,
        )
    )
    headers += extra
    if not draw(st.integers(0, 4)):
        del headers[draw(st.integers(0, len(headers) - 1))]
    headers = draw(st.permutations(headers))
    target = draw(st.one_of(st.just("/"), _VISIBLE, st.just("/a b")))
    data = request(target, headers)
    if not draw(st.integers(0, 4)):
        data = data.replace(
            b"HTTP/1.1", draw(st.sampled_from([b"HTTP/1.0", b"HTTP/2", b"http/1.1"]))
        )
    if draw(st.booleans()):
        data += client_frame(draw(st.binary(max_size=40)))
    return data


@st.composite
def mutated(draw: Any) -> bytes:
    data = bytearray(draw(requests()))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "insert", "delete"]))
        if how == "flip":
            data[at] = draw(st.integers(0, 255))
        elif how == "insert":
            data[at:at] = draw(
                st.sampled_from([b"\r\n", b" ", b"\t", b":", b",", b"\x00", b"\xff"])
            )
        else:
            del data[at]
    return bytes(data)


def cut(draw: Any, data: bytes) -> list[bytes]:
    points = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=5))))
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a] or [b""]


class SameAsWsprotoTests(SynchronousTestCase):
    def check(self, pieces: list[bytes]) -> None:
        self.assertEqual(fast(pieces), reference(pieces))

    @settings(max_examples=300, deadline=None)
    @given(requests(), st.data())
    def test_requests(self, data: bytes, draw: st.DataObject) -> None:
        """Requests valid and not, whole or cut anywhere."""
        self.check(cut(draw.draw, data))

    @settings(max_examples=300, deadline=None)
    @given(mutated(), st.data())
    def test_mutated(self, data: bytes, draw: st.DataObject) -> None:
        """Requests with octets changed, added or removed."""
        self.check(cut(draw.draw, data))

    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=300), st.data())
    def test_random(self, data: bytes, draw: st.DataObject) -> None:
        """Random octets."""
        self.check(cut(draw.draw, data))

    def test_examples(self) -> None:
        """A few requests by hand, each through both routes."""
        good = request()
        for data in (
            good,
            good + client_frame(b"hello"),
            good.replace(b"umsg.1", b"umsg.2"),
            good.replace(b"GET", b"POST"),
            b"\r\n" + good,
            good.replace(b"crs.example", b"a..b"),
            good[:-2] + b"Content-Length: 3\r\n\r\nabc",
            good[:-2] + b"X: " + b"a" * FAST_MAX + b"\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3000,
        ):
            self.check([data])
            self.check([data[:1], data[1:7], data[7:]])

    def test_fast_route_taken(self) -> None:
        """The reference client's request is answered without wsproto, with
        the RFC 6455 example's accept token; a frame behind it is read."""
        key = b"dGhlIHNhbXBsZSBub25jZQ=="
        self.assertEqual(parse_request(request()[:-4]), ("/", key))
        self.assertIn(
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", accept_response(key)
        )
        client = UmsgWebSocket.connect("127.0.0.1")
        handed = ServerUpgrade(MAX_MESSAGE).receive(client.outgoing() + client_frame(b"hi"))
        assert handed is not None
        ws, events = handed
        self.assertIsNone(ws._handshake)
        self.assertEqual(events[1:], [Received(b"hi")])
