"""The UMSG codec (cryptify.protocols.umsg) and its WebSocket layer (umsg_ws)."""

from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols import umsg
from cryptify.protocols.umsg import (
    FROM_CLIENT,
    FROM_SERVER,
    Message,
    UmsgError,
    cbor_decode,
    cbor_encode,
    decode_from_client,
    decode_from_server,
    encode_from_client,
    encode_from_server,
)
from cryptify.protocols.umsg_ws import (
    PROTOCOL_ERROR,
    TOO_BIG,
    UNSUPPORTED_DATA,
    Closed,
    Failed,
    Opened,
    PongReceived,
    Received,
    UmsgWebSocket,
    server_frame,
)
from tests.fakes import opened_pair
from tests.umsg_support import FROM_CLIENT_SAMPLES, FROM_SERVER_SAMPLES


def raw(body: dict[str, Any]) -> bytes:
    return cbor2.dumps(body)


class CodecTests(SynchronousTestCase):
    """Encoding and decoding UMSG messages."""

    def test_every_type_has_a_sample(self) -> None:
        """The test samples cover exactly the schema's message types."""
        self.assertEqual(set(FROM_CLIENT_SAMPLES), set(FROM_CLIENT))
        self.assertEqual(set(FROM_SERVER_SAMPLES), set(FROM_SERVER))

    def test_round_trip(self) -> None:
        """Every sample message encodes and decodes back to itself, both directions."""
        for name, fields in FROM_CLIENT_SAMPLES.items():
            msg = Message(name, fields)
            self.assertEqual(decode_from_client(encode_from_client(msg)), msg)
        for name, fields in FROM_SERVER_SAMPLES.items():
            msg = Message(name, fields)
            self.assertEqual(decode_from_server(encode_from_server(msg)), msg)

    def test_cbor2_agrees(self) -> None:
        """An independent CBOR library reads what we write and we read what it writes."""
        for name, fields in FROM_CLIENT_SAMPLES.items():
            ours = encode_from_client(Message(name, fields))
            self.assertEqual(cbor2.loads(ours), {"type": name, **fields})
            self.assertEqual(decode_from_client(raw({"type": name, **fields})).fields, fields)

    def test_unknown_fields_ignored(self) -> None:
        """Fields a later revision may add are dropped, not refused."""
        msg = decode_from_client(raw({"type": "fetch", "id": 9, "future": [1, 2]}))
        self.assertEqual(msg, Message("fetch", {"id": 9}))

    def assertCode(self, data: bytes, code: str = "malformed") -> UmsgError:
        with self.assertRaises(UmsgError) as caught:
            decode_from_client(data)
        self.assertEqual(caught.exception.code, code)
        return caught.exception

    def test_refusals(self) -> None:
        """Malformed input of every kind gives UmsgError('malformed') saying why."""
        attach = dict(FROM_CLIENT_SAMPLES["attach"], type="attach")
        cases = {
            "not a map": raw([1, 2]),
            "no type": raw({"id": 1}),
            "unknown type": raw({"type": "nope"}),
            "missing field": raw({k: v for k, v in attach.items() if k != "uri"}),
            "wrong type": raw(dict(attach, uri=5)),
            "bool as int": raw(dict(attach, id=True)),
            "bad pattern": raw(dict(attach, uri="sip:alice")),
            "too long": raw(dict(attach, app="x" * 65)),
            "too many versions": raw(dict(attach, versions=list(range(9)))),
            "id too large": raw(dict(attach, id=2**32)),
            "float": raw(dict(attach, id=1.5)),
            "tag": raw(dict(attach, app=cbor2.CBORTag(99, "x"))),
            "trailing": raw(attach) + b"\x00",
            "truncated": raw(attach)[:-3],
            "indefinite": b"\xbf\x64type\x65fetch\xff",
            "duplicate key": b"\xa2\x64type\x65fetch\x64type\x65fetch",
            "non-text key": b"\xa1\x01\x02",
            "bad utf-8": b"\xa1\x64type\x62\xff\xfe",
            "deep": raw({"type": "fetch", "id": 1, "x": [[[[[[1]]]]]]}),
            "too many keys": raw({"type": "fetch", "id": 1, **{f"k{i}": i for i in range(40)}}),
            "empty": b"",
        }
        for what, data in cases.items():
            with self.subTest(what):
                self.assertCode(data)

    def test_refusal_names_the_id(self) -> None:
        """A malformed map with a valid id gives that id with the error; other ids none."""
        attach = dict(FROM_CLIENT_SAMPLES["attach"], type="attach", id=77)
        self.assertEqual(self.assertCode(raw(dict(attach, uri=5))).id, 77)
        self.assertEqual(self.assertCode(raw({"type": "nope", "id": 9})).id, 9)
        for bad_id in (True, -1, 2**32, "7", None):
            with self.subTest(bad_id=bad_id):
                self.assertIsNone(self.assertCode(raw(dict(attach, id=bad_id, uri=5))).id)
        self.assertIsNone(self.assertCode(b"\xff").id)

    def test_non_minimal_refused(self) -> None:
        """An integer or a length in a longer head than needed is malformed."""
        fetch = b"\xa2\x64type\x65fetch\x62id"
        self.assertEqual(decode_from_client(fetch + b"\x17").id, 23)
        self.assertEqual(decode_from_client(fetch + b"\x18\x18").id, 24)
        for wide in (b"\x18\x17", b"\x19\x00\x01", b"\x1a\x00\x00\xff\xff", b"\x1b" + bytes(8)):
            with self.subTest(wide=wide):
                self.assertCode(fetch + wide)
        # A wide map length and a wide text length too.
        self.assertCode(b"\xb8\x02\x64type\x65fetch\x62id\x01")
        self.assertCode(b"\xa2\x78\x04type\x65fetch\x62id\x01")

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(FROM_CLIENT_SAMPLES)), st.data())
    def test_non_minimal_fuzz(self, name: str, data: st.DataObject) -> None:
        """Any message with any of its heads widened is refused; unwidened it decodes."""
        body = {"type": name, **FROM_CLIENT_SAMPLES[name]}
        widened = [False]

        def head(major: int, arg: int) -> bytes:
            sizes = [n for n in (0, 1, 2, 4, 8) if (arg < 24 if n == 0 else arg < 1 << (8 * n))]
            size = data.draw(st.sampled_from(sizes))
            widened[0] |= size != sizes[0]
            if size == 0:
                return bytes([major << 5 | arg])
            info = {1: 24, 2: 25, 4: 26, 8: 27}[size]
            return bytes([major << 5 | info]) + arg.to_bytes(size, "big")

        def enc(value: Any) -> bytes:
            if isinstance(value, bool) or value is None:
                return cbor2.dumps(value)
            if isinstance(value, int):
                return head(0, value) if value >= 0 else head(1, -1 - value)
            if isinstance(value, bytes):
                return head(2, len(value)) + value
            if isinstance(value, str):
                return head(3, len(value.encode())) + value.encode()
            if isinstance(value, list):
                return head(4, len(value)) + b"".join(enc(v) for v in value)
            assert isinstance(value, dict)
            return head(5, len(value)) + b"".join(enc(k) + enc(v) for k, v in value.items())

        encoded = enc(body)
        if widened[0]:
            error = self.assertCode(encoded)
            self.assertIn("shortest form", error.detail)
        else:
            self.assertEqual(encoded, raw(body))
            self.assertEqual(decode_from_client(encoded).type, name)

    def test_too_large(self) -> None:
        """A message above the size limit is refused with 'too-large' before parsing."""
        self.assertCode(b"\x00" * (umsg.MAX_MESSAGE + 1), "too-large")
        with self.assertRaises(UmsgError) as caught:
            decode_from_client(raw({"type": "fetch", "id": 1}), max_size=4)
        self.assertEqual(caught.exception.code, "too-large")

    def test_encode_validates(self) -> None:
        """Encoding refuses a message its own schema would refuse."""
        with self.assertRaises(UmsgError):
            encode_from_server(Message("attached", {"id": 1}))
        with self.assertRaises(UmsgError):
            cbor_encode({"type": 1.5})
        with self.assertRaises(UmsgError):
            cbor_encode({1: 2})

    def test_integers(self) -> None:
        """Integers of every CBOR width, negative too, survive a round trip."""
        for value in (0, 23, 24, 255, 256, 65535, 65536, 2**32, 2**64 - 1, -1, -(2**64)):
            self.assertEqual(cbor_decode(cbor_encode(value)), value)
            self.assertEqual(cbor2.loads(cbor_encode(value)), value)

    def test_base_uri(self) -> None:
        """The one base_uri: an extension is cut off, a base URI stays as it is."""
        self.assertEqual(umsg.base_uri("tel:+8888;101"), "tel:+8888")
        self.assertEqual(umsg.base_uri("tel:+8888;1;2"), "tel:+8888")
        self.assertEqual(umsg.base_uri("tel:+8888"), "tel:+8888")

    def test_signed_octets(self) -> None:
        """The attach signature covers a label, the nonce, account, URI and period."""
        self.assertEqual(
            umsg.attach_signed_octets(b"N" * 32, "acme", "tel:+1", "2026-11"),
            b"umsg.1 attach\0" + b"N" * 32 + b"\0acme\0tel:+1\0" + b"2026-11",
        )

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=300))
    def test_fuzz_bytes(self, data: bytes) -> None:
        """Any octets: decoding succeeds or raises UmsgError, nothing else."""
        for decode in (decode_from_client, decode_from_server):
            try:
                decode(data)
            except UmsgError:
                pass

    values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats()
        | st.binary(max_size=40)
        | st.text(max_size=40)
        | st.sampled_from(list(FROM_CLIENT) + list(FROM_SERVER)),
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.dictionaries(st.text(max_size=12) | st.sampled_from(["type", "id", "uri"]), inner)
        ),
        max_leaves=20,
    )

    @settings(max_examples=400, deadline=None)
    @given(values)
    def test_fuzz_structures(self, value: Any) -> None:
        """Any CBOR structure (from cbor2): success or UmsgError only."""
        try:
            data = cbor2.dumps(value)
        except (ValueError, OverflowError, TypeError):
            return
        for decode in (decode_from_client, decode_from_server):
            try:
                decode(data)
            except UmsgError:
                pass

    @settings(max_examples=200, deadline=None)
    @given(
        st.sampled_from(sorted(FROM_CLIENT_SAMPLES)),
        st.dictionaries(st.sampled_from(["id", "uri", "to", "session", "code"]), st.integers()),
    )
    def test_fuzz_fields(self, name: str, changes: dict[str, Any]) -> None:
        """Valid messages with fields replaced by wrong types: UmsgError only."""
        data = raw({"type": name, **FROM_CLIENT_SAMPLES[name], **changes})
        try:
            decode_from_client(data)
        except UmsgError:
            pass


