"""The CRS media relay's core: relay sessions, latching, counters, expiry.

Sans-IO: the core knows no sockets and no clock.  It is fed datagrams with
their source address and the current time, and answers where to send what
(or why not); control operations (add, remove, heartbeat, list, reclaim)
and the periodic :meth:`RelayCore.expire` sweep take ``now`` too.  The
adapters in :mod:`cryptify.crs.relay.wiring` feed it from a UDP socket, an AMP
connection and the reactor's clock.

Latching rule (``docs/relay.md`` explains why it is safe):

1. A leg's address is unknown until a packet carrying the leg's tag
   arrives; its source address is then *latched*.  Nothing is ever sent to
   a leg that has not latched.
2. The relay sends a leg at most :data:`CREDIT_FACTOR` times the bytes
   that address has itself sent with the leg's tag (a byte *credit*,
   capped at :data:`CREDIT_CAP`), so a forged source address cannot turn
   the relay into more than a weak reflector (no amplification beyond
   twofold), and a flooding party cannot flood its peer beyond what the
   peer sends.
3. A packet with the leg's tag from another address moves the latch (NAT
   rebinding) only once the latched address has been silent for
   ``rebind_after`` seconds; the new address starts with no credit.  While
   the leg's own address keeps talking, another address cannot take it.

A leg may instead be *bridged* to another operator's relay
(:meth:`RelayCore.bridge`, for calls across operators, docs/interworking.md):
its destination is that relay's address as the CRS gave it (after
``addr-map``), every packet sent to it carries that relay's tag for the
leg there in place of this leg's own, and it needs no credit (the two
relays would otherwise each wait for the other to send first); packets
from it still latch and are checked like any leg's.
"""

from __future__ import annotations

import builtins
import enum
import os
from collections.abc import Callable, Hashable, Iterable
from typing import Protocol

import attrs

from cryptify.protocols.relay_packet import MAX_PACKET, MIN_PACKET, TAG_SIZE

#: Seconds without media on both legs after which a session is expired.
IDLE_TIMEOUT = 60.0
#: Seconds a session outlives the silence (or disconnection) of its CRS.
OWNER_GRACE = 60.0
#: Seconds the latched address must have been silent before another
#: address with the leg's tag may take its place (NAT rebinding).
REBIND_AFTER = 1.0
#: Bytes of credit a leg earns per byte it sends (see rule 2).
CREDIT_FACTOR = 2
#: Most bytes the relay may owe a leg (about 8 s of 20 ms G.711 SRTP).
CREDIT_CAP = 65536

Address = Hashable


class Drop(enum.Enum):
    """Why a datagram was not forwarded (and which counter it went to)."""

    TOO_SHORT = "too short"
    TOO_LONG = "too long"
    UNKNOWN_TAG = "unknown tag"
    FOREIGN_SOURCE = "source is not the leg's latched address"
    PEER_NOT_LATCHED = "other leg not latched yet"
    PEER_NO_CREDIT = "other leg has not sent enough to be owed this packet"

    @property
    def counter(self) -> str:
        """The ``show relay`` counter this drop is counted in."""
        if self is Drop.TOO_SHORT:
            return "ERRTOSHORT"
        if self is Drop.TOO_LONG:
            return "ERRTOLONG"
        return "ERRNODEST"


@attrs.define
class RelayCounters:
    """The relay's statistics, as ``crs-cli show relay`` prints them.

    RX          datagrams received on the media port
    TXB         media packets sent to a leg
    TXERROR     packets the kernel refused to send
    ERRNODEST   datagrams with no destination: unknown tag, a source that is
                not the leg's, or a peer not latched or owed nothing
    ERRTOSHORT  datagrams shorter than a tag and an RTP header
    ERRTOLONG   datagrams longer than the largest media packet relayed
    ENTRIES     relay sessions in the table (see :meth:`as_dict`)
    """

    rx: int = 0
    txb: int = 0
    txerror: int = 0
    errnodest: int = 0
    errtoshort: int = 0
    errtolong: int = 0

    def as_dict(self, entries: int) -> dict[str, int]:
        return {
            "RX": self.rx,
            "TXB": self.txb,
            "TXERROR": self.txerror,
            "ERRNODEST": self.errnodest,
            "ERRTOSHORT": self.errtoshort,
            "ERRTOLONG": self.errtolong,
            "ENTRIES": entries,
        }


