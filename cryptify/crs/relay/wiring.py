"""The CRS media relay process (``crs_relay``): adapters around the core.

- :class:`RelayDatagram` feeds the media port's datagrams to the
  :class:`~cryptify.crs.relay.core.RelayCore` and writes what it answers.
- :class:`RelayService` owns the core, the reactor's clock and the expiry
  sweep; :class:`RelayControl` answers the CRS's control commands (Poll,
  RelayStats, Add, Remove, AddMany, RemoveMany, List, Reclaim) on its behalf.
- :class:`RelayControlProtocol` logs CONNECTION, CLOSE and the commands
  the way crs_relay.log lists them.

The counters keep exactly the meanings ``crs-cli show relay`` prints
(see :class:`~cryptify.crs.relay.core.RelayCounters`).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.internet.protocol import DatagramProtocol, Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from cryptify import __version__
from cryptify.crs.relay.core import Link, RelayCore, RelayCounters
from cryptify.logs import LineSink, crs_line
from cryptify.protocols.relay_control import (
    MAX_BATCH,
    Add,
    AddSessions,
    BatchTooLarge,
    Bridge,
    BridgeSessions,
    ListSessions,
    Poll,
    Reclaim,
    RelayStats,
    Remove,
    RemoveSessions,
)
from cryptify.protocols.relay_packet import MAX_PACKET, MIN_PACKET

__all__ = [
    "MAX_PACKET",
    "MIN_PACKET",
    "RelayControl",
    "RelayControlProtocol",
    "RelayCounters",
    "RelayDatagram",
    "RelayService",
    "control_factory",
]

log = Logger(namespace="cryptify.crs.relay")

#: The relay's per-command lines of crs_relay.log (Command add, remove,
#: bridge): one or more per call, so they go to the file at the end of the
#: reactor turn without the logging system (:class:`~cryptify.logs.LineSink`).
relay_lines = LineSink()


def _command_line(text: str) -> None:
    if relay_lines.observers:
        relay_lines.write(crs_line("INFO", "relay", text))


#: Seconds between expiry sweeps.
SWEEP_INTERVAL = 5.0
#: Datagrams read per readiness event before the reactor gets a turn.
READ_BUDGET = 512
#: Receive buffer asked of the kernel for the media socket (bursts of a
#: thousand sessions' packets fit; capped by net.core.rmem_max).
RECEIVE_BUFFER = 4 * 1024 * 1024


class RelayDatagram(DatagramProtocol):
    """UDP adapter: each datagram to the core, each answer to the socket."""

    def __init__(self, core: RelayCore, clock: IReactorTime) -> None:
        self.core = core
        self.clock = clock

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        result = self.core.packet(datagram, addr, self.clock.seconds())
        if type(result) is tuple:
            try:
                self.transport.write(result[1], result[0])  # type: ignore[union-attr, arg-type]
            except OSError:
                self.core.counters.txerror += 1
            else:
                self.core.counters.txb += 1


@implementer(IReadDescriptor)
class RelayReader:
    """The fast UDP adapter: reads the socket itself, up to a budget per wakeup.

    Twisted's UDP port wraps each datagram in several calls and checks
    before it reaches ``datagramReceived`` and again on ``write``; this
    reader calls ``recvfrom``, the core and ``sendto`` and nothing else,
    and takes the clock once per wakeup.
    """

    def __init__(
        self, core: RelayCore, clock: IReactorTime, sock: socket.socket, budget: int = READ_BUDGET
    ) -> None:
        self.core = core
        self.clock = clock
        self.sock = sock
        self.budget = budget

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "crs_relay media"

    def connectionLost(self, reason: Failure) -> None:
        self.sock.close()

    def doRead(self) -> None:
        recvfrom = self.sock.recvfrom
        sendto = self.sock.sendto
        packet = self.core.packet
        counters = self.core.counters
        now = self.clock.seconds()
        for _ in range(self.budget):
            try:
                datagram, source = recvfrom(2048)
            except BlockingIOError:
                return
            except OSError:
                # An ICMP error queued on the socket: nothing to forward.
                continue
            result = packet(datagram, source, now)
            if type(result) is tuple:
                try:
                    sendto(result[1], result[0])  # type: ignore[call-overload]
                except OSError:
                    counters.txerror += 1
                else:
                    counters.txb += 1


class ReaderPort:
    """A bound media socket served by a :class:`RelayReader` while listening."""

    def __init__(self, reactor: IReactorFDSet, reader: RelayReader) -> None:
        self.reactor = reactor
        self.reader = reader
        reactor.addReader(reader)

    def getHost(self) -> tuple[str, int]:
        host, port = self.reader.sock.getsockname()[:2]
        return host, port

    def stopListening(self) -> None:
        self.reactor.removeReader(self.reader)
        self.reader.sock.close()


def media_socket(host: str, port: int, receive_buffer: int = RECEIVE_BUFFER) -> socket.socket:
    """A non-blocking UDP socket bound to the media port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, receive_buffer)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class RelayService(service.Service):
    """The relay's state while it runs: core, clock, expiry sweep.

    ``host`` and ``port`` are the media address Add answers with.
    """

    def __init__(
        self,
        core: RelayCore,
        clock: IReactorTime,
        host: str,
        port: int,
        sweep_interval: float = SWEEP_INTERVAL,
    ) -> None:
        self.core = core
        self.clock = clock
        self.host = host
        self.port = port
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = clock
        self.sweep_interval = sweep_interval

    def startService(self) -> None:
        service.Service.startService(self)
        self._sweep.start(self.sweep_interval, now=False)

    def stopService(self) -> None:
        service.Service.stopService(self)
        if self._sweep.running:
            self._sweep.stop()
        self.unload_kernel_path()

    def load_kernel_path(self, port: int, attach: str = "auto") -> bool:
        """Load the eBPF fast path for the media port (``attach``: auto,
        tcx or tc); log once what it runs on, or why the relay forwards in
        userspace only."""
        from cryptify.crs.relay.kernel import KernelPath, KernelPathUnavailable

        try:
            path = KernelPath.load(self.host, port, attach=attach, credit_cap=self.core.credit_cap)
        except KernelPathUnavailable as e:
            log.warn(
                "kernel path unavailable, forwarding in userspace only: {reason}", reason=str(e)
            )
            return False
        self.core.offload = path
        log.info("kernel path: {where}", where=path.describe())
        return True

    def unload_kernel_path(self) -> None:
        from cryptify.crs.relay.kernel import KernelPath

        path, self.core.offload = self.core.offload, None
        for session in self.core.sessions.values():
            session.a.kernel = session.b.kernel = False
        if isinstance(path, KernelPath):
            path.close()

    def sweep(self) -> None:
        """Expire idle and orphaned sessions, one log line each."""
        for gone in self.core.expire(self.clock.seconds()):
            log.info(
                "session {session} ({label}) of {server} expired: {reason}",
                session=gone.session.ident,
                label=gone.session.label,
                server=gone.session.owner.server,
                reason=gone.reason,
            )

    def datagram_protocol(self) -> RelayDatagram:
        """The media port's protocol (for ``reactor.listenUDP``)."""
        return RelayDatagram(self.core, self.clock)

    def listen(self, reactor: IReactorFDSet, media_io: str = "mmsg", kernel: str = "off") -> Any:
        """Bind the media port and serve it with the batched reader
        (``mmsg``, where the platform has it) or the plain one (``reader``),
        with the kernel path in front unless ``kernel`` is ``off``."""
        from cryptify.crs.relay import mmsg as relay_mmsg

        sock = media_socket(self.host, self.port)
        if kernel != "off":
            self.load_kernel_path(sock.getsockname()[1], kernel)
        if media_io == "mmsg" and relay_mmsg.available():
            batch = relay_mmsg.BatchReader(self.core, self.clock, sock, self.core.map_address)
            return relay_mmsg.BatchPort(reactor, batch)
        return ReaderPort(reactor, RelayReader(self.core, self.clock, sock))