def wsproto_end(client: bool) -> Any:
    """A wsproto frame layer (no handshake), open, for writing or reading frames."""
    from wsproto import Connection, ConnectionType

    return Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)


class WebSocketTests(SynchronousTestCase):
    """UmsgWebSocket: handshake, messages, pings, limits, errors."""

    def test_upgrade_limit(self) -> None:
        """An upgrade request of up to 32 KiB opens; one octet more is answered 400
        and closed, however it is cut (TLS records, one chunk, small pieces)."""
        from cryptify.protocols.umsg_ws import MAX_UPGRADE

        self.assertEqual(MAX_UPGRADE, 32 * 1024)
        head = (
            b"GET / HTTP/1.1\r\nHost: crs.test\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: umsg.1\r\nX-Pad: "
        )

        def request(size: int) -> bytes:
            return head + b"a" * (size - len(head) - 4) + b"\r\n\r\n"

        for piece in (1000, 16384, 1 << 20):
            for size, opens in ((MAX_UPGRADE, True), (MAX_UPGRADE + 1, False)):
                with self.subTest(piece=piece, size=size):
                    data = request(size)
                    self.assertEqual(len(data), size)
                    server = UmsgWebSocket.server()
                    events: list[Any] = []
                    for start in range(0, size, piece):
                        events += server.receive(data[start : start + piece])
                    out = server.outgoing()
                    if opens:
                        self.assertEqual(events, [Opened("/")])
                        self.assertTrue(out.startswith(b"HTTP/1.1 101 "))
                    else:
                        self.assertEqual(len(events), 1)
                        self.assertIsInstance(events[0], Closed)
                        self.assertTrue(out.startswith(b"HTTP/1.1 400 "), out)
                        self.assertTrue(server.closed)

    def test_handshake_and_messages(self) -> None:
        """After the umsg.1 handshake, binary messages flow both ways."""
        client, server = opened_pair()
        client.send(b"hello")
        self.assertEqual(server.receive(client.outgoing()), [Received(b"hello")])
        server.send(b"x" * 60000)
        self.assertEqual(client.receive(server.outgoing()), [Received(b"x" * 60000)])

    @settings(max_examples=50, deadline=None)
    @given(st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]), st.binary(max_size=8))
    def test_server_frames_as_wsproto(self, size: int, head: bytes) -> None:
        """The CRS's own frame writer writes what wsproto would, at every length boundary."""
        from wsproto import Connection, ConnectionType
        from wsproto.events import BytesMessage

        data = (head + b"z" * size)[:size]
        expected = bytes(Connection(ConnectionType.SERVER).send(BytesMessage(data=data)))
        self.assertEqual(server_frame(data), expected)
        client, server = opened_pair(max_message=1 << 17)
        server.send(data)
        self.assertEqual(client.receive(server.outgoing()), [Received(data)])

    def test_no_subprotocol(self) -> None:
        """A handshake without umsg.1 is answered 400 and closed."""
        request = (
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        server = UmsgWebSocket.server()
        events = server.receive(request)
        self.assertEqual(events, [Closed(PROTOCOL_ERROR, "no umsg.1 subprotocol")])
        self.assertTrue(server.outgoing().startswith(b"HTTP/1.1 400 "))

    def test_not_http(self) -> None:
        """Garbage instead of an upgrade request closes the connection."""
        server = UmsgWebSocket.server()
        events = server.receive(b"\x16\x03\x01garbage\r\n\r\n")
        self.assertEqual(len(events), 1)
        self.assertIsInstance(events[0], Closed)
        self.assertEqual(server.receive(b"more"), [])

    def test_text_refused(self) -> None:
        """A text message is a protocol failure (1003)."""
        _, server = opened_pair()
        from wsproto.events import TextMessage

        data = wsproto_end(client=True).send(TextMessage(data="hi"))
        events = server.receive(bytes(data))
        self.assertEqual(events, [Failed(UNSUPPORTED_DATA, "UMSG uses binary messages only")])

    def test_too_big(self) -> None:
        """A message over the limit fails with 1009, even if it arrives in pieces."""
        _, server = opened_pair(max_message=1000)
        from wsproto.events import BytesMessage

        peer = wsproto_end(client=True)
        first = bytes(peer.send(BytesMessage(data=b"a" * 600, message_finished=False)))
        second = bytes(peer.send(BytesMessage(data=b"a" * 600, message_finished=True)))
        self.assertEqual(server.receive(first), [])
        events = server.receive(second)
        self.assertEqual(len(events), 1)
        self.assertIsInstance(events[0], Failed)
        self.assertEqual(events[0].code, TOO_BIG)

    def test_fragments_reassembled(self) -> None:
        """A fragmented binary message arrives as one message."""
        _, server = opened_pair()
        from wsproto.events import BytesMessage

        peer = wsproto_end(client=True)
        data = bytes(peer.send(BytesMessage(data=b"ab", message_finished=False)))
        data += bytes(peer.send(BytesMessage(data=b"cd", message_finished=True)))
        self.assertEqual(server.receive(data), [Received(b"abcd")])

    def test_ping_pong(self) -> None:
        """A ping is answered by the other end itself; the pinger sees the pong."""
        client, server = opened_pair()
        server.ping(b"ka")
        self.assertEqual(client.receive(server.outgoing()), [])
        self.assertEqual(server.receive(client.outgoing()), [PongReceived()])

    def test_close(self) -> None:
        """A close from one end is answered and reported once."""
        client, server = opened_pair()
        client.close(1000, "bye")
        self.assertEqual(server.receive(client.outgoing()), [Closed(1000, "bye")])
        self.assertTrue(server.closed)
        self.assertNotEqual(server.outgoing(), b"")
        self.assertEqual(server.connection_lost(), [])

    def test_unmasked_frame(self) -> None:
        """A client frame without a mask is a protocol error."""
        _, server = opened_pair()
        events = server.receive(b"\x82\x02hi")
        self.assertEqual(len(events), 1)
        self.assertIsInstance(events[0], Failed)
        self.assertEqual(events[0].code, PROTOCOL_ERROR)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200), st.booleans())
    def test_fuzz(self, data: bytes, handshake_done: bool) -> None:
        """Random octets before or after the handshake never raise."""
        if handshake_done:
            _, server = opened_pair()
        else:
            server = UmsgWebSocket.server()
        for piece in (data[:7], data[7:]):
            for event in server.receive(piece):
                self.assertIsInstance(event, Opened | Received | PongReceived | Failed | Closed)
        server.outgoing()