@attrs.define(eq=False)
class Leg:
    """One party's side of a relay session."""

    tag: bytes
    session: RelaySession
    #: Latched source address (None until the first packet with the tag).
    source: Address | None = None
    #: Where packets for this leg go: ``source`` after addr-map.
    dest: Address | None = None
    #: Bytes the relay may still send to ``dest``.
    credit: int = 0
    #: When ``source`` last sent a packet with the tag.
    seen: float = 0.0
    packets: int = 0
    #: Bytes of the datagrams counted in ``packets``.
    bytes: int = 0
    rebinds: int = 0
    #: Bridged to another relay: the tag its packets carry there (the
    #: builtin type: ``bytes`` above is the byte counter).
    bridge: builtins.bytes | None = None
    #: The kernel path forwards this leg's packets (see :class:`Offload`).
    kernel: bool = False
    peer: Leg = attrs.field(init=False)

    def describe(self) -> dict[str, object]:
        return {
            "latched": self.source is not None,
            "packets": self.packets,
            "bytes": self.bytes,
            "rebinds": self.rebinds,
        }


@attrs.define(eq=False)
class Link:
    """One control connection of a CRS (the owner of its sessions)."""

    ident: int
    server: str
    heard: float
    closed: bool = False


@attrs.define(eq=False)
class RelaySession:
    """Two legs, the CRS link that owns them, and a label for the logs."""

    ident: int
    owner: Link
    created: float
    label: str = ""
    a: Leg = attrs.field(init=False)
    b: Leg = attrs.field(init=False)

    def last_activity(self) -> float:
        return max(self.created, self.a.seen, self.b.seen)

    def describe(self) -> dict[str, object]:
        return {
            "session": self.ident,
            "label": self.label,
            "server": self.owner.server,
            "created": self.created,
            "a": self.a.describe(),
            "b": self.b.describe(),
        }


@attrs.define
class Expired:
    """A session the sweep removed, and why."""

    session: RelaySession
    reason: str


def _same(address: str) -> str:
    return address


class Offload(Protocol):
    """A forwarding path outside the core that applies the core's rules to
    the packets of sessions whose legs have both latched (the kernel path,
    :mod:`cryptify.crs.relay.kernel`).  The core stays the authority: it
    *pushes* a session's state once both legs latched (and after every
    change it makes to it), *pulls* the path's counters, credit and
    last-seen times before it decides anything about such a session, and
    *withdraws* it when it ends.  Packets the path does not take (unknown
    tags, other sources, sizes out of range) reach the core as before."""

    def push(self, session: RelaySession, now: float) -> bool:
        """Take over the session's forwarding; False when it cannot."""

    def pull(self, session: RelaySession, now: float) -> None:
        """Update the legs' packets, bytes, credit and ``seen`` from the path."""

    def withdraw(self, session: RelaySession) -> None:
        """Stop forwarding for the session."""

    def counters(self) -> dict[str, int]:
        """Datagrams the path counted: RX, TXB, ERRNODEST, TXERROR."""


