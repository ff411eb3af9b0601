"""The pool link (port 8090): the Twisted side of :mod:`cryptify.crs.pool.core`.

:class:`PoolLink` is a service that

- listens on ``pool-port`` (the client listener's interface) with TLS-PSK:
  the PSK identity is the connecting member's name, the key is derived from
  the ``[GLOBAL]`` ``key`` (:func:`pool_psk`); a handshake with any other
  key or an identity that is not a peer fails and the connection closes;
- keeps one outgoing TLS-PSK connection to every other member (its
  ``[POOL]`` ``ip`` through ``addr-map``), reconnecting with backoff;
- every :data:`~cryptify.crs.pool.core.HEARTBEAT_INTERVAL` calls
  :meth:`~PoolMember.tick` and sends the member's
  :meth:`~PoolMember.heartbeat` on every connection to a peer, outgoing
  and incoming (once the incoming one has named its peer), so that each
  connection hears from its other end every second;
- feeds every heartbeat received (on any connection) to
  :meth:`~PoolMember.receive`, and counts every other frame of a peer as a
  sign of life (:meth:`~PoolMember.heard_from`); a connection that sends a frame that does not
  decode, a sender that is not a peer, or a second sender, or stays silent
  for :data:`IDLE_TIMEOUT`, is dropped, and nothing of it reaches the core;
- writes each map change to crs.log with its reason, and tells ``notify.sh``
  of link down/up (unit ``pool_link_NAME``), takeovers and hand-backs (unit
  ``pool``);
- after each map change calls its *watchers* (:meth:`PoolLink.watch`),
  e.g. :func:`client_mover`, which tells attached clients of slots this
  member no longer claims to come back (they are then moved to the owner);
- carries the frames of other modules (forwarded messages, calls, operator
  changes): a module registers a handler for its frame type
  (:meth:`PoolLink.handle`), sends with :meth:`PoolLink.send`, and hears of
  peers coming and going with :meth:`PoolLink.on_link`.  A frame of a type
  nobody handles is logged once per type and ignored (a newer peer), a
  handler that raises :class:`~cryptify.crs.pool.wire.WireError` drops the
  connection as a bad heartbeat does, and any other error is logged (this
  side's fault: the connection stays);
- measures its own event loop's lag (a probe due every
  :data:`LAG_PROBE_INTERVAL`, and how late it fires) and tells the member
  (:meth:`~PoolMember.lagged`), so that a peer whose frames waited unread
  while this reactor was busy (a storm of client handshakes) is not
  declared down for it;
- persists the member's *incarnation* in ``data-dir/pool-incarnation``
  (:func:`next_incarnation`).

Each pair of members has two connections (each connects out to the
other), and heartbeats go both ways on both.  A connection that has
carried no frame for :data:`IDLE_TIMEOUT` (a peer gone silent, a link cut
without a reset) is dropped, so the outgoing side connects again rather
than write into a dead connection until TCP gives up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import IAddress, IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from cryptify.config.crs_model import CrsConfig
from cryptify.crs.attach.registry import AttachRegistry
from cryptify.crs.pool.connection import (
    IDLE_TIMEOUT,
    INBOUND_PER_PEER,
    INCARNATION_FILE,
    _InboundFactory,
    _LinkProtocol,
    _OutboundFactory,
    _tcp_endpoint,
    next_incarnation,
    pool_psk,
)
from cryptify.crs.pool.core import (
    DOWN_AFTER,
    HEARTBEAT_INTERVAL,
    Change,
    PoolConfig,
    PoolError,
    PoolMember,
    Reason,
)
from cryptify.crs.pool.wire import (
    DOWN_REPORT,
    Envelope,
    WireError,
    decode_down,
    encode_down,
    encode_frame,
    encode_heartbeat,
)
from cryptify.crs.slots import slot_of
from cryptify.protocols.streams import abort
from cryptify.protocols.tls_psk import PskClientContextFactory, PskServerContextFactory
from cryptify.service import ListenService, StartupError

log = Logger(namespace="cryptify.crs.pool")

#: How often the loop-lag probe is due: the lag it measures is how late it fires.
LAG_PROBE_INTERVAL = 0.1
#: A lag this long goes to crs.log (at most once per :data:`LAG_LOG_EVERY`).
LAG_WARN = 1.0
LAG_LOG_EVERY = 10.0


class PoolLink(service.MultiService):
    """The pool link of one member (see the module docstring).

    @param incarnation: returns this start's incarnation (default:
        :func:`next_incarnation` in ``data-dir``).
    @param endpoint: makes the plain TCP endpoint to a member's
        ``(address, port)``; the default connects with TCP.
    @param listen: binds the TLS listener: called with the factory and the
        server context factory (the default: ``listenSSL`` on
        ``pool-port`` of the client listener's interface).
    """

    def __init__(
        self,
        config: CrsConfig,
        me: str,
        reactor: Any,
        notify: Callable[[str, str], None],
        *,
        incarnation: Callable[[], int] | None = None,
        pid: int | None = None,
        endpoint: Callable[[str, int], IStreamClientEndpoint] | None = None,
        listen: Callable[[Factory, PskServerContextFactory], Any] | None = None,
    ) -> None:
        service.MultiService.__init__(self)
        g = config.global_
        if not g.key:
            raise PoolError("a pool needs the [GLOBAL] key")
        self.config = config
        self.pool = PoolConfig.from_crs(config)
        self.me = me
        self.pool.member(me)
        self.peers = tuple(n for n in self.pool.names if n != me)
        self.reactor = reactor
        self.notify = notify
        self.pid = os.getpid() if pid is None else pid
        data_dir = g.data_dir
        self._incarnation = incarnation or (lambda: next_incarnation(data_dir, reactor.seconds()))
        self.max_inbound = INBOUND_PER_PEER * len(self.peers)
        self._psk = pool_psk(g.key)
        self.member: PoolMember | None = None
        self.pids: dict[str, int] = {}
        self._inbound = 0
        #: Connections to a known peer, both directions: heartbeats go on each.
        self._conns: set[_LinkProtocol] = set()
        #: Every open connection, to close at stop.
        self._open: set[_LinkProtocol] = set()
        self._up: set[str] = set()
        self._handing_back = False
        self._watchers: list[Callable[[], bool]] = []
        self._again: list[Callable[[], bool]] = []
        self._handlers: dict[str, Callable[[str, dict[str, object]], None]] = {}
        self._unhandled: set[str] = set()
        self._link_listeners: list[Callable[[str, bool], None]] = []
        self.handle(DOWN_REPORT, self._on_down)
        port = g.pool_port
        make = endpoint or (lambda host, p: _tcp_endpoint(reactor, host, p))
        client_tls = PskClientContextFactory(me.encode("ascii"), self._psk)
        for name in self.peers:
            address = g.map_address(self.pool.member(name).address)
            client = ClientService(
                wrapClientTLS(client_tls, make(address, port)),
                _OutboundFactory(self, name),
                retryPolicy=backoffPolicy(initialDelay=0.5, maxDelay=10.0),
                clock=reactor,
            )
            service.MultiService.addService(self, client)
        server_tls = PskServerContextFactory(self._lookup)
        factory = _InboundFactory(self)
        where = f"{g.listen.host}:{port}"
        if listen is None:
            host = g.listen.host

            def listen_default() -> Any:
                return reactor.listenSSL(port, factory, server_tls, interface=host)

            bind: Callable[[], Any] = listen_default
        else:

            def bind() -> Any:
                return listen(factory, server_tls)

        self.listener = ListenService("pool link", where, bind)
        service.MultiService.addService(self, self.listener)
        self._loop = LoopingCall(self._beat)
        self._loop.clock = reactor
        #: When the loop-lag probe is due, and its delayed call.
        self._probe_due: float | None = None
        self._probe: IDelayedCall | None = None
        #: The longest lag measured, and when one was last logged.
        self.lag_max = 0.0
        self._lag_logged: float | None = None
        #: When a lag of at least LAG_WARN was last seen.
        self._stall_at: float | None = None

    # -- lifecycle -------------------------------------------------------

    def startService(self) -> None:
        if self.member is None:
            try:
                incarnation = self._incarnation()
            except OSError as exc:
                raise StartupError(f"pool link: cannot store the incarnation: {exc}") from exc
            self.start(incarnation)
        service.MultiService.startService(self)
        self._schedule_probe()
        self._loop.start(HEARTBEAT_INTERVAL, now=True).addErrback(
            lambda f: log.failure("pool heartbeat loop stopped", f)
        )

    def start(self, incarnation: int) -> None:
        """Create the member with this start's incarnation (done by
        :meth:`startService` with the stored one)."""
        self.member = PoolMember(self.pool, self.me, incarnation, self.reactor.seconds())
        log.info(
            "pool member {me} of {members}, incarnation {incarnation}",
            me=self.me,
            members=",".join(self.pool.names),
            incarnation=incarnation,
        )

    def stopService(self) -> defer.Deferred[None]:
        if self._loop.running:
            self._loop.stop()
        if self._probe is not None and self._probe.active():
            self._probe.cancel()
        self._probe = self._probe_due = None
        result: defer.Deferred[None] = service.MultiService.stopService(self)
        for proto in list(self._open):
            abort(proto.transport)
        return result

    def watch(self, watcher: Callable[[], bool]) -> None:
        """Call ``watcher()`` after every map change; when it returns True
        (work left, e.g. a client busy in a call), again at the next
        heartbeat until it returns False."""
        self._watchers.append(watcher)

    def recheck(self, watcher: Callable[[], bool]) -> None:
        """Call ``watcher()`` (one given to :meth:`watch`) at the next
        heartbeat too, as if it had last asked to run again."""
        if watcher not in self._again:
            self._again.append(watcher)

    def _run_watchers(self, watchers: list[Callable[[], bool]]) -> None:
        again = []
        for watcher in watchers:
            try:
                if watcher():
                    again.append(watcher)
            except Exception:
                log.failure("pool map watcher failed")
        self._again = again

    def handle(self, frame_type: str, handler: Callable[[str, dict[str, object]], None]) -> None:
        """Call ``handler(peer, fields)`` for every frame of ``frame_type``
        a peer sends; it checks the fields and raises
        :class:`~cryptify.crs.pool.wire.WireError` on bad ones (the
        connection is then dropped)."""
        if frame_type in self._handlers:
            raise ValueError(f"pool frame type {frame_type!r} already has a handler")
        self._handlers[frame_type] = handler

    def on_link(self, listener: Callable[[str, bool], None]) -> None:
        """Call ``listener(peer, up)`` when a peer's heartbeats start or
        stop arriving (as ``show services`` and ``notify.sh`` see it)."""
        self._link_listeners.append(listener)

    def send(self, peer: str, frame_type: str, fields: dict[str, object]) -> bool:
        """Send one frame to ``peer`` on a connection to it (its outgoing
        one when open); False when no connection to it is open (nothing is
        queued: the caller keeps what must not be lost and sends it again
        when :meth:`on_link` says the peer is up).  A frame sent is not yet
        received: the protocol on top confirms what it needs."""
        frame = encode_frame(frame_type, fields)
        conns = [c for c in self._conns if c.peer == peer]
        if not conns:
            return False
        conns.sort(key=lambda c: not c.outgoing)
        conns[0].send(frame)
        return True

    def _dispatch(self, peer: str, envelope: Envelope) -> None:
        handler = self._handlers.get(envelope.type)
        if handler is None:
            if envelope.type not in self._unhandled:
                self._unhandled.add(envelope.type)
                log.warn(
                    "pool link: ignoring frames of type {type} from {peer} (not known here)",
                    type=envelope.type,
                    peer=peer,
                )
            return
        handler(peer, envelope.fields)

    # -- what the CRS asks -----------------------------------------------

    def owner(self, slot: int) -> str | None:
        """The member owning ``slot`` now, or None (no map yet, or handed over)."""
        if self.member is None or self.member.map is None:
            return None
        return self.member.map.owner(slot)

    def mine(self, slot: int) -> bool:
        return self.member is not None and self.member.claims(slot)

    def standby(self, slot: int) -> str | None:
        """Who takes ``slot`` if this instance dies (:meth:`PoolMember.heir`)."""
        if self.member is None:
            return None
        return self.member.heir(slot, self.reactor.seconds())

    def address(self, host: str) -> str:
        """Where clients reach ``host`` (its ``[POOL]`` ip)."""
        return self.pool.member(host).address

    def late(self, peer: str) -> bool:
        """Whether ``peer``'s frames are late or stopped (core rule 8)."""
        self._observe_lag()
        return self.member is None or self.member.late(peer, self.reactor.seconds())

    def link_up(self, peer: str) -> bool:
        """Whether ``peer``'s heartbeats arrive (``show services``)."""
        return peer in self._up

    def rows(self) -> list[tuple[str, str, str]]:
        """(member, pid, slots) for every member, for ``show system``."""
        slot_map = None if self.member is None else self.member.map
        result = []
        for name in self.pool.names:
            if name == self.me:
                pid = str(self.pid)
            else:
                pid = str(self.pids[name]) if name in self._up and name in self.pids else "-"
            result.append((name, pid, "-" if slot_map is None else slot_map.describe(name)))
        return result

    # -- the link --------------------------------------------------------

    def _lookup(self, identity: bytes, peer: IAddress | None) -> bytes | None:
        try:
            name = identity.decode("ascii")
        except UnicodeDecodeError:
            return None
        return self._psk if name in self.peers else None

    def _connected(self, proto: _LinkProtocol) -> None:
        """A connection to a known peer: it gets a heartbeat now and every
        interval."""
        self._conns.add(proto)
        if self.member is not None:
            assert proto.peer is not None
            self.member.disconnected(proto.peer, False)
            for frame in self._beat_frames():
                proto.send(frame)

    def _closed(self, proto: _LinkProtocol) -> None:
        """A connection closed: with no other one open to its peer, the
        member may take a silence of that peer for its death (a killed
        process resets its connections; core rule 5)."""
        peer = proto.peer
        if peer is None or self.member is None or peer not in self.peers:
            return
        if not any(c.peer == peer for c in self._open):
            self.member.disconnected(peer, True, self.reactor.seconds())

    def _received(self, beat: Any, pid: int) -> None:
        assert self.member is not None
        if beat.sender not in self.peers:
            raise PoolError(f"{beat.sender!r} is not a peer")
        change = self.member.receive(beat, self.reactor.seconds())
        self.pids[beat.sender] = pid
        self._links()
        if change is not None:
            self._changed(change)

    def _schedule_probe(self) -> None:
        self._probe_due = self.reactor.seconds() + LAG_PROBE_INTERVAL
        self._probe = self.reactor.callLater(LAG_PROBE_INTERVAL, self._probe_fired)

    def _probe_fired(self) -> None:
        self._probe = None
        self._observe_lag()
        self._schedule_probe()

    def _observe_lag(self) -> None:
        """Tell the member how late the probe is now (it was due at
        ``_probe_due``): called by the probe, and before every liveness
        judgement, which may run first after a stall (another timer, or a
        frame read in the same turn as the stall)."""
        due = self._probe_due
        if due is None or self.member is None:
            return
        now = self.reactor.seconds()
        late = now - due
        if late <= 0:
            return
        self.member.lagged(late, now)
        if late > self.lag_max:
            self.lag_max = late
        if late >= LAG_WARN:
            self._stall_at = now
        if late >= LAG_WARN and (
            self._lag_logged is None or now - self._lag_logged >= LAG_LOG_EVERY
        ):
            self._lag_logged = now
            log.warn(
                "pool: this instance's event loop ran {late:.1f}s late; peers' heartbeat"
                " deadlines are extended by it",
                late=late,
            )

    def stalled(self) -> bool:
        """Whether this reactor is, or was less than a heartbeat interval
        ago, at least :data:`LAG_WARN` behind: a connection's silence
        measured now may be frames not read yet."""
        self._observe_lag()
        at = self._stall_at
        return at is not None and self.reactor.seconds() - at < HEARTBEAT_INTERVAL

    def _alive(self, peer: str) -> None:
        """A frame other than a heartbeat from ``peer``: it is live."""
        assert self.member is not None
        self.member.heard_from(peer, self.reactor.seconds())

    def _beat(self) -> None:
        assert self.member is not None
        self._observe_lag()
        change = self.member.tick(self.reactor.seconds())
        self._links()
        if change is not None:
            self._changed(change)
        elif self._again:
            self._run_watchers(self._again)
        frames = self._beat_frames()
        for proto in list(self._conns):
            for frame in frames:
                proto.send(frame)

    def _beat_frames(self) -> list[bytes]:
        """The heartbeat, then the report of the members this one sees down."""
        assert self.member is not None
        down = self.member.down(self.reactor.seconds())
        return [
            encode_heartbeat(self.member.heartbeat(), self.pid),
            encode_frame(DOWN_REPORT, encode_down(down)),
        ]

    def _on_down(self, peer: str, fields: dict[str, object]) -> None:
        assert self.member is not None
        try:
            self.member.reported(peer, decode_down(fields))
        except PoolError as exc:
            raise WireError(str(exc)) from None

    def _links(self) -> None:
        assert self.member is not None
        self._observe_lag()
        live = self.member.live(self.reactor.seconds()) - {self.me}
        for peer in self.peers:
            if peer in live and peer not in self._up:
                self._up.add(peer)
                log.info("pool link to {peer} up", peer=peer)
                self.notify(f"pool_link_{peer}", "up")
                self._tell_link(peer, True)
            elif peer not in live and peer in self._up:
                self._up.discard(peer)
                last = self.member.heard(peer)
                cut = self.member.cut_since(peer)
                log.warn(
                    "pool link to {peer} down: no heartbeat for {age:.1f}s{closed}"
                    " (the last arrived at {last:.3f}; own loop lag allowed {grace:.1f}s)",
                    peer=peer,
                    closed=""
                    if cut is None
                    else f", its connections closed {self.reactor.seconds() - cut:.1f}s ago",
                    age=self.reactor.seconds() - last if last is not None else DOWN_AFTER,
                    last=last if last is not None else 0.0,
                    grace=self.member.grace(peer),
                )
                self.notify(f"pool_link_{peer}", "down")
                self._tell_link(peer, False)

    def _tell_link(self, peer: str, up: bool) -> None:
        for listener in self._link_listeners:
            try:
                listener(peer, up)
            except Exception:
                log.failure("pool link listener failed")

    def _changed(self, change: Change) -> None:
        assert self.member is not None and self.member.map is not None
        slot_map = self.member.map
        mine = slot_map.describe(self.me)
        count = sum(1 for o in slot_map.owners if o == self.me)
        released = sum(1 for o in slot_map.owners if o is None)
        log.info(
            "pool map {epoch}/{author}/{incarnation}: {reason}{down}; {me} owns {count} slots"
            " ({slots}), {released} being handed over",
            epoch=change.key.epoch,
            author=change.key.author,
            incarnation=change.key.incarnation,
            reason=change.reason.value,
            down=f" ({','.join(change.down)})" if change.down else "",
            me=self.me,
            count=count,
            slots=mine,
            released=released,
        )
        if change.reason is Reason.TAKEOVER:
            self.notify("pool", f"takeover {','.join(change.down)}")
        elif change.reason is Reason.HAND_BACK and not self._handing_back:
            self._handing_back = True
            self.notify("pool", "hand-back start")
        elif change.reason is Reason.FORMED:
            self.notify("pool", "formed")
        if self._handing_back and released == 0 and change.reason is Reason.HAND_BACK:
            self._handing_back = False
            self.notify("pool", "hand-back done")
        self._run_watchers(self._watchers)


