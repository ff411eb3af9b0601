"""The load generator's pre-encoded frames (cryptify.client.loadgen).

The frames bench/messages.py writes must be what the reference client
would have sent, as the CRS reads them: its own WebSocket reader and UMSG
decoder take them, field for field; and the reader of the CRS's frames
gives back every payload however the octets are cut.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.client.loadgen import FrameError, PostTemplate, ServerFrames, delivered_frame
from cryptify.protocols.umsg import MAX_ID, decode_from_client, encode_from_server, message
from cryptify.protocols.umsg_ws import Received, server_frame
from tests.fakes import opened_pair

URIS = st.from_regex(r"tel:\+[0-9]{1,15}(;[0-9]{1,4})?", fullmatch=True)


def _crs_reads(frame: bytes) -> object:
    _, server = opened_pair()
    events = server.receive(frame)
    assert len(events) == 1 and isinstance(events[0], Received), events
    return decode_from_client(events[0].data)


class PostTemplateTests(SynchronousTestCase):
    @given(
        to=URIS,
        request_id=st.integers(0, MAX_ID),
        content=st.binary(min_size=0, max_size=300),
        account=st.none() | st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True),
    )
    def test_crs_decodes_the_post(
        self, to: str, request_id: int, content: bytes, account: str | None
    ) -> None:
        """A templated post is a valid UMSG post with exactly the id, recipient,
        content and account put in, whatever their sizes."""
        template = PostTemplate(to, len(content), account)
        msg = _crs_reads(template.frame(request_id, content))
        expected = {"id": request_id, "to": to, "content": content}
        if account is not None:
            expected["to-account"] = account
        self.assertEqual(msg, message("post", **expected))

    def test_same_template_many_ids(self) -> None:
        """One template serves every request id of a connection (the frame's
        length follows the id's encoding)."""
        template = PostTemplate("tel:+4611", 8)
        for request_id in (1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1):
            msg = _crs_reads(template.frame(request_id, b"12345678"))
            self.assertEqual(msg.id, request_id)  # type: ignore[attr-defined]


class DeliveredTests(SynchronousTestCase):
    @given(st.from_regex(r"[0-9A-Za-z_.:-]{1,64}", fullmatch=True))
    def test_crs_decodes_delivered(self, message_id: str) -> None:
        """``delivered`` frames carry the message ID as the CRS reads it."""
        self.assertEqual(
            _crs_reads(delivered_frame(message_id)), message("delivered", message=message_id)
        )


class ServerFramesTests(SynchronousTestCase):
    @given(
        payloads=st.lists(st.binary(min_size=0, max_size=70000), min_size=1, max_size=4),
        cuts=st.lists(st.integers(0, 200000), max_size=6),
    )
    def test_payloads_whatever_the_cuts(self, payloads: list[bytes], cuts: list[int]) -> None:
        """Every payload comes out once, in order, wherever the stream is cut
        (frame lengths on 1, 3 and 9 octets)."""
        stream = b"".join(server_frame(p) for p in payloads)
        reader, got, start = ServerFrames(), [], 0
        for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
            got += reader.feed(stream[start:cut])
            start = cut
        self.assertEqual(got, payloads)

    def test_pings_are_skipped(self) -> None:
        """A keep-alive ping between messages is dropped."""
        posted = encode_from_server(message("posted", id=1, message="m1"))
        stream = server_frame(b"ka", 0x9) + server_frame(posted)
        self.assertEqual(ServerFrames().feed(stream), [posted])

    def test_close_raises(self) -> None:
        """A close (or a masked frame) from the CRS is an error for the generator."""
        self.assertRaises(FrameError, ServerFrames().feed, server_frame(b"\x03\xe8", 0x8))
        self.assertRaises(FrameError, ServerFrames().feed, b"\x82\x81abcdx")
