"""
Tests for L{cryptify.cig.sif.register}: the CIG's registrations at its
PBXs (REGISTER, digest, refresh, backoff, lost/regained) on a L{Clock}
with a fake channel, and the service that loads the passwords.
"""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import CallTable, StubTelSide
from cryptify.cig.operator.state import CigState
from cryptify.cig.sif.core import Sif
from cryptify.cig.sif.register import (
    REFRESH_MARGIN,
    RETRY_FIRST,
    RETRY_MAX,
    Registration,
    Registrations,
    RegState,
    TrunkService,
    granted_expiry,
    refresh_after,
)
from cryptify.config import parse_cig_config
from cryptify.config.cig_model import PbxAccount
from cryptify.protocols.sip.digest import Credentials
from cryptify.protocols.sip.locate import locate
from cryptify.protocols.sip.message import Headers, Request, Response, response_to
from cryptify.protocols.sip.transaction import T1
from cryptify.service import StartupError
from tests.fakes import FakeChannel
from tests.sip_support import challenge, verify

CONFIG = """
interfaces { sip { bind 192.0.2.9 5070;
    pbx_account "sip:192.0.2.1" { username "cig"; password "trunk-secret"; register 300; }
} }
"""
CREDENTIALS = Credentials("cig", "trunk-secret")


class RegistrationCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        config = parse_cig_config(CONFIG)
        self.sif = Sif(config, self.clock, StubTelSide("answer"), CallTable(self.clock))
        self.channel = FakeChannel()
        self.sif.channel_to = lambda address: self.channel
        self.events: list[tuple[str, str]] = []
        account = config.sip.pbx_accounts[0]
        self.registration = Registration(
            self.sif,
            account,
            locate(account.server),
            CREDENTIALS,
            lambda unit, event: self.events.append((unit, event)),
        )
        self.addCleanup(self.no_timers_left)

    def no_timers_left(self) -> None:
        self.registration.stop()
        self.sif.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def registers(self) -> list[Request]:
        return [m for m in self.channel.messages() if isinstance(m, Request)]

    def last(self) -> Request:
        return self.registers()[-1]

    def ok(self, request: Request, expires: int | None = None) -> None:
        extra: tuple[tuple[str, str], ...] = ()
        if expires is not None:
            contact = request.headers.get("Contact") or ""
            extra = (("Contact", contact.split(";expires=")[0] + f";expires={expires}"),)
        self.sif.message_received(response_to(request.headers, 200, extra=extra), self.channel)

    def answer(self, request: Request, status: int, *extra: tuple[str, str]) -> None:
        response = response_to(request.headers, status, extra=extra)
        self.sif.message_received(response, self.channel)