@attrs.frozen
class ClientSlots:
    """The slot owners as the client listener sees them
    (:class:`cryptify.crs.attach.core.SlotOwners`): a slot whose owner is
    late (:meth:`PoolLink.late`) has no owner for the moment, so its attach
    is answered ``unavailable`` (try again here shortly) rather than
    ``moved`` to an instance that may be dead -- a move there costs the
    client a failed connect and a doubled backoff, and the takeover, if it
    comes, gives the slot to a live member."""

    link: PoolLink

    def owner(self, slot: int) -> str | None:
        owner = self.link.owner(slot)
        if owner is not None and owner != self.link.me and self.link.late(owner):
            return None
        return owner

    def mine(self, slot: int) -> bool:
        return self.link.mine(slot)

    def standby(self, slot: int) -> str | None:
        return self.link.standby(slot)

    def address(self, host: str) -> str:
        return self.link.address(host)


#: The reason attached clients of a slot that moved away are given.
MOVED_AWAY = "slot moved to another pool instance"


def client_mover(
    registry: AttachRegistry, link: PoolLink, busy: Callable[[str], bool]
) -> Callable[[], bool]:
    """A watcher that disconnects (``disconnected``, reason
    :data:`MOVED_AWAY`) every attached client whose slot ``link`` no longer
    claims, unless ``busy(uri)`` (in a call): those stay until their call
    ends, and the watcher asks to run again.  A disconnected client
    attaches again and is moved to the owner (or told to retry while the
    slot is being handed over)."""

    def move() -> bool:
        away = [a for a in registry.matching() if not link.mine(slot_of(a.uri))]
        idle = [a for a in away if not busy(a.uri)]
        if idle:
            count = registry.disconnect(idle, MOVED_AWAY)
            log.info(
                "pool: {count} clients of slots now served elsewhere told to move",
                count=count,
            )
        return len(idle) < len(away)

    return move


__all__ = [
    "IDLE_TIMEOUT",
    "INBOUND_PER_PEER",
    "INCARNATION_FILE",
    "ClientSlots",
    "PoolLink",
    "client_mover",
    "next_incarnation",
    "pool_psk",
]
