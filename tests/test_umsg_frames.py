"""umsg_ws's own frame reader and writer, checked against wsproto.

Before, both ends read (and the client wrote) frames with wsproto's
``Connection``.  :class:`Reference` is that code, kept here: every stream
of octets, well formed or hostile, cut anywhere, must give the same events
and the same octets back (pongs, closes) from :class:`UmsgWebSocket` as
from it.  One difference is intended: a frame that takes a message past
``max_message`` fails (1009) once its header is in (a text frame: its
first payload octet), where wsproto waited for the excess to arrive.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from wsproto import Connection, ConnectionType
from wsproto.connection import ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.frame_protocol import XorMaskerSimple
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from cryptify.protocols.umsg_ws import (
    INVALID_DATA,
    PROTOCOL_ERROR,
    TOO_BIG,
    UNSUPPORTED_DATA,
    Closed,
    Failed,
    PongReceived,
    Received,
    UmsgWebSocket,
    WsEvent,
    client_frame,
    mask,
    server_frame,
)
from tests.fakes import opened_pair

BOUNDARIES = [0, 1, 4, 125, 126, 127, 65535, 65536]


class Reference:
    """The previous frame layer of UmsgWebSocket (wsproto's Connection), verbatim in effect."""

    def __init__(self, client: bool, max_message: int) -> None:
        self.conn = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
        self.max_message = max_message
        self.out: list[bytes] = []
        self.partial: bytearray | None = None
        self.closed = False
        self.failed = False

    def outgoing(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def receive(self, data: bytes) -> list[WsEvent]:
        if self.closed or self.failed:
            return []
        events: list[WsEvent] = []
        try:
            if self.conn.state is not ConnectionState.CLOSED:
                self.conn.receive_data(data)
                self.frames(events)
        except (RemoteProtocolError, LocalProtocolError) as exc:  # pragma: no cover
            self.failed = True
            events.append(Failed(PROTOCOL_ERROR, str(exc)[:100]))
        return events

    def fail(self, events: list[WsEvent], code: int, reason: str) -> None:
        self.failed = True
        events.append(Failed(code, reason))

    def frames(self, events: list[WsEvent]) -> None:
        conn = self.conn
        for event in conn.events():
            if isinstance(event, BytesMessage):
                if not self.collect(event, events):
                    return
            elif isinstance(event, Ping):
                if conn.state is ConnectionState.OPEN:
                    self.out.append(bytes(conn.send(event.response())))
            elif isinstance(event, Pong):
                events.append(PongReceived())
            elif isinstance(event, TextMessage):
                self.fail(events, UNSUPPORTED_DATA, "UMSG uses binary messages only")
                return
            elif isinstance(event, CloseConnection):
                if conn.state is ConnectionState.OPEN:
                    self.fail(events, int(event.code), (event.reason or "")[:100])
                    return
                if conn.state is ConnectionState.REMOTE_CLOSING:
                    self.out.append(bytes(conn.send(event.response())))
                self.closed = True
                events.append(Closed(event.code, event.reason or ""))
                return

    def collect(self, event: BytesMessage, events: list[WsEvent]) -> bool:
        chunk = event.data
        if self.partial is None:
            if event.message_finished and len(chunk) <= self.max_message:
                events.append(Received(bytes(chunk)))
                return True
            self.partial = bytearray()
        self.partial += chunk
        if len(self.partial) > self.max_message:
            self.partial = None
            self.fail(events, TOO_BIG, f"message larger than {self.max_message} octets")
            return False
        if event.message_finished:
            events.append(Received(bytes(self.partial)))
            self.partial = None
        return True


def unmasked(stream: bytes) -> bytes:
    """Client frames rewritten unmasked (with wsproto's masker), to compare them."""
    out = bytearray()
    pos = 0
    while pos < len(stream):
        first, second = stream[pos], stream[pos + 1]
        assert second & 0x80, "client frame not masked"
        size, head = second & 0x7F, 2
        if size == 126:
            size, head = int.from_bytes(stream[pos + 2 : pos + 4]), 4
        elif size == 127:
            size, head = int.from_bytes(stream[pos + 2 : pos + 10]), 10
        key = stream[pos + head : pos + head + 4]
        payload = stream[pos + head + 4 : pos + head + 4 + size]
        assert len(payload) == size
        out += bytes((first, second & 0x7F)) + stream[pos + 2 : pos + head]
        out += XorMaskerSimple(key).process(bytearray(payload))
        pos += head + 4 + size
    return bytes(out)


def end_under_test(client: bool, max_message: int) -> UmsgWebSocket:
    pair = opened_pair(max_message)
    return pair[0] if client else pair[1]


# ----------------------------------------------------------- strategies

payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n, b: (b * n)[:n], st.sampled_from(BOUNDARIES), st.binary(min_size=1)),
)
control_payloads = st.binary(max_size=125)
actions = st.one_of(
    st.builds(BytesMessage, data=payloads, message_finished=st.booleans()),
    st.builds(Ping, payload=control_payloads),
    st.builds(Pong, payload=control_payloads),
    st.builds(TextMessage, data=st.text(max_size=10)),
    st.builds(
        CloseConnection,
        code=st.sampled_from([1000, 1001, 1003, 1008, 1011, 3000, 4999]),
        reason=st.text(max_size=20),
    ),
)