class RegisterTests(RegistrationCase):
    """REGISTER, challenge, refresh."""

    def test_register_with_digest_and_refresh(self) -> None:
        """
        The REGISTER names the AOR, our contact and the expiry; its 401
        is answered with credentials (CSeq 2, same Call-ID); the 200's
        grant (120 s) is refreshed REFRESH_MARGIN seconds before it runs
        out, with the same Call-ID and the next CSeq.
        """
        self.registration.start()
        first = self.last()
        self.assertEqual((first.method, first.uri), ("REGISTER", "sip:192.0.2.1:5060"))
        self.assertEqual(first.to.uri, "sip:cig@192.0.2.1")
        self.assertEqual(first.from_.uri, "sip:cig@192.0.2.1")
        self.assertEqual(first.headers.get("Contact"), "<sip:cig@192.0.2.9:5070>;expires=300")
        self.assertEqual(first.headers.get("Expires"), "300")
        self.assertEqual(self.registration.state, RegState.REGISTERING)
        self.sif.message_received(challenge(first, 401), self.channel)
        second = self.last()
        self.assertEqual(str(second.cseq), "2 REGISTER")
        self.assertEqual(second.call_id, first.call_id)
        self.assertTrue(verify(second, "Authorization"))
        self.ok(second, expires=120)
        self.assertEqual(self.registration.state, RegState.REGISTERED)
        self.assertEqual(
            self.registration.row(), ("REG sip:cig@192.0.2.1", "REGISTERED (120 s left)")
        )
        count = len(self.registers())
        self.clock.advance(120 - REFRESH_MARGIN - 1)
        self.assertEqual(len(self.registers()), count)
        self.clock.advance(1)
        refresh = self.last()
        self.assertEqual(str(refresh.cseq), "3 REGISTER")
        self.assertEqual(refresh.call_id, first.call_id)
        self.assertEqual(refresh.from_.tag, first.from_.tag)
        self.assertEqual(self.registration.state, RegState.REGISTERED)
        self.ok(refresh)  # no grant in the answer: what we asked for
        self.assertEqual(self.registration.row()[1], "REGISTERED (300 s left)")
        self.assertEqual(self.events, [])

    def test_backoff(self) -> None:
        """
        A refused REGISTER is tried again after RETRY_FIRST seconds,
        doubling up to RETRY_MAX; never up, so no lost notice.
        """
        self.registration.start()
        waits = []
        for _ in range(9):
            self.answer(self.last(), 403)
            self.assertEqual(self.registration.state, RegState.FAILED)
            count = len(self.registers())
            waited = 0.0
            while len(self.registers()) == count:
                self.clock.advance(1)
                waited += 1
            waits.append(waited)
        expected = [min(RETRY_FIRST * 2**n, RETRY_MAX) for n in range(9)]
        self.assertEqual(waits, expected)
        self.assertEqual(self.events, [])
        self.ok(self.last())
        self.assertEqual(self.registration.state, RegState.REGISTERED)
        self.assertEqual(self.events, [])

    def test_wrong_password(self) -> None:
        """Credentials the registrar challenges again are not sent a third time: FAILED."""
        self.registration.start()
        self.sif.message_received(challenge(self.last(), 401), self.channel)
        self.sif.message_received(challenge(self.last(), 401, nonce="n2"), self.channel)
        self.assertEqual(len(self.registers()), 2)
        self.assertEqual(self.registration.state, RegState.FAILED)

    def test_lost_and_regained(self) -> None:
        """
        A refresh that gets no answer (timer F) loses the registration:
        notify registration-lost; the retry that succeeds notifies
        registration-regained.
        """
        self.registration.start()
        self.ok(self.last(), expires=100)
        self.clock.advance(refresh_after(100))
        self.clock.advance(64 * T1)  # the refresh is never answered
        self.assertEqual(self.registration.state, RegState.FAILED)
        self.assertEqual(self.events, [("cig-server", "registration-lost")])
        self.clock.advance(RETRY_FIRST)
        self.ok(self.last())
        self.assertEqual(
            self.events,
            [("cig-server", "registration-lost"), ("cig-server", "registration-regained")],
        )

    def test_min_expires(self) -> None:
        """A 423 with Min-Expires is retried at once with that expiry."""
        self.registration.start()
        self.answer(self.last(), 423, ("Min-Expires", "900"))
        again = self.last()
        self.assertEqual(again.headers.get("Expires"), "900")
        self.assertEqual(self.registration.state, RegState.REGISTERING)
        self.answer(again, 423, ("Min-Expires", "900"))  # not higher: a failure
        self.assertEqual(self.registration.state, RegState.FAILED)

    def test_unreachable(self) -> None:
        """No connection to the registrar is a failure, retried later."""
        self.sif.channel_to = lambda address: None  # no UDP transport
        self.registration.start()
        self.assertEqual(self.registration.state, RegState.FAILED)
        self.assertEqual(self.registration.row(), ("REG sip:cig@192.0.2.1", "FAILED"))

    def test_tcp_contact(self) -> None:
        """Over TCP the contact says so."""
        self.channel.reliable = True
        self.registration.start()
        self.assertIn(";transport=tcp>", self.last().headers.get("Contact") or "")