class RelayControl(amp.CommandLocator):
    """Responders for one control connection (one CRS link)."""

    def __init__(self, relay: RelayService) -> None:
        self.relay = relay
        self.link: Link = relay.core.open_link("?", relay.clock.seconds())

    def _heard(self, server: str) -> None:
        self.relay.core.heard(self.link, server, self.relay.clock.seconds())

    @Poll.responder
    def poll(self, server: str) -> dict[str, object]:
        self._heard(server)
        log.info("Command poll from {server}", server=server)
        return {"sessions": self.relay.core.entries, "version": __version__}

    @RelayStats.responder
    def stats(self) -> dict[str, object]:
        return {"stats": self.relay.core.stats()}

    @Add.responder
    def add(self, server: str, label: str | None = None) -> dict[str, object]:
        self._heard(server)
        return {**self._add(server, label or ""), "host": self.relay.host, "port": self.relay.port}

    def _add(self, server: str, label: str) -> dict[str, object]:
        session = self.relay.core.add(self.link, self.relay.clock.seconds(), label)
        _command_line(f"Command add: session {session.ident} ({session.label}) for {server}")
        return {"session": session.ident, "tag_a": session.a.tag, "tag_b": session.b.tag}

    @AddSessions.responder
    def add_many(self, server: str, labels: list[str]) -> dict[str, object]:
        if len(labels) > MAX_BATCH:
            raise BatchTooLarge(f"at most {MAX_BATCH} sessions per AddMany")
        self._heard(server)
        sessions = [self._add(server, label) for label in labels]
        return {"sessions": sessions, "host": self.relay.host, "port": self.relay.port}

    @Remove.responder
    def remove(self, server: str, session: int) -> dict[str, object]:
        self._heard(server)
        return {"removed": self._remove(server, session)}

    def _remove(self, server: str, session: int) -> bool:
        removed = self.relay.core.remove(session) is not None
        _command_line(f"Command remove: session {session} from {server}")
        return removed

    @RemoveSessions.responder
    def remove_many(self, server: str, sessions: list[int]) -> dict[str, object]:
        if len(sessions) > MAX_BATCH:
            raise BatchTooLarge(f"at most {MAX_BATCH} sessions per RemoveMany")
        self._heard(server)
        return {"removed": [n for n in sessions if self._remove(server, n)]}

    @Bridge.responder
    def bridge(
        self, server: str, session: int, leg: str, host: str, port: int, tag: bytes
    ) -> dict[str, object]:
        self._heard(server)
        return {"bridged": self._bridge(server, session, leg, host, port, tag)}

    def _bridge(
        self, server: str, session: int, leg: str, host: str, port: int, tag: bytes
    ) -> bool:
        bridged = self.relay.core.bridge(session, leg, host, port, tag)
        _command_line(f"Command bridge: session {session} leg {leg} to {host}:{port} for {server}")
        return bridged

    @BridgeSessions.responder
    def bridge_many(self, server: str, legs: list[dict[str, Any]]) -> dict[str, object]:
        if len(legs) > MAX_BATCH:
            raise BatchTooLarge(f"at most {MAX_BATCH} legs per BridgeMany")
        self._heard(server)
        return {
            "bridged": [
                self._bridge(server, e["session"], e["leg"], e["host"], e["port"], e["tag"])
                for e in legs
            ]
        }

    @ListSessions.responder
    def list_sessions(self, server: str) -> dict[str, object]:
        self._heard(server)
        self.relay.core.sync(self.relay.clock.seconds())
        return {"sessions": [s.describe() for s in self.relay.core.owned_by(server)]}

    @Reclaim.responder
    def reclaim(self, server: str, sessions: list[int]) -> dict[str, object]:
        self._heard(server)
        taken = self.relay.core.reclaim(self.link, sessions, self.relay.clock.seconds())
        log.info(
            "Command reclaim: {count} of {asked} sessions for {server}",
            count=len(taken),
            asked=len(sessions),
            server=server,
        )
        return {"reclaimed": taken}

    def closed(self) -> None:
        self.relay.core.close_link(self.link, self.relay.clock.seconds())


class RelayControlProtocol(amp.AMP):
    """One control connection; logs CONNECTION and CLOSE."""

    def __init__(self, locator: RelayControl) -> None:
        amp.AMP.__init__(self, locator=locator)
        self.control = locator

    def connectionMade(self) -> None:
        amp.AMP.connectionMade(self)
        log.info("CONNECTION from the CRS")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        amp.AMP.connectionLost(self, reason)
        self.control.closed()
        log.info("CLOSE of the CRS connection")


def control_factory(relay: RelayService) -> Factory[RelayControlProtocol]:
    """Factory of control connections to one relay."""
    factory = Factory.forProtocol(lambda: RelayControlProtocol(RelayControl(relay)))
    factory.noisy = False
    return factory
