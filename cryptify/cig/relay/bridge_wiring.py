"""The media bridge's Twisted adapters: UDP legs, the 20 ms clock, the table.

:class:`BridgeService` owns every bridged call: two UDP ports per call (the
secure leg, talking to the CRS relay, and the PBX leg), the
:class:`~cryptify.cig.relay.bridge_core.CallBridge` core between them, and one
``LoopingCall`` that ticks every core every 20 ms.  When the process was
late (descheduled on a busy machine, or a long reactor turn) the clock
makes up the missed ticks, up to :data:`MAX_CATCH_UP` (500 ms), reading
one datagram per leg of what waited before each, so that each call's
playout buffer has the PBX audio of those ticks and the catch-up sends it
in order, as rtpengine would have forwarded it from its socket queue.  ``cig.conf``
applies here: ``rtp_remote_addr_override`` of the tel interface rewrites
the relay address the CIG server names, that of the sip interface the
PBX's; ``rtp_port_range`` of each interface is where the leg's local port
comes from when the caller does not name one.

On a real reactor (one with file descriptors) the legs are plain
non-blocking sockets in one epoll set of our own, which the reactor sees as
a single reader (:class:`MediaPoller`): one wakeup serves every leg that
has a datagram, with one ``recv`` each and no per-packet reactor dispatch,
and sends are ``sendto`` straight on the leg's socket.  Any other reactor
(the tests' fake one) gets ``listenUDP`` ports.

With ``fast_path`` ``auto`` (cig.conf ``relay { fast_path auto|off; }``) a
G.711 call's packets go through the C path (:mod:`cryptify.cig.relay.cpath`)
where it was built: both its legs are then in one epoll set of C's
(:class:`~cryptify.cig.relay.cpath.CTable`, one reader for the reactor)
and read by C itself (``recvmmsg``; the secure leg's packets go on to the
PBX in one ``sendmmsg``, the PBX leg's into the call's playout buffer in
C), the clock ticks every such call in one C loop (playout, SRTP and a
``sendto`` each), and only what the fast paths leave (a new client
stream, a telephone-event either way) comes back to Python.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cryptify.cig.relay import cpath
from cryptify.cig.relay.bridge_core import CallBridge, prepare_opus
from cryptify.cig.relay.bridge_spec import (
    TICK_SECONDS,
    BridgeCounters,
    BridgeSpecError,
    PbxSide,
    SecureSide,
)
from cryptify.cig.relay.media_io import CPoller, MediaPoller, SocketPort, bind_udp
from cryptify.config.cig_model import PortRange, SipInterface, TelInterface

__all__ = ["MAX_CATCH_UP", "BridgeRefused", "BridgeService", "MediaPoller", "SocketPort"]

log = Logger(namespace="cryptify.cig.bridge")

#: Ticks one late wakeup may make up for (500 ms); beyond that the rate drops.
#: Each made-up tick sends what the playout buffer holds for it (the PBX
#: datagrams of that tick are read first), so a catch-up is the queued audio
#: in order, at most 500 ms of it, never a replay.
MAX_CATCH_UP = 25


class BridgeRefused(Exception):
    """A bridge request the service cannot carry out (message says why)."""


class SecureLeg(DatagramProtocol):
    """SRTP from the CRS relay into the core; RTP out of the PBX leg."""

    def __init__(self, bridged: BridgedCall) -> None:
        self.bridged = bridged
        #: What a :class:`MediaPoller` calls with each datagram.
        self.receive: Callable[[bytes], None] = bridged.from_secure

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.bridged.from_secure(datagram)


class PbxLeg(DatagramProtocol):
    """RTP from the PBX into the core's playout buffer."""

    def __init__(self, bridged: BridgedCall) -> None:
        self.bridged = bridged
        self.receive: Callable[[bytes], None] = bridged.core.from_pbx

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.bridged.core.from_pbx(datagram)


