"""What the CIG secure-side tests share: a UmsgTel attached in memory with
fake SIP and bridge sides (L{TelCase}), and its numbers."""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import Call, CallTable, TelLeg
from cryptify.cig.route import Router
from cryptify.cig.tel.core import UmsgTel
from cryptify.client.calls import CallAgent
from cryptify.config import load_cig_config
from cryptify.crypto.keymaterial import KIND_CIG
from cryptify.protocols.bridge_control import BridgeAdd, BridgeError, BridgeRemove
from cryptify.protocols.sip.sdp import SrtpKeys
from cryptify.protocols.umsg import Message, message
from tests.fakes import _MATERIAL, attached, material
from tests.sip_support import FIXTURES

CALLER, CIG, CALLEE = "tel:+461111", "tel:+8888", "tel:+8888;101"

#: The time every TelCase starts at, and the caller's clock: the invites
#: cached in L{_INVITES} are built once per run, so a tel side set up much
#: later (a slow or reordered run) must not see them as stale.
NOW = time.time()


ANSWER = (
    b"v=0\r\no=pbx 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)


class TelCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.session, self.out = attached(CIG)
        self.sif = FakeSif()
        self.bridge = FakeBridge()
        self.calls = CallTable(self.clock)
        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        self.tel = UmsgTel(
            cig_material(),
            self.clock,
            lambda: self.session,
            self.sif,
            self.calls,
            Router(config),
            self.bridge,
        )
        self.caller_session, self.caller_out = attached(CALLER)
        self.caller = CallAgent(material(CALLER), lambda: NOW, self.caller_session)

    def tearDown(self) -> None:
        self.calls.stop()

    def invite(self, to: str = CALLEE, frm: str = CALLER) -> Message:
        """The invite the CRS would send the CIG for the caller's call to ``to``.

        The I_MESSAGE of the usual call is built once per run (each test's
        tel side has its own replay guard); its SRTP key is in L{_INVITES}.
        """
        if (to, frm) not in _INVITES:
            call = self.caller.place(to)
            sent = self.caller_out[-1]
            invite = message(
                "invite", session="s1", to=to, mikey=sent["mikey"],
                **{"from": frm, "relay-host": "192.0.2.99", "relay-port": 146,
                   "relay-tag": b"T" * 8},
            )  # fmt: skip
            _INVITES[to, frm] = (invite, call.policy_key)
        return _INVITES[to, frm][0]

    def types(self) -> list[str]:
        return [m.type for m in self.out]


def cig_material() -> Any:
    """The CIG's key material, issued by the caller's KMS."""
    material(CALLER)
    if CIG not in _MATERIAL:
        from cryptify.crypto.identity import period_of

        _MATERIAL[CIG] = _MATERIAL["acme"].issue(CIG, period_of(time.time()), kind=KIND_CIG)
    return _MATERIAL[CIG]


class FakeSif:
    """The SIF as the tel side sees it: records legs and hangups."""

    def __init__(self) -> None:
        self.legs: list[tuple[Call, TelLeg]] = []
        self.hung_up: list[Call] = []
        self.sdp = ANSWER
        self.srtp: SrtpKeys | None = None
        self.direction = "sendrecv"
        self.early = False
        self.holds: list[tuple[Call, bool]] = []

    def place_call(self, call: Call, leg: TelLeg) -> None:
        self.legs.append((call, leg))

    def hang_up(self, call: Call) -> None:
        self.hung_up.append(call)

    def media_of(self, call: Call) -> tuple[int | None, bytes] | None:
        return 1024, self.sdp

    def srtp_of(self, call: Call) -> SrtpKeys | None:
        return self.srtp

    def direction_of(self, call: Call) -> str:
        return self.direction

    def early_media(self, call: Call) -> bool:
        return self.early

    def hold(self, call: Call, held: bool) -> bool:
        self.holds.append((call, held))
        return True


class FakeBridge:
    """The cig-relay control link: records commands, refuses BridgeAdd when told."""

    def __init__(self) -> None:
        self.sent: list[tuple[type[amp.Command], dict[str, Any]]] = []
        self.refuse = False

    async def call(self, command: type[amp.Command], **kwargs: Any) -> dict[str, Any]:
        self.sent.append((command, kwargs))
        if command is BridgeAdd and self.refuse:
            raise BridgeError("port busy")
        return {}


_INVITES: dict[tuple[str, str], tuple[Message, bytes]] = {}


class StatsBridge(FakeBridge):
    """A cig-relay link whose BridgeRemove answers the call's last counters."""

    STATS = {"pbx_tx_octets": 17200, "pbx_rx_octets": 17372, "pbx_tx": 100, "pbx_rx": 101}

    def __init__(self) -> None:
        super().__init__()
        self.hold_answers = False
        self.hold_adds = False
        self.held: list[Any] = []

    async def call(self, command: type[amp.Command], **kwargs: Any) -> dict[str, Any]:
        await super().call(command, **kwargs)
        if command is BridgeAdd and self.hold_adds:
            added: Deferred[dict[str, Any]] = Deferred()
            self.held.append(added)
            return await added
        if command is BridgeRemove:
            if self.hold_answers:
                done: Deferred[dict[str, Any]] = Deferred()
                self.held.append(done)
                return await done
            return {"removed": True, "stats": dict(self.STATS)}
        return {}


class SifTelCase(TelCase):
    """The tel side over the real SIF (fake channel) and a L{StatsBridge}."""

    def setUp(self) -> None:
        super().setUp()
        from cryptify.cig.calls import StubTelSide
        from cryptify.cig.sif.core import Sif
        from tests.fakes import FakeChannel

        self.bridge = StatsBridge()
        self.tel.bridge = self.bridge
        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        self.real = Sif(config, self.clock, StubTelSide(), self.calls)
        self.channel = FakeChannel()
        self.real.channel_to = lambda address: self.channel
        self.real.resolve = lambda host: succeed("192.0.2.50")
        self.tel.sip = self.real
        self.real.tel = self.tel  # re-INVITEs reach the tel side's bridges
        self.addCleanup(self.real.stop)

    def answer_invite(
        self, statuses: tuple[int, ...] = (100, 180, 200), body: bytes = ANSWER
    ) -> Any:
        """The secure caller's call to the PBX, answered with C{statuses}; the INVITE."""
        from cryptify.client.session import Incoming
        from cryptify.protocols.sip.message import Request

        self.tel.handle(Incoming(self.invite()))
        invite = self.channel.messages()[-1]
        assert isinstance(invite, Request)
        for status in statuses:
            self.pbx_responds(invite, status, body if status in (183, 200) else b"")
        return invite

    def pbx_responds(self, invite: Any, status: int, sdp: bytes = b"") -> None:
        """The PBX's response (To tag pbx1) to our INVITE, with C{sdp} if any."""
        from cryptify.protocols.sip.message import response_to

        extra: tuple[tuple[str, str], ...] = (("Contact", "<sip:101@192.0.2.50:5070>"),)
        if sdp:
            extra += (("Content-Type", "application/sdp"),)
        response = response_to(invite.headers, status, to_tag="pbx1", extra=extra, body=sdp)
        self.real.message_received(response, self.channel)

    def pbx_call(self) -> None:
        """A call from the PBX to the secure caller's number, answered by the secure side."""
        from cryptify.cig.calls import StubTelSide
        from cryptify.cig.tel.switch import TelSwitch, UifCalls
        from cryptify.client.session import Answered, Incoming
        from cryptify.protocols.sip.message import parse_datagram
        from tests.sip_support import invite as sip_invite

        config = load_cig_config(os.path.join(FIXTURES, "cig-simple.conf"))
        uif = _FakeUif(self.session)
        calls = UifCalls(self.clock, uif, self.real, self.calls, Router(config), self.bridge)
        calls.tel = self.tel
        self.real.tel = TelSwitch(StubTelSide(), calls)
        self.real.message_received(parse_datagram(sip_invite()), self.channel)
        sent = self.out[-1]
        relay = {"relay-host": "192.0.2.99", "relay-port": 146, "relay-tag": b"C" * 8}
        self.tel.handle(
            Answered(sent["id"], message("session", id=sent["id"], session="s9", **relay))
        )
        self.tel.handle(Incoming(message("ringing", session="s9")))
        self.tel.handle(Incoming(message("talk", session="s9")))


class _FakeUif:
    """The UIF as UifCalls sees it: key material and a session."""

    def __init__(self, session: Any) -> None:
        self.material: Any = None
        self._session = session

    def session(self) -> Any:
        return self._session
