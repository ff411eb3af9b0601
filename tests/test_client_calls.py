"""cryptify.client.calls and .messages: call and message logic, sans-IO.

Two CallAgents with real key material (one KMS account) exchange messages
through a pretend CRS written in the test: what one agent sends is turned
into what the CRS would send the other.
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from cryptify.client import calls
from cryptify.client.calls import CallAgent, CallError, CallEvent
from cryptify.client.messages import Messenger, Posted, Receipt, Received
from cryptify.client.session import Answered, Incoming
from cryptify.protocols.umsg import Message, message
from tests.fakes import attached, material

A, B = "tel:+461111", "tel:+462222"


class _Pair(SynchronousTestCase):
    def setUp(self) -> None:
        self.sa, self.out_a = attached(A)
        self.sb, self.out_b = attached(B)
        self.a = CallAgent(material(A), time.time, self.sa)
        self.b = CallAgent(material(B), time.time, self.sb)

    def invite(self) -> tuple[calls.Call, calls.Call, list[CallEvent]]:
        """A calls B up to B ringing: returns (A's call, B's call, A's events)."""
        call = self.a.place(B)
        sent = self.out_a[-1]
        self.assertEqual((sent.type, sent["to"]), ("invite", B))
        session = message(
            "session", id=sent["id"], session="s1", **{"relay-host": "127.0.0.1"},
            **{"relay-port": 146, "relay-tag": b"A" * 8},
        )  # fmt: skip
        events = self.a.handle(Answered(sent["id"], session))
        incoming = message(
            "invite", session="s1", to=B, mikey=sent["mikey"],
            **{"from": A, "relay-host": "127.0.0.1", "relay-port": 146, "relay-tag": b"B" * 8},
        )  # fmt: skip
        got = self.b.handle(Incoming(incoming))
        self.assertEqual([e.kind for e in got], [calls.INCOMING])
        return call, got[0].call, events


class CallTests(_Pair):
    """Placing, answering and ending calls."""

    def test_full_call(self) -> None:
        """invite -> session (media) -> ringing -> talk -> hangup; both derive one SRTP key."""
        call, theirs, events = self.invite()
        self.assertEqual([e.kind for e in events], [calls.MEDIA])
        self.assertEqual(
            (call.state, call.session, call.relay), ("calling", "s1", ("127.0.0.1", 146))
        )
        self.assertEqual(theirs.policy_key, call.policy_key)
        self.assertEqual(len(call.policy_key), 30)
        self.assertEqual(self.out_b[-1], message("ringing", session="s1"))
        ring = self.a.handle(Incoming(message("ringing", session="s1")))
        self.assertEqual([e.kind for e in ring], [calls.RING])
        answered = self.b.answer(theirs)
        self.assertEqual([e.kind for e in answered], [calls.MEDIA, calls.TALK])
        self.assertEqual(self.out_b[-1], message("talk", session="s1"))
        talk = self.a.handle(Incoming(message("talk", session="s1")))
        self.assertEqual((talk[0].kind, call.state), (calls.TALK, "talking"))
        ended = self.a.hangup(call)
        self.assertEqual((ended[0].kind, call.who), (calls.END, "caller"))
        self.assertEqual(self.out_a[-1], message("hangup", session="s1", code="normal"))
        theirs_end = self.b.handle(
            Incoming(message("hangup", session="s1", code="normal", who="caller"))
        )
        self.assertEqual(
            (theirs_end[0].call, theirs.code, theirs.who), (theirs, "normal", "caller")
        )
        self.assertEqual((self.a.calls, self.b.calls), ({}, {}))
        self.assertEqual(self.a.hangup(call), [])

    def test_not_found(self) -> None:
        """An error answer to the invite ends the call with its code."""
        call = self.a.place("tel:+469999")
        sent = self.out_a[-1]
        error = message("error", id=sent["id"], code="not-found", reason="no such user")
        events = self.a.handle(Answered(sent["id"], error))
        self.assertEqual((events[0].kind, call.code, call.who), (calls.END, "not-found", "crs"))

    def test_hangup_while_inviting(self) -> None:
        """Hanging up before the CRS names the session sends hangup once it does."""
        call = self.a.place(B)
        sent = self.out_a[-1]
        self.assertEqual(self.a.hangup(call), [])
        session = message(
            "session", id=sent["id"], session="s9",
            **{"relay-host": "h", "relay-port": 1, "relay-tag": b"A" * 8},
        )  # fmt: skip
        events = self.a.handle(Answered(sent["id"], session))
        self.assertEqual([e.kind for e in events], [calls.END])
        self.assertEqual(self.out_a[-1], message("hangup", session="s9", code="normal"))

    def test_extension_uri(self) -> None:
        """A URI with an extension is keyed for its base number and sent as given."""
        self.a.place(B + ";101")
        self.assertEqual(self.out_a[-1]["to"], B + ";101")

    def test_not_attached(self) -> None:
        """Placing or answering without an attached session: CallError."""
        self.sa.state = "closed"
        self.assertRaises(CallError, self.a.place, B)
        self.a.session = None
        self.assertRaises(CallError, self.a.place, B)

    def test_answer_wrong_state(self) -> None:
        """Only a ringing incoming call can be answered."""
        call, theirs, _ = self.invite()
        self.assertRaises(CallError, self.a.answer, call)
        self.b.answer(theirs)
        self.assertRaises(CallError, self.b.answer, theirs)

    def test_no_keys_for_period(self) -> None:
        """No key material for the current month: CallError."""
        self.a.now = lambda: time.time() + 400 * 86400
        self.assertRaises(CallError, self.a.place, B)

    def test_detached(self) -> None:
        """A lost connection ends every call, pending invites included."""
        call, _, _ = self.invite()
        other = self.a.place(B)
        events = self.a.detached()
        self.assertEqual({e.call for e in events}, {call, other})
        self.assertEqual(call.code, "detached")
        self.assertEqual(self.a.pending, {})

    def test_unknown_session_ignored(self) -> None:
        """Progress for a session we do not know, or out of order, changes nothing."""
        self.invite()
        self.assertEqual(self.a.handle(Incoming(message("talk", session="other"))), [])
        self.assertEqual(self.b.handle(Incoming(message("ringing", session="s1"))), [])
        self.assertEqual(self.a.handle(Answered(77, message("ok", id=77))), [])


class BadInviteTests(_Pair):
    """Invites whose MIKEY-SAKKE does not hold up are hung up with bad-keys."""

    def _incoming(self, mikey: bytes, sender: str = A) -> list[CallEvent]:
        return self.b.handle(
            Incoming(
                message(
                    "invite",
                    session="s2",
                    to=B,
                    mikey=mikey,
                    **{"from": sender, "relay-host": "h", "relay-port": 1, "relay-tag": b"B" * 8},
                )
            )
        )

    def assert_refused(self, events: list[CallEvent], text: str) -> None:
        self.assertEqual([e.kind for e in events], [calls.END])
        self.assertEqual(events[0].call.code, "bad-keys")
        self.assertEqual(self.out_b[-1].type, "hangup")
        self.assertEqual(self.out_b[-1]["code"], "bad-keys")
        self.assertIn(text, self.out_b[-1]["reason"])
        self.assertNotIn("s2", self.b.calls)

    def test_garbage(self) -> None:
        """Octets that are not MIKEY."""
        self.assert_refused(self._incoming(b"\x01\x02"), "MIKEY-SAKKE")

    def test_wrong_sender(self) -> None:
        """A good I_MESSAGE from A presented as coming from someone else."""
        self.a.place(B)
        self.assert_refused(self._incoming(self.out_a[-1]["mikey"], "tel:+463333"), "someone")

    def test_for_someone_else(self) -> None:
        """An I_MESSAGE A built for C, delivered to B."""
        self.a.place("tel:+463333")
        self.assert_refused(self._incoming(self.out_a[-1]["mikey"]), "someone else")

    def test_replay(self) -> None:
        """The same I_MESSAGE twice: the second is a replay."""
        self.invite()
        self.assert_refused(self._incoming(self.out_a[0]["mikey"]), "MIKEY-SAKKE")

    def test_other_account(self) -> None:
        """Signed with another account's KMS: the signature does not verify."""
        stranger = CallAgent(material(A, "other"), time.time, attached(A)[0])
        assert stranger.session is not None
        sent: list[Message] = []
        stranger.session.send = sent.append
        stranger.place(B)
        self.assert_refused(self._incoming(sent[-1]["mikey"]), "MIKEY-SAKKE")


class MessengerTests(SynchronousTestCase):
    """Posting and receiving messages."""

    def setUp(self) -> None:
        self.session, self.sent = attached(A)
        self.messenger = Messenger(self.session)

    def test_post_and_posted(self) -> None:
        """post sends content with a fresh key; posted and error answers are reported
        by request id, with the key to retry with."""
        first = self.messenger.post(B, b"hi")
        key1 = self.sent[-1]["key"]
        self.assertEqual(self.sent[-1], message("post", id=first, to=B, content=b"hi", key=key1))
        second = self.messenger.post(B, b"again")
        key2 = self.sent[-1]["key"]
        events = self.messenger.handle(Answered(first, message("posted", id=first, message="m1")))
        self.assertEqual(events, [Posted(first, "m1", key=key1)])
        error = message("error", id=second, code="not-found")
        self.assertEqual(
            self.messenger.handle(Answered(second, error)),
            [Posted(second, None, "not-found", key=key2)],
        )
        self.assertEqual(self.messenger.handle(Answered(first, error)), [])

    def test_connection_lost_reports_unanswered_posts(self) -> None:
        """Posts unanswered when the connection ends are reported retryable with
        their keys, and an answer with the same request id later (a new
        connection counts ids afresh) is not taken for one of them."""
        first = self.messenger.post(B, b"one")
        key = self.sent[-1]["key"]
        lost = self.messenger.connection_lost()
        self.assertEqual(lost, [Posted(first, None, "unavailable", key=key)])
        self.assertTrue(all(isinstance(p, Posted) and p.retryable for p in lost))
        self.assertEqual(self.messenger.handle(Answered(first, message("ok", id=first))), [])
        self.assertEqual(self.messenger.connection_lost(), [])

    def test_keys_unique_per_message_kept_on_retry(self) -> None:
        """Each new message gets its own 16-octet random key; a retry sends the same
        key again; ``unavailable`` is retryable and carries the CRS's hint."""
        for _ in range(50):
            self.messenger.post(B, b"x")
        keys = [m["key"] for m in self.sent]
        self.assertEqual(len(set(keys)), 50)
        self.assertEqual({len(k) for k in keys}, {16})
        retry = self.messenger.post(B, b"x", keys[0])
        self.assertEqual(self.sent[-1]["key"], keys[0])
        busy = message("error", id=retry, code="unavailable", **{"retry-after": 2000})
        [answer] = self.messenger.handle(Answered(retry, busy))
        self.assertEqual((answer.retryable, answer.retry_after, answer.key), (True, 2000, keys[0]))
        self.assertFalse(Posted(1, None, "key-reused").retryable)

    def test_receive_once_confirm_always(self) -> None:
        """Every message is confirmed with delivered; a repeated id is reported once."""
        incoming = message("message", message="m7", to=A, time=5, content=b"yo", **{"from": B})
        first = self.messenger.handle(Incoming(incoming))
        self.assertEqual(first, [Received("m7", B, A, 5, b"yo", None)])
        self.assertEqual(self.messenger.handle(Incoming(incoming)), [])
        self.assertEqual(self.sent, [message("delivered", message="m7")] * 2)

    def test_receipt_and_fetch(self) -> None:
        """delivered from the CRS is a receipt; fetch is a request."""
        self.assertEqual(
            self.messenger.handle(Incoming(message("delivered", message="m1"))), [Receipt("m1")]
        )
        self.assertEqual(self.messenger.handle(Incoming(message("talk", session="x"))), [])
        request = self.messenger.fetch()
        self.assertEqual(self.sent[-1], message("fetch", id=request))

    def test_not_attached(self) -> None:
        """Without an attached session: post raises, fetch does nothing."""
        self.session.state = "closed"
        self.assertRaises(RuntimeError, self.messenger.post, B, b"x")
        self.assertIsNone(self.messenger.fetch())

    def test_seen_is_bounded(self) -> None:
        """The de-duplication memory forgets the oldest ids past its limit."""
        from cryptify.client import messages

        self.patch(messages, "SEEN_LIMIT", 2)
        for n in range(3):
            msg = message("message", message=f"m{n}", to=A, time=1, ack="x", **{"from": B})
            self.assertEqual(len(self.messenger.handle(Incoming(msg))), 1)
        self.assertEqual(list(self.messenger.seen), ["m1", "m2"])