def wsproto_stream(peer_is_client: bool, steps: list[Any]) -> bytes:
    """What a wsproto peer writes for ``steps`` (skipping what it refuses to send)."""
    peer = Connection(ConnectionType.CLIENT if peer_is_client else ConnectionType.SERVER)
    out = bytearray()
    for step in steps:
        try:
            out += peer.send(step)
        except (LocalProtocolError, TypeError):
            continue
    return bytes(out)


@st.composite
def raw_frames(draw: Any) -> bytes:
    """One frame built octet by octet, often breaking a rule."""
    opcode = draw(st.sampled_from([0, 1, 2, 2, 2, 3, 7, 8, 8, 9, 10, 11, 15]))
    fin = draw(st.sampled_from([0x80, 0x80, 0x80, 0]))
    rsv = draw(st.sampled_from([0, 0, 0, 0, 0x40, 0x20, 0x10]))
    masked = draw(st.sampled_from([0x80, 0x80, 0x80, 0]))
    if opcode == 8 and draw(st.booleans()):
        code = draw(st.sampled_from([999, 1000, 1004, 1005, 1006, 1007, 1016, 2999, 3000, 5000]))
        reason = draw(st.one_of(st.text(max_size=10).map(str.encode), st.binary(max_size=10)))
        payload = code.to_bytes(2, "big") + reason
    else:
        payload = draw(payloads)
    size = len(payload)
    encoding = draw(st.sampled_from(["minimal", "minimal", "minimal", "2", "8", "lie"]))
    if encoding == "lie":
        size = draw(st.sampled_from([size + 1, 1 << 20, 1 << 40, (1 << 63) + 5, (1 << 64) - 1]))
        encoding = "minimal"
    if encoding == "minimal" and size < 126:
        head = bytes((fin | rsv | opcode, masked | size))
    elif (encoding == "minimal" and size < 1 << 16) or (encoding == "2" and size < 1 << 16):
        head = bytes((fin | rsv | opcode, masked | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((fin | rsv | opcode, masked | 127)) + size.to_bytes(8, "big")
    if masked:
        key = draw(st.binary(min_size=4, max_size=4))
        return head + key + bytes(XorMaskerSimple(key).process(bytearray(payload)))
    return head + payload


def cut(draw: Any, stream: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = []
    last = 0
    for point in [*points, len(stream)]:
        pieces.append(stream[last:point])
        last = point
    return pieces


class FrameReaderTests(SynchronousTestCase):
    """Both ends read what wsproto writes, and anything else, as wsproto did."""

    def feed(self, client: bool, max_message: int, pieces: list[bytes], same_timing: bool) -> None:
        ours = end_under_test(client, max_message)
        ref = Reference(client, max_message)
        mine_all: list[WsEvent] = []
        ref_all: list[WsEvent] = []
        mine_out = bytearray()
        ref_out = bytearray()
        for piece in pieces:
            mine = ours.receive(piece)
            theirs = ref.receive(piece)
            if same_timing:
                self.assertEqual(mine, theirs)
            mine_all += mine
            ref_all += theirs
            mine_out += ours.outgoing()
            ref_out += ref.outgoing()
        if client:
            mine_out = bytearray(unmasked(bytes(mine_out)))
            ref_out = bytearray(unmasked(bytes(ref_out)))
        self.assertEqual(bytes(mine_out), bytes(ref_out))
        if mine_all != ref_all:
            # The intended difference: we refuse an oversized frame on its
            # first octets; wsproto would once the excess is in (not yet).
            self.assertFalse(same_timing)
            last = mine_all[-1]
            self.assertIsInstance(last, Failed)
            assert isinstance(last, Failed)
            self.assertEqual(last.code, TOO_BIG)
            self.assertEqual(ref_all, mine_all[:-1])

    @settings(max_examples=300, deadline=None)
    @given(st.booleans(), st.lists(actions, max_size=6), st.data())
    def test_wsproto_streams(self, client: bool, steps: list[Any], data: st.DataObject) -> None:
        """What a wsproto peer writes, cut anywhere, gives the same events at the same time."""
        stream = wsproto_stream(not client, steps)
        self.feed(client, 1 << 20, cut(data.draw, stream), same_timing=True)

    @settings(max_examples=200, deadline=None)
    @given(
        st.booleans(),
        st.lists(actions, max_size=6),
        st.sampled_from([0, 100, 125, 126, 65535, 65536]),
        st.data(),
    )
    def test_limits(self, client: bool, steps: list[Any], limit: int, data: st.DataObject) -> None:
        """Messages up to max_message pass, larger ones fail with 1009, in any pieces."""
        stream = wsproto_stream(not client, steps)
        self.feed(client, limit, cut(data.draw, stream), same_timing=False)

    @settings(max_examples=500, deadline=None)
    @given(
        st.booleans(),
        st.lists(raw_frames(), max_size=5),
        st.binary(max_size=20),
        st.sampled_from([100, 1 << 16, 1 << 20]),
        st.data(),
    )
    def test_hostile(
        self,
        client: bool,
        frames: list[bytes],
        tail: bytes,
        limit: int,
        data: st.DataObject,
    ) -> None:
        """Broken frames (opcodes, RSV, masks, lengths, closes, garbage) fail as before."""
        stream = b"".join(frames) + tail
        self.feed(client, limit, cut(data.draw, stream), same_timing=False)

    @settings(max_examples=200, deadline=None)
    @given(st.booleans(), st.binary(max_size=300), st.data())
    def test_garbage(self, client: bool, stream: bytes, data: st.DataObject) -> None:
        """Random octets after the handshake fail as before."""
        self.feed(client, 1 << 16, cut(data.draw, stream), same_timing=False)

    def assertFails(self, ws: UmsgWebSocket, data: bytes, code: int, reason: str) -> None:
        self.assertEqual(ws.receive(data), [Failed(code, reason)])
        self.assertEqual(ws.receive(b"\x82\x80abcd"), [])

    def test_hostile_examples(self) -> None:
        """The close codes and reasons of the usual offences."""
        key = b"\x01\x02\x03\x04"
        srv = lambda: end_under_test(False, 1000)  # noqa: E731
        self.assertFails(
            srv(), b"\x82\x02hi", PROTOCOL_ERROR, "server received unexpected unmasked frame"
        )
        self.assertFails(
            end_under_test(True, 1000),
            b"\x82\x82" + key + b"hi",
            PROTOCOL_ERROR,
            "client received unexpected masked frame",
        )
        self.assertFails(srv(), b"\xc2\x80" + key, PROTOCOL_ERROR, "Reserved bit set unexpectedly")
        self.assertFails(srv(), b"\x83\x80" + key, PROTOCOL_ERROR, "Invalid opcode 0x3")
        self.assertFails(
            srv(), b"\x09\x80" + key, PROTOCOL_ERROR, "Invalid attempt to fragment control frame"
        )
        self.assertFails(
            srv(), b"\x89\xfe\x00\x7e", PROTOCOL_ERROR, "Control frame with payload len > 125"
        )
        self.assertFails(srv(), b"\x80\x80" + key + b"", PROTOCOL_ERROR, "unexpected CONTINUATION")
        self.assertFails(
            srv(),
            b"\x82\xff" + (1 << 63).to_bytes(8, "big"),
            PROTOCOL_ERROR,
            "8-byte payload length with non-zero MSB",
        )
        self.assertFails(
            srv(),
            b"\x82\xfe\x00\x05",
            PROTOCOL_ERROR,
            "Payload length used 2 bytes when 1 would have sufficed",
        )
        self.assertFails(
            srv(),
            b"\x81\x82" + key + mask(b"hi", key),
            UNSUPPORTED_DATA,
            "UMSG uses binary messages only",
        )
        self.assertEqual(
            srv().receive(b"\x81\x81" + key + mask(b"\xff", key))[0].code,  # type: ignore[union-attr]
            INVALID_DATA,
        )
        self.assertFails(
            srv(),
            b"\x88\x82" + key + mask(b"\x03\xed", key),
            PROTOCOL_ERROR,
            "remote CLOSE with local-only reason",
        )

    def test_oversize_not_buffered(self) -> None:
        """A frame whose header declares more than max_message fails on its header
        alone: no payload octet is waited for (a peer that sends only the header
        still gets its 1009)."""
        too_big = [Failed(TOO_BIG, "message larger than 1000 octets")]
        ws = end_under_test(False, 1000)
        header = b"\x82\xff" + (1 << 40).to_bytes(8, "big") + b"abcd"
        self.assertEqual(ws.receive(header), too_big)
        ws = end_under_test(True, 1000)
        self.assertEqual(ws.receive(b"\x82\x7e\x03\xe9"), too_big)
        ws = end_under_test(False, 1000)
        self.assertEqual(ws.receive(b"\x02\xfe\x01\xf4abcd" + b"x" * 500), [])
        self.assertEqual(ws.receive(b"\x80\xfe\x01\xf5abcd"), too_big)
        # Out of sequence or text, the frame's own error comes first, as before.
        ws = end_under_test(False, 1000)
        self.assertEqual(ws.receive(b"\x80\xfe\x03\xe9abcd"), [])
        self.assertEqual(ws.receive(b"x"), [Failed(PROTOCOL_ERROR, "unexpected CONTINUATION")])


class FrameWriterTests(SynchronousTestCase):
    """What both ends write, wsproto reads as the same messages."""

    @settings(max_examples=50, deadline=None)
    @given(st.sampled_from(BOUNDARIES), st.binary(min_size=1, max_size=8), st.data())
    def test_client_frames(self, size: int, fill: bytes, data: st.DataObject) -> None:
        """The client's masked frames are read by wsproto as the messages sent."""
        message = (fill * size)[:size]
        client, _ = opened_pair(max_message=1 << 17)
        client.send(message)
        client.send(message[::-1])
        stream = client.outgoing()
        server = Connection(ConnectionType.SERVER)
        got: list[bytes] = []
        for piece in cut(data.draw, stream):
            server.receive_data(piece)
            for event in server.events():
                assert isinstance(event, BytesMessage), event
                got.append(bytes(event.data))
        self.assertEqual(b"".join(got), message + message[::-1])

    def test_control_frames(self) -> None:
        """Pings and closes are wsproto's octets (the client's once unmasked)."""
        for client in (False, True):
            ours = end_under_test(client, 1000)
            ref = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
            ours.ping(b"ka")
            ours.close(1008, "policy \u00e9" * 30)
            theirs = bytes(ref.send(Ping(payload=b"ka")))
            theirs += bytes(ref.send(CloseConnection(code=1008, reason="policy \u00e9" * 30)))
            mine = ours.outgoing()
            if client:
                mine, theirs = unmasked(mine), unmasked(theirs)
            self.assertEqual(mine, theirs)
            ours = end_under_test(client, 1000)
            ref = Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER)
            ours.close(1006, "x")
            theirs = bytes(ref.send(CloseConnection(code=1006, reason="x")))
            mine = ours.outgoing()
            if client:
                mine, theirs = unmasked(mine), unmasked(theirs)
            self.assertEqual(mine, theirs)

    def test_fresh_masks(self) -> None:
        """Every client frame has its own random key."""
        keys = {client_frame(b"x")[2:6] for _ in range(200)}
        self.assertGreater(len(keys), 190)

    @given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
    def test_mask(self, data: bytes, key: bytes) -> None:
        """mask() is wsproto's XOR, both below and above the big-integer limit."""
        self.assertEqual(mask(data, key), bytes(XorMaskerSimple(key).process(bytearray(data))))

    @settings(max_examples=30, deadline=None)
    @given(st.sampled_from(BOUNDARIES), st.sampled_from([0x2, 0x9, 0xA, 0x8]))
    def test_server_frame_opcodes(self, size: int, opcode: int) -> None:
        """server_frame with any opcode is wsproto's frame."""
        if opcode != 0x2:
            size = min(size, 125)
        data = b"q" * size
        ref = Connection(ConnectionType.SERVER)
        if opcode == 0x2:
            expected = bytes(ref.send(BytesMessage(data=data)))
        elif opcode == 0x9:
            expected = bytes(ref.send(Ping(payload=data)))
        elif opcode == 0xA:
            expected = bytes(ref.send(Pong(payload=data)))
        else:
            data = b"\x03\xe8" + data[2:]
            expected = bytes(ref.send(CloseConnection(code=1000, reason=data[2:].decode())))
        self.assertEqual(server_frame(data, opcode), expected)