@attrs.define(eq=False)
class BridgedCall:
    """One call's core and its two listening ports."""

    core: CallBridge
    relay_address: tuple[str, int]
    pbx_address: tuple[str, int] | None
    secure_port: Any = None
    pbx_port: Any = None
    #: The PBX address as a ``sockaddr_in`` for the C path's ``sendmmsg``.
    pbx_sockaddr: bytes = b""
    #: The call's number in the service's C clock (:class:`cpath.CTable`).
    ident: int = 0

    def __attrs_post_init__(self) -> None:
        self.set_pbx_address(self.pbx_address)

    def set_pbx_address(self, address: tuple[str, int] | None) -> None:
        self.pbx_address = address
        self.pbx_sockaddr = b"" if address is None else cpath.sockaddr(address)
        c = self.core.c_call
        if c is not None:
            c.set_pbx_address(self.pbx_sockaddr)

    def from_secure(self, datagram: bytes) -> None:
        """A datagram from the relay: through the core, out to the PBX."""
        out = self.core.from_secure(datagram)
        if out is None or self.pbx_address is None:
            return
        try:
            self.pbx_port.write(out, self.pbx_address)
        except OSError:
            self.core.counters.tx_errors += 1

    def send_pbx(self, packet: bytes) -> None:
        if self.pbx_address is None:
            return
        try:
            self.pbx_port.write(packet, self.pbx_address)
        except OSError:
            self.core.counters.tx_errors += 1

    def tick(self) -> None:
        """Send the relay this call's datagram of one tick."""
        try:
            self.secure_port.write(self.core.tick(), self.relay_address)
        except OSError:
            self.core.counters.tx_errors += 1

    def close(self) -> None:
        for port in (self.secure_port, self.pbx_port):
            if port is not None:
                port.stopListening()