@attrs.define
class RelayCore:
    """Relay sessions and the forwarding decision for every datagram.

    ``map_address`` is crs.conf's ``addr-map`` (applied to the host of a
    latched ``(host, port)`` address to give the address media is sent
    to); an adapter whose addresses are of another kind sets ``resolve``
    (source address -> destination) instead.  ``random`` gives the tags
    and session numbers.
    """

    idle_timeout: float = IDLE_TIMEOUT
    owner_grace: float = OWNER_GRACE
    rebind_after: float = REBIND_AFTER
    credit_cap: int = CREDIT_CAP
    map_address: Callable[[str], str] = _same
    random: Callable[[int], bytes] = os.urandom
    resolve: Callable[[Address], Address] | None = None
    #: The source address of kind this adapter uses, from a host and port
    #: (a bridged leg's destination is made from it).
    address_of: Callable[[str, int], Address] = lambda host, port: (host, port)
    #: Set by :meth:`route` for the packet it routed: the tag that goes in
    #: front of it (a bridged destination), else None.
    out_tag: bytes | None = None
    #: The kernel path, where it is loaded.
    offload: Offload | None = None
    counters: RelayCounters = attrs.Factory(RelayCounters)
    sessions: dict[int, RelaySession] = attrs.Factory(dict)
    _legs: dict[bytes, Leg] = attrs.Factory(dict)
    _links: dict[int, Link] = attrs.Factory(dict)
    _next_link: int = 1

    # -- media -------------------------------------------------------------

    def packet(self, datagram: bytes, source: Address, now: float) -> tuple[Address, bytes] | Drop:
        """Decide what to do with one datagram: (destination, bytes) or a Drop."""
        dest = self.route(datagram[:TAG_SIZE], len(datagram), source, now)
        if dest.__class__ is Drop:
            return dest
        if self.out_tag is not None:
            return dest, self.out_tag + datagram[TAG_SIZE:]
        return dest, datagram[TAG_SIZE:]

    def route(self, tag: bytes, size: int, source: Address, now: float) -> Address | Drop:
        """The forwarding decision for a datagram of ``size`` bytes starting
        with ``tag``: where its SRTP packet (``size - TAG_SIZE`` bytes after
        the tag) goes, or why it is dropped.  Every datagram is counted."""
        counters = self.counters
        counters.rx += 1
        if size < MIN_PACKET:
            counters.errtoshort += 1
            return Drop.TOO_SHORT
        if size > MAX_PACKET:
            counters.errtolong += 1
            return Drop.TOO_LONG
        leg = self._legs.get(tag)
        if leg is None:
            counters.errnodest += 1
            return Drop.UNKNOWN_TAG
        if leg.kernel or (
            self.offload is not None
            and source != leg.source
            and leg.peer.source is not None
            # a bridged leg's packets need a tag in front: userspace only
            and leg.bridge is None
            and leg.peer.bridge is None
        ):
            self.out_tag = None
            return self._route_offloaded(leg, size, source, now)
        if source != leg.source and not self._latch(leg, source, now):
            counters.errnodest += 1
            return Drop.FOREIGN_SOURCE
        # The same rules as _decide, inline: this is the per-packet path.
        leg.seen = now
        leg.packets += 1
        leg.bytes += size
        credit = leg.credit + size * CREDIT_FACTOR
        leg.credit = credit if credit < self.credit_cap else self.credit_cap
        peer = leg.peer
        dest = peer.dest
        if dest is None:
            counters.errnodest += 1
            return Drop.PEER_NOT_LATCHED
        size -= TAG_SIZE
        bridge = peer.bridge
        if bridge is None:
            if peer.credit < size:
                counters.errnodest += 1
                return Drop.PEER_NO_CREDIT
            peer.credit -= size
        self.out_tag = bridge
        return dest

    def _route_offloaded(self, leg: Leg, size: int, source: Address, now: float) -> Address | Drop:
        """A packet of a session the kernel path forwards (or may forward
        once this packet latched its second leg): pull the path's view,
        decide, and push the result back."""
        offload = self.offload
        assert offload is not None
        session = leg.session
        if leg.kernel:
            if source != leg.source and now - leg.seen < self.rebind_after:
                # Refused whatever the kernel saw since: seen only grows.
                self.counters.errnodest += 1
                return Drop.FOREIGN_SOURCE
            offload.pull(session, now)
        result = self._decide(leg, size, source, now)
        if leg.source is not None and leg.peer.source is not None:
            session.a.kernel = session.b.kernel = offload.push(session, now)
        return result

    def _decide(self, leg: Leg, size: int, source: Address, now: float) -> Address | Drop:
        counters = self.counters
        if source != leg.source and not self._latch(leg, source, now):
            counters.errnodest += 1
            return Drop.FOREIGN_SOURCE
        leg.seen = now
        leg.packets += 1
        leg.bytes += size
        credit = leg.credit + size * CREDIT_FACTOR
        leg.credit = credit if credit < self.credit_cap else self.credit_cap
        peer = leg.peer
        dest = peer.dest
        if dest is None:
            counters.errnodest += 1
            return Drop.PEER_NOT_LATCHED
        size -= TAG_SIZE
        if peer.credit < size:
            counters.errnodest += 1
            return Drop.PEER_NO_CREDIT
        peer.credit -= size
        return dest

    def sync(self, now: float) -> None:
        """Pull the kernel path's view of every session it forwards."""
        if self.offload is not None:
            for session in self.sessions.values():
                if session.a.kernel:
                    self.offload.pull(session, now)

    def _latch(self, leg: Leg, source: Address, now: float) -> bool:
        """Latch a leg's first address, or move it after the old one fell silent."""
        if leg.source is not None:
            if now - leg.seen < self.rebind_after:
                return False
            leg.rebinds += 1
        leg.source = source
        if leg.bridge is None:
            leg.dest = self._destination(source)
        leg.credit = 0
        return True

    def _destination(self, source: Address) -> Address:
        if self.resolve is not None:
            return self.resolve(source)
        if isinstance(source, tuple) and source and isinstance(source[0], str):
            return (self.map_address(source[0]), *source[1:])
        return source

    # -- control -----------------------------------------------------------

    def open_link(self, server: str, now: float) -> Link:
        """A CRS connected (``server`` may be refined by its first command)."""
        link = Link(self._next_link, server, now)
        self._next_link += 1
        self._links[link.ident] = link
        return link

    def heard(self, link: Link, server: str, now: float) -> None:
        """A command (a poll, an add ...) arrived from ``server`` on ``link``."""
        link.server = server
        link.heard = now

    def close_link(self, link: Link, now: float) -> None:
        """The CRS's connection closed; its sessions now live on grace."""
        link.closed = True
        link.heard = min(link.heard, now)
        if not any(s.owner is link for s in self.sessions.values()):
            self._links.pop(link.ident, None)

    def add(self, link: Link, now: float, label: str = "") -> RelaySession:
        """Create a relay session owned by ``link`` with two fresh tags."""
        ident = self._fresh_id()
        session = RelaySession(ident, link, now, label)
        session.a = Leg(self._fresh_tag(), session)
        session.b = Leg(self._fresh_tag(), session)
        session.a.peer = session.b
        session.b.peer = session.a
        self.sessions[ident] = session
        self._legs[session.a.tag] = session.a
        self._legs[session.b.tag] = session.b
        return session

    def bridge(self, ident: int, leg: str, host: str, port: int, tag: bytes) -> bool:
        """Bridge leg ``a`` or ``b`` of session ``ident`` to another relay at
        ``host``:``port`` (``addr-map`` applies), whose leg there has ``tag``;
        False when there is no such session (or leg, or a tag of another size)."""
        session = self.sessions.get(ident)
        if session is None or leg not in ("a", "b") or len(tag) != TAG_SIZE:
            return False
        target = session.a if leg == "a" else session.b
        if session.a.kernel and self.offload is not None:
            # the kernel path cannot put the other relay's tag in front
            self.offload.withdraw(session)
            session.a.kernel = session.b.kernel = False
        target.bridge = tag
        target.dest = self._destination(self.address_of(host, port))
        return True

    def remove(self, ident: int) -> RelaySession | None:
        """Delete a session; None when there is no such session."""
        session = self.sessions.pop(ident, None)
        if session is not None:
            if session.a.kernel and self.offload is not None:
                self.offload.withdraw(session)
                session.a.kernel = session.b.kernel = False
            del self._legs[session.a.tag]
            del self._legs[session.b.tag]
            owner = session.owner
            if owner.closed and not any(s.owner is owner for s in self.sessions.values()):
                self._links.pop(owner.ident, None)
        return session

    def owned_by(self, server: str) -> list[RelaySession]:
        """Live sessions created or reclaimed by the CRS named ``server``."""
        return [s for s in self.sessions.values() if s.owner.server == server]

    def reclaim(self, link: Link, idents: Iterable[int], now: float) -> list[int]:
        """Make ``link`` the owner of the listed live sessions; return those taken."""
        taken = []
        for ident in idents:
            session = self.sessions.get(ident)
            if session is not None:
                old, session.owner = session.owner, link
                taken.append(ident)
                if old.closed and not any(s.owner is old for s in self.sessions.values()):
                    self._links.pop(old.ident, None)
        link.heard = now
        return taken

    def expire(self, now: float) -> list[Expired]:
        """Remove sessions idle too long or whose CRS has been gone too long."""
        expired = []
        self.sync(now)
        for session in list(self.sessions.values()):
            if now - session.owner.heard > self.owner_grace:
                reason = "CRS gone" if session.owner.closed else "CRS stopped polling"
            elif now - session.last_activity() > self.idle_timeout:
                reason = "inactivity"
            else:
                continue
            self.remove(session.ident)
            expired.append(Expired(session, reason))
        return expired

    @property
    def entries(self) -> int:
        return len(self.sessions)

    def stats(self) -> dict[str, int]:
        """The counters ``show relay`` prints, the kernel path's included."""
        stats = self.counters.as_dict(entries=len(self.sessions))
        if self.offload is not None:
            for name, value in self.offload.counters().items():
                stats[name] += value
        return stats

    def _fresh_tag(self) -> bytes:
        while True:
            tag = self.random(TAG_SIZE)
            if len(tag) == TAG_SIZE and tag not in self._legs:
                return tag

    def _fresh_id(self) -> int:
        while True:
            ident = int.from_bytes(self.random(6), "big")
            if ident and ident not in self.sessions:
                return ident
