"""
Tests for L{cryptify.protocols.sip.transaction} and
L{cryptify.protocols.sip.dialog}, with time driven by a L{Clock}.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.lifecycle import IllegalTransition, Lifecycle
from cryptify.protocols.sip.dialog import Dialog, dialog_id_of
from cryptify.protocols.sip.message import Request, Response, parse_datagram, response_to
from cryptify.protocols.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    T1,
    T2,
    T4,
    TransactionLayer,
    TxState,
    server_key,
)
from tests.fakes import FakeChannel, RecordingUser


def request(
    method: str = "INVITE", branch: str = "z9hG4bKone", cseq_method: str | None = None
) -> Request:
    data = (
        f"{method} sip:cig@192.0.2.9 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
        "From: <sip:101@pbx.com>;tag=a1\r\n"
        "To: <sip:9467@secure.com>\r\n"
        "Call-ID: call-1\r\n"
        f"CSeq: 1 {cseq_method or method}\r\n"
        "Contact: <sip:101@192.0.2.1:5060>\r\n"
        "Max-Forwards: 70\r\n\r\n"
    ).encode()
    message = parse_datagram(data)
    assert isinstance(message, Request)
    return message


class LayerCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.user = RecordingUser()
        self.layer = TransactionLayer(self.clock, self.user)
        self.channel = FakeChannel()
        self.addCleanup(self.assert_no_timers)

    def assert_no_timers(self) -> None:
        self.layer.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ServerTransactionTests(LayerCase):
    """
    Server transactions: retransmissions absorbed and answered, timers.
    """

    def test_non_invite(self) -> None:
        """
        A non-INVITE request reaches the user once; a retransmission before
        the answer is absorbed, after it gets the same answer; timer J
        (64*T1 on UDP) ends the transaction.
        """
        options = request("OPTIONS")
        self.layer.receive(options, self.channel)
        self.layer.receive(options, self.channel)
        self.assertEqual(len(self.user.requests), 1)
        self.assertEqual(self.channel.sent, [])
        self.user.requests[0].respond(response_to(options.headers, 200, to_tag="x"))
        self.layer.receive(options, self.channel)
        self.assertEqual(len(self.channel.sent), 2)
        self.assertEqual(self.channel.sent[0], self.channel.sent[1])
        self.clock.advance(64 * T1)
        self.assertEqual(self.layer.servers, {})

    def test_invite_failure_resent_until_ack(self) -> None:
        """
        A 4xx to an INVITE is resent with timer G doubling to T2 until the
        ACK comes; the ACK is absorbed and timer I (T4) ends the
        transaction.
        """
        invite = request()
        self.layer.receive(invite, self.channel)
        tx = self.user.requests[0]
        tx.respond(response_to(invite.headers, 486, to_tag="b"))
        for _ in range(5):
            self.clock.advance(T2)
        self.assertGreater(len(self.channel.sent), 4)
        ack = Request("ACK", invite.uri, invite.headers.set("CSeq", "1 ACK"))
        self.layer.receive(ack, self.channel)
        self.assertEqual((tx.state, self.user.acks), ("confirmed", []))
        sent = len(self.channel.sent)
        self.clock.advance(T4)
        self.assertEqual((tx.state, len(self.channel.sent)), ("terminated", sent))

    def test_invite_failure_timer_h(self) -> None:
        """
        Without an ACK, timer H (64*T1) gives up.
        """
        invite = request()
        self.layer.receive(invite, self.channel)
        self.user.requests[0].respond(response_to(invite.headers, 404, to_tag="b"))
        self.clock.advance(64 * T1)
        self.assertEqual(self.layer.servers, {})

    def test_invite_2xx_until_ack(self) -> None:
        """
        A 2xx is resent on UDP until the ACK (with its own branch) arrives;
        the ACK goes to the user.
        """
        invite = request()
        self.layer.receive(invite, self.channel)
        tx = self.user.requests[0]
        tx.respond(response_to(invite.headers, 200, to_tag="b"))
        self.clock.advance(T1)
        self.clock.advance(2 * T1)
        self.assertEqual(len(self.channel.sent), 3)
        ack = Request(
            "ACK",
            invite.uri,
            invite.headers.set("CSeq", "1 ACK").set(
                "Via", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKack"
            ),
        )
        self.layer.receive(ack, self.channel)
        self.assertEqual(len(self.user.acks), 1)
        self.clock.advance(10)
        self.assertEqual(len(self.channel.sent), 3)
        self.clock.advance(64 * T1)
        self.assertEqual(self.user.unacknowledged, [])

    def test_invite_2xx_no_ack(self) -> None:
        """
        A 2xx that is never acknowledged is reported after timer L.
        """
        invite = request()
        self.layer.receive(invite, self.channel)
        self.user.requests[0].respond(response_to(invite.headers, 200, to_tag="b"))
        self.clock.pump([T2] * 20)
        self.assertEqual(len(self.user.unacknowledged), 1)

    def test_repeats_the_latest_response(self) -> None:
        """
        A retransmitted INVITE gets the latest response as it was sent:
        the 100 (no To tag), then the 180 with its tag, then the final;
        a later final is refused, and timer G and the retransmissions
        repeat the first final, byte for byte.
        """
        invite = request()
        self.layer.receive(invite, self.channel)
        tx = self.user.requests[0]
        answers = [
            response_to(invite.headers, 100),
            response_to(invite.headers, 180, to_tag="b"),
            response_to(invite.headers, 486, to_tag="b"),
        ]
        for answer in answers:
            tx.respond(answer)
            self.layer.receive(invite, self.channel)
            self.assertEqual(self.channel.sent[-2:], [answer.to_bytes()] * 2)
        tx.respond(response_to(invite.headers, 500, to_tag="c"))
        self.layer.receive(invite, self.channel)
        self.clock.advance(T1)
        final = answers[-1].to_bytes()
        self.assertEqual(self.channel.sent[6:], [final, final])
        self.assertEqual(
            [(m.status, m.to.tag) for m in self.channel.messages()],
            [(100, None)] * 2 + [(180, "b")] * 2 + [(486, "b")] * 4,
        )

    def test_reliable_no_resend(self) -> None:
        """
        On TCP a final response is sent once and timer J is zero.
        """
        channel = FakeChannel(reliable=True)
        options = request("OPTIONS")
        self.layer.receive(options, channel)
        self.user.requests[0].respond(response_to(options.headers, 200))
        self.clock.advance(0)
        self.assertEqual((len(channel.sent), self.layer.servers), (1, {}))

    def test_cancel_finds_invite(self) -> None:
        """
        A CANCEL is its own transaction and finds its INVITE's.
        """
        invite = request()
        self.layer.receive(invite, self.channel)
        cancel = request("CANCEL")
        self.layer.receive(cancel, self.channel)
        self.assertEqual(len(self.user.requests), 2)
        self.assertIs(self.layer.invite_for(cancel), self.user.requests[0])

    def test_bad_request_to_user(self) -> None:
        """
        A request failing the checks (CSeq method mismatch) goes to the
        user as an error, with no transaction.
        """
        self.layer.receive(request("OPTIONS", cseq_method="INVITE"), self.channel)
        self.assertEqual((len(self.user.errors), self.layer.servers), (1, {}))

    def test_rfc2543_key(self) -> None:
        """
        Without the magic cookie, matching falls back to Call-ID, CSeq,
        From tag and Via.
        """
        self.assertEqual(server_key(request(branch="old1"))[0], "2543")


def response(invite: Request, status: int, tag: str = "r1") -> Response:
    return response_to(
        invite.headers, status, to_tag=tag, extra=(("Contact", "<sip:pbx@192.0.2.1>"),)
    )


class ClientTransactionTests(LayerCase):
    """
    Client transactions: retransmission, timeouts, ACK of failures.
    """

    def start(self, method: str = "INVITE") -> tuple[Request, list[Response], list[bool]]:
        outgoing = request(method, branch="z9hG4bKout")
        responses: list[Response] = []
        timeouts: list[bool] = []
        self.layer.request(outgoing, self.channel, responses.append, lambda: timeouts.append(True))
        return outgoing, responses, timeouts

    def test_invite_timer_a_b(self) -> None:
        """
        An unanswered INVITE is resent at T1, 2*T1, 4*T1, ... and times out
        at 64*T1 (timer B).
        """
        _, _, timeouts = self.start()
        self.clock.pump([T1 / 2] * 130)
        self.assertEqual(len(self.channel.sent), 7)
        self.assertEqual(timeouts, [True])

    def test_invite_failure_acked(self) -> None:
        """
        A 486 is passed up once and acknowledged, the ACK repeated for a
        repeated 486; timer D ends the transaction.
        """
        outgoing, responses, _ = self.start()
        self.layer.receive(response(outgoing, 180), self.channel)
        self.layer.receive(response(outgoing, 486), self.channel)
        self.layer.receive(response(outgoing, 486), self.channel)
        self.assertEqual([r.status for r in responses], [180, 486])
        acks = [m for m in self.channel.messages() if isinstance(m, Request) and m.method == "ACK"]
        self.assertEqual(len(acks), 2)
        self.assertEqual(acks[0].to.tag, "r1")
        self.assertEqual(acks[0].vias[0].branch, "z9hG4bKout")
        self.clock.advance(32)
        self.assertEqual(self.layer.clients, {})

    def test_other_failure_acked_with_its_to(self) -> None:
        """
        A repeat of the failure gets the same ACK again, byte for byte; a
        failure from another UAS (another To tag, as after a fork) gets an
        ACK with its own To (RFC 3261 17.1.1.3), not the one kept; neither
        reaches the user.
        """
        outgoing, responses, _ = self.start()
        self.layer.receive(response(outgoing, 486, tag="r1"), self.channel)
        self.layer.receive(response(outgoing, 486, tag="r1"), self.channel)
        self.layer.receive(response(outgoing, 603, tag="r2"), self.channel)
        self.layer.receive(response(outgoing, 486, tag="r1"), self.channel)
        self.assertEqual([r.status for r in responses], [486])
        sent = self.channel.sent[1:]
        self.assertEqual(sent[0], sent[1])
        self.assertEqual(sent[0], sent[3])
        acks = [m for m in self.channel.messages()[1:] if isinstance(m, Request)]
        self.assertEqual(
            [(a.method, a.to.tag, a.cseq.number) for a in acks],
            [("ACK", "r1", 1), ("ACK", "r1", 1), ("ACK", "r2", 1), ("ACK", "r1", 1)],
        )
        self.clock.advance(32)
        self.assertEqual(self.layer.clients, {})

    def test_invite_2xx_retransmissions_to_user(self) -> None:
        """
        After a 2xx, repeated 2xx still reach the user (which ACKs them).
        """
        outgoing, responses, _ = self.start()
        self.layer.receive(response(outgoing, 200), self.channel)
        self.layer.receive(response(outgoing, 200), self.channel)
        self.assertEqual([r.status for r in responses], [200, 200])
        self.clock.advance(64 * T1)
        self.assertEqual(self.layer.clients, {})

    def test_non_invite_timer_e_f(self) -> None:
        """
        A BYE is resent with timer E capped at T2 and times out at timer F.
        """
        _, _, timeouts = self.start("BYE")
        self.clock.pump([T1 / 2] * 130)
        # 0, .5, 1.5, 3.5, 7.5, 11.5, ... 31.5: 1 + 10 sends
        self.assertEqual(len(self.channel.sent), 11)
        self.assertEqual(timeouts, [True])

    def test_non_invite_answered(self) -> None:
        """
        A 200 to a BYE is passed up; timer K ends the transaction.
        """
        outgoing, responses, timeouts = self.start("BYE")
        self.layer.receive(response(outgoing, 200), self.channel)
        self.clock.advance(T4)
        self.assertEqual(([r.status for r in responses], timeouts), ([200], []))
        self.assertEqual(self.layer.clients, {})


class TransactionStateTests(LayerCase):
    """
    The transaction states are L{TxState} members that move only along the
    RFC 3261 17.1/17.2 tables; anything else is refused.
    """

    TABLES = {
        "INVITE server": INVITE_SERVER,
        "non-INVITE server": NON_INVITE_SERVER,
        "INVITE client": INVITE_CLIENT,
        "non-INVITE client": NON_INVITE_CLIENT,
    }

    def test_every_state_can_end(self) -> None:
        """
        Every state of every kind can go to terminated (shutdown, transport
        error), and terminated goes nowhere.
        """
        for kind, table in self.TABLES.items():
            for state, targets in table.items():
                if state is TxState.TERMINATED:
                    self.assertEqual(targets, frozenset(), kind)
                else:
                    self.assertIn(TxState.TERMINATED, targets, (kind, state))

    def test_illegal_moves_refused(self) -> None:
        """
        A move that is not in a table raises L{IllegalTransition} naming
        the kind and both states: no way back from a final response, no
        calling state on a server, no confirmed state on a client.
        """
        refused = [
            ("INVITE server", TxState.COMPLETED, TxState.PROCEEDING),
            ("INVITE server", TxState.ACCEPTED, TxState.COMPLETED),
            ("INVITE server", TxState.PROCEEDING, TxState.CONFIRMED),
            ("INVITE server", TxState.TERMINATED, TxState.PROCEEDING),
            ("non-INVITE server", TxState.TRYING, TxState.ACCEPTED),
            ("non-INVITE server", TxState.COMPLETED, TxState.CONFIRMED),
            ("INVITE client", TxState.CALLING, TxState.CONFIRMED),
            ("INVITE client", TxState.COMPLETED, TxState.ACCEPTED),
            ("non-INVITE client", TxState.COMPLETED, TxState.PROCEEDING),
            ("non-INVITE client", TxState.TRYING, TxState.CALLING),
        ]
        for kind, old, new in refused:
            machine = Lifecycle(f"{kind} transaction", self.TABLES[kind], old)
            with self.assertRaises(IllegalTransition) as caught:
                machine.move(new)
            self.assertEqual(
                str(caught.exception),
                f"{kind} transaction: {old.name} -> {new.name} is not allowed",
            )
            self.assertIs(machine.state, old)

    def test_transaction_refuses_illegal_move(self) -> None:
        """
        A transaction asked to leave terminated raises and stays where it
        was; its state is typed, not a bare string.
        """
        invite = request()
        self.layer.receive(invite, self.channel)
        tx = self.user.requests[0]
        self.assertIs(tx.state, TxState.PROCEEDING)
        tx.respond(response_to(invite.headers, 486, to_tag="b"))
        self.assertIs(tx.state, TxState.COMPLETED)
        self.assertRaises(IllegalTransition, tx._move, TxState.ACCEPTED)
        self.assertIs(tx.state, TxState.COMPLETED)
        self.clock.advance(64 * T1)
        self.assertIs(tx.state, TxState.TERMINATED)
        self.assertRaises(IllegalTransition, tx._move, TxState.PROCEEDING)
        self.assertIs(tx.state, TxState.TERMINATED)

    @given(
        method=st.sampled_from(["INVITE", "OPTIONS"]),
        reliable=st.booleans(),
        events=st.lists(
            st.one_of(
                st.tuples(st.just("respond"), st.sampled_from([100, 180, 200, 302, 486, 503])),
                st.tuples(st.just("ack"), st.just(0)),
                st.tuples(st.just("again"), st.just(0)),
                st.tuples(st.just("advance"), st.sampled_from([0, 1, 4, 16, 40])),
            ),
            max_size=12,
        ),
    )
    def test_server_moves_stay_in_table(
        self, method: str, reliable: bool, events: list[tuple[str, int]]
    ) -> None:
        """
        Whatever order responses, ACKs, retransmissions and timers come in,
        a server transaction only takes moves its table allows.
        """
        clock = Clock()
        user = RecordingUser()
        layer = TransactionLayer(clock, user)
        channel = FakeChannel(reliable=reliable)
        incoming = request(method)
        layer.receive(incoming, channel)
        tx = user.requests[0]
        seen = [tx.state]
        for event, value in events:
            if event == "respond":
                tx.respond(response_to(incoming.headers, value, to_tag="b"))
            elif event == "ack":
                ack = Request("ACK", incoming.uri, incoming.headers.set("CSeq", "1 ACK"))
                layer.receive(ack, channel)
            elif event == "again":
                layer.receive(incoming, channel)
            else:
                clock.advance(value)
            if tx.state is not seen[-1]:
                seen.append(tx.state)
        layer.stop()
        self.assertIs(tx.state, TxState.TERMINATED)
        seen.append(tx.state)
        for old, new in itertools.pairwise(seen):
            if old is new:
                continue
            self.assertIn(new, tx.transitions[old])
        self.assertEqual(clock.getDelayedCalls(), [])

    @given(
        method=st.sampled_from(["INVITE", "BYE"]),
        reliable=st.booleans(),
        events=st.lists(
            st.one_of(
                st.tuples(st.just("response"), st.sampled_from([100, 180, 200, 302, 486])),
                st.tuples(st.just("advance"), st.sampled_from([0, 1, 4, 16, 40])),
            ),
            max_size=12,
        ),
    )
    def test_client_moves_stay_in_table(
        self, method: str, reliable: bool, events: list[tuple[str, int]]
    ) -> None:
        """
        Whatever order responses and timers come in, a client transaction
        only takes moves its table allows.
        """
        clock = Clock()
        layer = TransactionLayer(clock, RecordingUser())
        channel = FakeChannel(reliable=reliable)
        outgoing = request(method, branch="z9hG4bKout")
        tx = layer.request(outgoing, channel, lambda r: None, lambda: None)
        seen = [tx.state]
        for event, value in events:
            if event == "response":
                layer.receive(response(outgoing, value), channel)
            else:
                clock.advance(value)
            if tx.state is not seen[-1]:
                seen.append(tx.state)
        layer.stop()
        self.assertIs(tx.state, TxState.TERMINATED)
        seen.append(tx.state)
        for old, new in itertools.pairwise(seen):
            if old is new:
                continue
            self.assertIn(new, tx.transitions[old])
        self.assertEqual(clock.getDelayedCalls(), [])


class DialogTests(SynchronousTestCase):
    """
    Dialog state and in-dialog requests.
    """

    def test_uas_dialog_and_bye(self) -> None:
        """
        A UAS dialog targets the caller's Contact, keeps Record-Route, and
        its BYE carries the tags the other way round.
        """
        invite = request()
        invite = Request(
            invite.method, invite.uri, invite.headers.add("Record-Route", "<sip:p1;lr>")
        )
        dialog = Dialog.as_uas(invite, "loc")
        bye = dialog.request("BYE", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb")
        self.assertEqual(bye.uri, "sip:101@192.0.2.1:5060")
        self.assertEqual((bye.from_.tag, bye.to.tag), ("loc", "a1"))
        self.assertEqual(bye.headers.get("Route"), "<sip:p1;lr>")
        self.assertEqual(bye.cseq.method, "BYE")

    def test_ids_and_cseq(self) -> None:
        """
        An in-dialog request's id matches the dialog's; CSeq must grow.
        """
        invite = request()
        dialog = Dialog.as_uas(invite, "loc")
        bye = request("BYE")
        bye = Request(
            "BYE",
            bye.uri,
            bye.headers.set("To", "<sip:9467@secure.com>;tag=loc").set("CSeq", "2 BYE"),
        )
        self.assertEqual(dialog_id_of(bye), dialog.id)
        self.assertTrue(dialog.accept_remote_cseq(bye))
        self.assertFalse(dialog.accept_remote_cseq(bye))
        self.assertIsNone(dialog_id_of(invite))

    def test_uac_dialog(self) -> None:
        """
        A UAC dialog takes the To tag and Contact of the response and the
        Record-Route reversed.
        """
        invite = request()
        ok = response(invite, 200)
        ok = Response(200, "OK", ok.headers.add("Record-Route", "<sip:a;lr>, <sip:b;lr>"))
        dialog = Dialog.as_uac(invite, ok)
        self.assertEqual((dialog.remote_tag, dialog.remote_target), ("r1", "sip:pbx@192.0.2.1"))
        self.assertEqual(dialog.route_set, ("<sip:b;lr>", "<sip:a;lr>"))
