"""The CRS's per-message replies from templates (cryptify.protocols.umsg_replies).

Each must carry the same fields and exactly the octets that the schema's
encoder writes for them, and refuse what the encoder refuses.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols import umsg_replies as replies
from cryptify.protocols.umsg import (
    MAX_ID,
    UmsgError,
    decode_from_server,
    encode_from_client,
    encode_from_server,
    message,
)

IDS = st.from_regex(r"[0-9A-Za-z_.:-]{1,64}", fullmatch=True)
FROM = st.from_regex(r"tel:\+[0-9]{1,15}", fullmatch=True)
TO = st.from_regex(r"tel:\+[0-9]{1,15}(;[0-9A-Za-z*#]{1,16})?", fullmatch=True)


class RepliesTests(SynchronousTestCase):
    def same(self, made: object, expected: object) -> None:
        encoded = encode_from_server(made)  # type: ignore[arg-type]
        self.assertEqual(encoded, encode_from_server(expected))  # type: ignore[arg-type]
        self.assertEqual(decode_from_server(encoded), expected)
        self.assertEqual(made, expected)
        self.assertEqual(expected, made)

    @given(request_id=st.integers(0, MAX_ID), message_id=IDS)
    def test_posted(self, request_id: int, message_id: str) -> None:
        """``posted`` is the encoder's octets for its id and message ID."""
        self.same(
            replies.posted(request_id, message_id),
            message("posted", id=request_id, message=message_id),
        )

    @given(IDS)
    def test_delivered(self, message_id: str) -> None:
        """``delivered`` is the encoder's octets for its message ID."""
        self.same(replies.delivered(message_id), message("delivered", message=message_id))

    @given(
        message_id=IDS,
        sender=FROM,
        recipient=TO,
        time_ms=st.integers(0, 2**53),
        content=st.binary(max_size=70000),
        system=st.booleans(),
    )
    def test_content_message(
        self,
        message_id: str,
        sender: str,
        recipient: str,
        time_ms: int,
        content: bytes,
        system: bool,
    ) -> None:
        """A content (or system) ``message`` is the encoder's octets, fields in
        the same order, content of any length up to the limit."""
        content = content[: 48 * 1024]
        fields = {"message": message_id, "from": sender, "to": recipient, "time": time_ms}
        self.same(
            replies.message(message_id, sender, recipient, time_ms, content=content, system=system),
            message("message", **fields, content=content, system=True if system else None),
        )

    @given(message_id=IDS, ack=IDS, sender=FROM, recipient=TO)
    def test_ack_message(self, message_id: str, ack: str, sender: str, recipient: str) -> None:
        """An ack ``message`` is the encoder's octets."""
        fields = {"message": message_id, "from": sender, "to": recipient, "time": 5, "ack": ack}
        self.same(
            replies.message(message_id, sender, recipient, 5, ack=ack), message("message", **fields)
        )

    def test_refuses_what_the_encoder_refuses(self) -> None:
        """Values outside the schema raise UmsgError, as the encoder does."""
        bad = [
            lambda: replies.posted(-1, "m"),
            lambda: replies.posted(MAX_ID + 1, "m"),
            lambda: replies.posted(1, ""),
            lambda: replies.posted(1, "a b"),
            lambda: replies.delivered("x" * 65),
            lambda: replies.message("m", "sip:a", "tel:+1", 1, content=b""),
            lambda: replies.message("m", "tel:+1", "tel:+1;" + "1" * 17, 1, content=b""),
            lambda: replies.message("m", "tel:+1", "tel:+2", -1, content=b""),
            lambda: replies.message("m", "tel:+1", "tel:+2", 1, content=b"x" * (48 * 1024 + 1)),
            lambda: replies.message("m", "tel:+1", "tel:+2", 1, ack="a\ufffd"),
            lambda: replies.message("m", "tel:+1", "tel:+2", 1),
            lambda: replies.message("m", "tel:+1", "tel:+2", 1, content=b"", ack="a"),
        ]
        for make in bad:
            self.assertRaises(UmsgError, make)

    def test_only_for_its_direction(self) -> None:
        """Encoded for the CRS's direction, a reply is checked anew if a client
        were to send it (it is not a client message)."""
        self.assertRaises(UmsgError, encode_from_client, replies.posted(1, "m1"))