def _check_address(what: str, host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise BridgeRefused(f"{what} must be an IPv4 address, not {host!r}") from None


@attrs.define(eq=False)
class _Ports:
    """Round-robin over a port range (even ports only for RTP)."""

    low: int
    high: int
    step: int
    next: int = 0

    def candidates(self) -> list[int]:
        first = self.low + (self.low % self.step)
        count = max(0, (self.high - first) // self.step + 1)
        start = self.next
        self.next = (self.next + 1) % max(count, 1)
        return [first + self.step * ((start + i) % count) for i in range(count)]


class BridgeService(service.Service):
    """Every bridged call of this relay, and the clock that paces them."""

    def __init__(
        self,
        reactor: Any,
        tel: TelInterface | None = None,
        sip: SipInterface | None = None,
        tick: float = TICK_SECONDS,
        fast_path: str = "auto",
    ) -> None:
        self.reactor = reactor
        #: The engine G.711 calls get: C{"c"} when ``fast_path`` is auto and
        #: the C path was built, else C{"python"}.
        self.engine = "c" if fast_path == "auto" and cpath.available() else "python"
        self._fast_path = fast_path
        self.tel = tel or TelInterface()
        self.sip = sip or SipInterface()
        self.calls: dict[str, BridgedCall] = {}
        self.ended = BridgeCounters()
        #: Call ticks the clock dropped, beyond :data:`MAX_CATCH_UP` late ones.
        self.ticks_skipped = 0
        #: Call ticks the clock made up for after a late wakeup.
        self.ticks_caught_up = 0
        self._secure_ports = self._range(self.tel.rtp_port_range, 1)
        self._pbx_ports = self._range(self.sip.rtp_port_range, 2)
        #: The calls the clock ticks in C (C path calls on real sockets), by ident.
        self._table: cpath.CTable | None = None
        self._by_ident: dict[int, BridgedCall] = {}
        #: The calls the clock ticks in Python (all the others).
        self._python_ticked: dict[str, BridgedCall] = {}
        self._idents = itertools.count(1)
        self._loop = LoopingCall.withCount(self._tick)
        self._loop.clock = reactor
        self._interval = tick
        self._poller = MediaPoller(reactor) if IReactorFDSet.providedBy(reactor) else None
        #: The reactor's reader of the C path's legs (on a real reactor).
        self._cpoller: CPoller | None = None
        if self._poller is not None and self.engine == "c":
            self._table = cpath.CTable()
            self._cpoller = CPoller(reactor, self._table.fileno(), self._c_read)
        #: Reads what waits on the legs (``read_pending(rounds)``, one datagram
        #: per leg a round) before each tick a late clock makes up; None where
        #: the reactor delivers datagrams itself.
        self.read_pending: Callable[[int], None] | None = (
            None if self._poller is None else self._read_pending
        )

    @staticmethod
    def _range(ports: PortRange | None, step: int) -> _Ports | None:
        return None if ports is None else _Ports(ports.low, ports.high, step)

    def startService(self) -> None:
        service.Service.startService(self)
        if self.engine == "c":
            log.info("Bridge fast path: C (libsrtp, recvmmsg/sendmmsg) for G.711 calls")
        elif self._fast_path == "auto":
            log.warn("Bridge fast path: not built (libsrtp2-dev missing at install), Python only")
        else:
            log.info("Bridge fast path: off, Python only")
        prepare_opus()
        self._loop.start(self._interval, now=False).addErrback(
            lambda f: log.failure("bridge clock stopped", f)
        )

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        for call in list(self.calls):
            self.remove(call)

    def _read_pending(self, rounds: int) -> None:
        assert self._poller is not None
        self._poller.drain(rounds)
        if self._table is not None and self._table.calls:
            self._c_read(rounds, 1)

    def _c_read(self, rounds: int, most: int) -> None:
        """The C path's legs: what waits, read in C (``rounds`` epoll rounds, up
        to ``most`` datagrams a leg a round); packets the fast paths leave
        (a new client stream, telephone-events) are finished here."""
        assert self._table is not None
        self._table.poll(rounds, most, self._c_slow)

    def _c_slow(self, ident: int, leg: int, packet: bytes) -> None:
        bridged = self._by_ident.get(ident)
        if bridged is None:
            return
        try:
            if leg == cpath.SECURE:
                out = bridged.core.finish_secure(packet)
                if out is not None:
                    bridged.send_pbx(out)
            else:
                bridged.core.pbx_slow(packet)
        except Exception:
            log.failure("bridge media: datagram handling failed")

    def _tick(self, count: int) -> None:
        if count > 1:
            self._catch_up(count)
            return
        self._tick_once()

    def _tick_once(self) -> None:
        """One datagram per call: the C path's calls ticked in C (those with a
        telephone-event under way come back), the others here."""
        table = self._table
        if table is not None:
            by_ident = self._by_ident
            for ident in table.tick_all():
                by_ident[ident].tick()
        for bridged in self._python_ticked.values():
            core = bridged.core
            try:
                bridged.secure_port.write(core.tick(), bridged.relay_address)
            except OSError:
                core.counters.tx_errors += 1

    def _catch_up(self, count: int) -> None:
        """``count`` ticks are due at once: make up to :data:`MAX_CATCH_UP` of them.

        The reactor runs timers before I/O, so what the legs received while
        the process was late is still queued.  Before each made-up tick one
        datagram per leg is read: every call's playout buffer then has the
        PBX audio of that tick (not silence, and not all of the backlog at
        once, which would run ahead of the playout window and resynchronise).
        """
        calls = self.calls
        ticks = min(count, MAX_CATCH_UP)
        self.ticks_skipped += (count - ticks) * len(calls)
        self.ticks_caught_up += (ticks - 1) * len(calls)
        read = self.read_pending
        for _ in range(ticks):
            if read is not None:
                read(1)
            self._tick_once()

    def _bind(self, port: int, protocol: SecureLeg | PbxLeg, interface: str) -> Any:
        if self._poller is None:
            return self.reactor.listenUDP(port, protocol, interface=interface)
        sock = bind_udp(port, interface)
        # The C path's legs are read by C (_clock_add puts them in its epoll set).
        in_c = self._table is not None and protocol.bridged.core.c_call is not None
        return SocketPort(None if in_c else self._poller, sock, protocol.receive)

    def _listen(
        self, protocol: SecureLeg | PbxLeg, wanted: int, ports: _Ports | None, interface: str
    ) -> Any:
        if wanted or ports is None:
            try:
                return self._bind(wanted, protocol, interface)
            except CannotListenError as exc:
                raise BridgeRefused(
                    f"cannot listen on {interface}:{wanted}: {exc.socketError}"
                ) from None
        for port in ports.candidates():
            try:
                return self._bind(port, protocol, interface)
            except CannotListenError:
                continue
        raise BridgeRefused(f"no free port in {ports.low}-{ports.high}")

    def add(
        self, call: str, secure: SecureSide, pbx: PbxSide, pbx_port: int = 0
    ) -> tuple[int, int]:
        """Bridge ``call``; answers (secure leg port, PBX leg port)."""
        if call in self.calls:
            raise BridgeRefused(f"call {call} is already bridged")
        relay_host = _check_address("relay_host", self.tel.override(secure.relay_host))
        secure = attrs.evolve(secure, relay_host=relay_host)
        pbx = self._pbx(pbx)
        try:
            core = CallBridge(call, secure, pbx, engine=self.engine)
        except BridgeSpecError as exc:
            raise BridgeRefused(str(exc)) from None
        bridged = BridgedCall(core, core.relay_address, pbx.remote)
        bridged.secure_port = self._listen(SecureLeg(bridged), 0, self._secure_ports, "")
        try:
            bridged.pbx_port = self._listen(
                PbxLeg(bridged), pbx_port, self._pbx_ports, self.sip.bind
            )
        except BridgeRefused:
            bridged.close()
            raise
        try:
            self._clock_add(bridged)
        except OSError as exc:
            self._clock_remove(bridged)
            bridged.close()
            raise BridgeRefused(f"cannot watch the call's legs: {exc}") from None
        self.calls[call] = bridged
        ports = (bridged.secure_port.getHost().port, bridged.pbx_port.getHost().port)
        log.info(
            "Bridge {call} added: secure port {secure_port} <-> relay {relay} ({scodec}, "
            "telephone-event {sdtmf}); PBX port {pbx_port} <-> {pbx} ({pcodec}, "
            "telephone-event {pdtmf}, {pmedia}){transcode}",
            call=call,
            secure_port=ports[0],
            relay=_where(bridged.relay_address),
            scodec=secure.codec,
            sdtmf=secure.dtmf_pt if secure.dtmf_pt is not None else "-",
            pbx_port=ports[1],
            pbx=_where(pbx.remote),
            pcodec=pbx.codec,
            pdtmf=pbx.dtmf_pt if pbx.dtmf_pt is not None else "-",
            pmedia=_media(pbx),
            transcode=", transcoding" if secure.codec != pbx.codec else "",
        )
        return ports

    def _clock_add(self, bridged: BridgedCall) -> None:
        """Put a new call on the clock: in C when it can be, else here."""
        c = bridged.core.c_call
        table = self._table
        if table is None or c is None:
            self._python_ticked[bridged.core.call] = bridged
            return
        bridged.ident = next(self._idents)
        relay = cpath.sockaddr(bridged.relay_address)
        c.set_io(bridged.ident, bridged.secure_port.socket.fileno(), relay)
        table.add(bridged.ident, c, bridged.pbx_port.socket.fileno())
        self._by_ident[bridged.ident] = bridged
        assert self._cpoller is not None
        self._cpoller.start()

    def _clock_remove(self, bridged: BridgedCall) -> None:
        self._python_ticked.pop(bridged.core.call, None)
        if self._by_ident.pop(bridged.ident, None) is not None and self._table is not None:
            self._table.remove(bridged.ident)
            if not self._table.calls and self._cpoller is not None:
                self._cpoller.stop()

    def _pbx(self, pbx: PbxSide) -> PbxSide:
        if pbx.remote_host is None:
            return pbx
        host = _check_address("pbx_host", self.sip.override(pbx.remote_host))
        return attrs.evolve(pbx, remote_host=host)

    def update(self, call: str, pbx: PbxSide) -> bool:
        """Change a call's PBX leg; False when the call is not bridged."""
        bridged = self.calls.get(call)
        if bridged is None:
            return False
        pbx = self._pbx(pbx)
        try:
            bridged.core.update_pbx(pbx)
        except BridgeSpecError as exc:
            raise BridgeRefused(str(exc)) from None
        bridged.set_pbx_address(pbx.remote)
        log.info(
            "Bridge {call} updated: PBX {pbx} ({codec}, telephone-event {dtmf}, {media}, "
            "{direction})",
            call=call,
            pbx=_where(pbx.remote),
            codec=pbx.codec,
            dtmf=pbx.dtmf_pt if pbx.dtmf_pt is not None else "-",
            media=_media(pbx),
            direction=pbx.direction,
        )
        return True

    def remove(self, call: str) -> dict[str, int] | None:
        """Stop bridging ``call``; its final counters, or None if unknown."""
        bridged = self.calls.pop(call, None)
        if bridged is None:
            return None
        self._clock_remove(bridged)
        bridged.close()
        stats = bridged.core.snapshot()
        self.ended.add(bridged.core.counters)
        log.info(
            "Bridge {call} removed: secure rx {secure_rx} tx {secure_tx}, PBX rx {pbx_rx} "
            "tx {pbx_tx}, SRTP errors {srtp_errors} (PBX {pbx_srtp_errors}), late {late}, "
            "concealed {concealed}, held {held}",
            call=call,
            **stats,
        )
        return stats

    def stats(self, call: str | None = None) -> dict[str, int] | None:
        """One call's counters (None if unknown), or all calls' summed with ``calls``."""
        if call is not None:
            bridged = self.calls.get(call)
            return None if bridged is None else bridged.core.snapshot()
        total = BridgeCounters()
        total.add(self.ended)
        for bridged in self.calls.values():
            bridged.core.snapshot()
            total.add(bridged.core.counters)
        return dict(
            total.as_dict(),
            calls=len(self.calls),
            ticks_skipped=self.ticks_skipped,
            ticks_caught_up=self.ticks_caught_up,
        )


def _media(pbx: PbxSide) -> str:
    """How the PBX leg's media travel: the SRTP suite (never a key) or plain RTP."""
    return "RTP" if pbx.srtp is None else f"SRTP {pbx.srtp.profile}"


def _where(address: tuple[str, int] | None) -> str:
    return "-" if address is None else f"{address[0]}:{address[1]}"