class GrantTests(SynchronousTestCase):
    """Reading the registrar's grant."""

    def response(self, *headers: tuple[str, str]) -> Response:
        return Response(200, "OK", Headers(headers))

    def test_contact_param_first(self) -> None:
        """Our contact's expires wins over Expires; other contacts are ignored."""
        found = self.response(
            ("Contact", "<sip:other@198.51.100.1>;expires=10"),
            ("Contact", "<sip:cig@192.0.2.9:5070>;expires=60"),
            ("Expires", "3600"),
        )
        self.assertEqual(granted_expiry(found, "sip:cig@192.0.2.9:5070", 300), 60)
        self.assertEqual(granted_expiry(self.response(("Expires", "90")), "sip:x@y", 300), 90)
        self.assertEqual(granted_expiry(self.response(), "sip:x@y", 300), 300)

    @given(
        st.lists(
            st.tuples(st.sampled_from(["Contact", "Expires"]), st.text(max_size=60)), max_size=4
        )
    )
    def test_hostile_grant(self, headers: list[tuple[str, str]]) -> None:
        """Whatever the 2xx says, the grant is a number, never an exception."""
        clean = tuple((n, v.replace("\r", " ").replace("\n", " ")) for n, v in headers)
        found = granted_expiry(self.response(*clean), "sip:cig@192.0.2.9:5070", 300)
        self.assertIsInstance(found, int)
        self.assertGreaterEqual(found, 0)

    def test_refresh_after(self) -> None:
        """Long grants refresh REFRESH_MARGIN early, short ones half way."""
        self.assertEqual(refresh_after(3600), 3600 - REFRESH_MARGIN)
        self.assertEqual(refresh_after(40), 20)


class TrunkServiceTests(SynchronousTestCase):
    """Loading the passwords and starting the registrations."""

    def make(self, account: PbxAccount) -> tuple[Sif, TrunkService, Clock]:
        clock = Clock()
        config = parse_cig_config(CONFIG)
        config = config.__class__(
            interfaces=config.interfaces.__class__(
                sip=config.sip.__class__(bind="192.0.2.9", port=5070, pbx_accounts=(account,))
            )
        )
        sif = Sif(config, clock, StubTelSide("answer"), CallTable(clock))
        channel = FakeChannel()
        sif.channel_to = lambda address: channel
        return sif, TrunkService(sif, Registrations(sif)), clock

    def test_unsafe_file_stops_startup(self) -> None:
        """A password file others may read stops start-up with a clear reason."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret\n")
        os.chmod(path, 0o644)
        _, trunk, _ = self.make(PbxAccount("sip:192.0.2.1", "cig", password_file=path))
        with self.assertRaises(StartupError) as caught:
            trunk.privilegedStartService()
        self.assertIn("accessible by group or others", str(caught.exception))
        self.assertNotIn("s3cret", str(caught.exception))

    def test_start_and_stop(self) -> None:
        """Started, the keyring is loaded and the registration sent; stopped, no timer is left."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("s3cret\n")
        os.chmod(path, 0o600)
        sif, trunk, clock = self.make(
            PbxAccount("sip:192.0.2.1", "cig", password_file=path, register=60)
        )
        trunk.privilegedStartService()
        trunk.startService()
        self.assertEqual(sif.keyring.accounts[0][2].password, "s3cret")
        self.assertEqual(trunk.registrations.rows(), [("REG sip:cig@192.0.2.1", "REGISTERING")])
        trunk.stopService()
        sif.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_status_lists_registrations(self) -> None:
        """cig-cli status shows each registration in the SIP block."""
        state = CigState(
            crs_address="-",
            sip_bind="0.0.0.0",
            sip_registrations=lambda: [("REG sip:cig@pbx", "REGISTERED (10 s left)")],
        )
        sections = state.status("1")["sections"]
        sip = next(rows for title, rows in sections if title == "SIP status:")  # type: ignore[attr-defined]
        self.assertIn(("REG sip:cig@pbx", "REGISTERED (10 s left)"), sip)
