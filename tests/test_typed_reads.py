"""Typed reads of UMSG fields (Message.text & co.) and of AMP answers (amp_calls)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from cryptify.protocols import amp_calls
from cryptify.protocols.umsg import Message, UmsgError, decode_from_server, encode_from_server

#: Every kind of value the UMSG CBOR subset carries.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
)


class MessageReadTests(SynchronousTestCase):
    def test_decoded_invite(self) -> None:
        """A decoded invite's fields read with their schema's types."""
        sent = Message(
            "invite",
            {
                "from": "tel:+4930123",
                "to": "tel:+4930456",
                "mikey": b"\x01\x02",
                "relay-host": "192.0.2.1",
                "relay-port": 4000,
                "relay-tag": b"tag",
                "session": "s1",
            },
        )
        msg = decode_from_server(encode_from_server(sent))
        self.assertEqual(msg.text("from"), "tel:+4930123")
        self.assertEqual(msg.number("relay-port"), 4000)
        self.assertEqual(msg.octets("relay-tag"), b"tag")
        self.assertIsNone(msg.optional_text("code"))
        self.assertIsNone(msg.optional_octets("ticket"))
        self.assertEqual(msg.optional_text("session"), "s1")

    def test_numbers(self) -> None:
        msg = Message("attach", {"id": 3, "versions": [1, 2]})
        self.assertEqual(msg.numbers("versions"), [1, 2])
        self.assertEqual(msg.optional_number("id"), 3)
        with self.assertRaises(UmsgError):
            Message("attach", {"versions": [1, True]}).numbers("versions")

    def test_wrong_type_names_field_and_request(self) -> None:
        """A field of another type is a ``malformed`` error naming the field and the id."""
        msg = Message("session", {"id": 7, "relay-port": "4000"})
        with self.assertRaises(UmsgError) as caught:
            msg.number("relay-port")
        self.assertEqual(caught.exception.code, "malformed")
        self.assertEqual(caught.exception.id, 7)
        self.assertIn("relay-port", caught.exception.detail)
        with self.assertRaises(UmsgError):
            msg.text("absent")

    @given(VALUES)
    def test_each_reader_returns_its_type_or_refuses(self, value: object) -> None:
        """Whatever the field holds, a reader answers its own type or raises UmsgError."""
        msg = Message("x", {"f": value})
        readers = (
            (msg.text, str),
            (msg.number, int),
            (msg.octets, bytes),
            (msg.numbers, list),
            (msg.optional_text, (str, type(None))),
            (msg.optional_number, (int, type(None))),
            (msg.optional_octets, (bytes, type(None))),
        )
        for read, kind in readers:
            try:
                got = read("f")
            except UmsgError:
                continue
            self.assertIsInstance(got, kind)
            self.assertNotIsInstance(got, bool)
            if got is not None:
                self.assertEqual(got, value)


class Hello(amp.Command):
    arguments = [(b"name", amp.Unicode())]
    response = [(b"greeting", amp.Unicode()), (b"count", amp.Integer()), (b"at", amp.Float())]


class Greeter(amp.AMP):
    @Hello.responder
    def hello(self, name: str) -> dict[str, object]:
        return {"greeting": f"hello {name}", "count": 2, "at": 1.5}


class AmpCallTests(SynchronousTestCase):
    def test_call_and_read(self) -> None:
        """call_remote sends the command; the readers give the answer's values."""
        client, _, pump = connectedServerAndClient(Greeter, amp.AMP)
        answers: list[amp_calls.AmpAnswer] = []
        d: Deferred[amp_calls.AmpAnswer] = amp_calls.call_remote(client, Hello, name="you")
        d.addCallback(answers.append)
        pump.flush()
        (answer,) = answers
        self.assertEqual(amp_calls.text(answer, "greeting"), "hello you")
        self.assertEqual(amp_calls.integer(answer, "count"), 2)
        self.assertEqual(amp_calls.number(answer, "at"), 1.5)
        self.assertEqual(amp_calls.number(answer, "count"), 2)
        self.assertIsNone(amp_calls.optional_text(answer, "absent"))
        self.assertIsNone(amp_calls.optional_number(answer, "absent"))

    def test_wrong_or_missing(self) -> None:
        answer: amp_calls.AmpAnswer = {"greeting": 3, "flag": True}
        for read, name in (
            (amp_calls.text, "greeting"),
            (amp_calls.integer, "flag"),
            (amp_calls.number, "flag"),
            (amp_calls.text, "absent"),
        ):
            with self.assertRaises(amp_calls.AnswerError):
                read(answer, name)
