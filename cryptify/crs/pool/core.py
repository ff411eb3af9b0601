"""Pool membership and slot ownership: the sans-IO core.

Each CRS instance of a pool runs one :class:`PoolMember`.  It knows no
sockets and no clock: the adapters (not built yet) feed it the
:class:`Heartbeat` each peer sends and call :meth:`PoolMember.tick` with
the current time; it answers with the heartbeat to send and with who owns
which slot.  The rules (``docs/pool.md`` explains why they are safe):

1. *Members* come from ``crs.conf``'s ``[POOL]`` (2 to :data:`MAX_MEMBERS`
   hosts, in configuration order).  A peer is *live* while the last frame
   it sent (a heartbeat or any other) is younger than :data:`DOWN_AFTER`
   plus this member's own *lag* since then (:meth:`PoolMember.lagged`: the
   longest time this member's event loop could not read, so that a peer is
   never declared down for frames that sat unread), whose last
   heartbeat is younger than :data:`BEATLESS_AT_MOST` plus that lag, and
   whose connections have not all been closed for :data:`CUT_DOWN_AFTER`
   plus that lag (a killed process resets them, and the link dials again
   every half second: a live peer is connected again well within it); a
   member always counts itself live.
2. A :class:`SlotMap` gives each of the :data:`~cryptify.crs.slots.SLOTS`
   slots an owner, or none while the slot is being handed over.  Each map
   carries a :class:`MapKey` (epoch, author, author's incarnation); keys are
   totally ordered and an author never issues two maps with one key.
3. A member *claims* exactly the slots its current map gives it.  On every
   heartbeat it receives, it adopts the peer's map if that map's key is
   higher than its own.  So two members that have each received the
   other's current map hold the same map, and no slot is claimed twice.
4. Only the *coordinator* writes maps: the first member in configuration
   order among those it sees live.  Each new map has the next epoch.
5. *Takeover*: slots whose owner is not live go at once, in one new map,
   to their :meth:`PoolConfig.target` owner among the live members -- once
   that owner's death is *confirmed*: every connection to it is closed
   (:meth:`PoolMember.disconnected`; a killed process resets them), or
   another live member reports it down too (:meth:`PoolMember.reported`), or no other
   member is live to ask.  A peer whose connection stays open and that
   only this member misses is late, not dead: its slots stay put (and
   no hand-back step is written meanwhile).
6. *Hand-back*: a slot that one live member owns and another should own
   moves in two maps: first released (no owner), then given.  Each step
   waits until every live peer reports holding the coordinator's current
   map (so the giver has let go before the taker claims) and
   :data:`TRICKLE_INTERVAL` since the last step; each step gives at most
   :data:`TRICKLE_SLOTS` slots and releases at most as many.
7. A member that has just started claims nothing until it has adopted a
   peer's map, or has waited :data:`JOIN_WAIT` and is its own coordinator.
8. A peer is *late* (:meth:`PoolMember.late`) when it is not live, every
   connection to it is closed, or its last frame is older than
   :data:`LATE_AFTER` plus this member's lag since: the attach of a URI
   it owns is answered ``unavailable`` (try again shortly) rather than
   ``moved`` to an address that may be dead.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from cryptify.config.crs_model import CrsConfig
from cryptify.crs.slots import SLOTS, slot_of, slot_ranges

SECOND = 1.0
#: How often a member sends its heartbeat (with its map) to each peer.
HEARTBEAT_INTERVAL = 1 * SECOND
#: A peer whose last heartbeat is this old is down (three missed beats).
DOWN_AFTER = 3 * HEARTBEAT_INTERVAL
#: Other frames keep a peer live without its heartbeats for at most this long
#: (a peer whose heartbeats stopped but whose other modules still send is not
#: live for ever: its map reports, which hand-backs wait for, would be stale).
BEATLESS_AT_MOST = 3 * DOWN_AFTER
#: A peer whose last frame is this old is *late* (rule 8): two missed
#: beats, one fewer than :data:`DOWN_AFTER` (a busy peer's beats often
#: come a little late; a dead one's connections are closed, which makes it
#: late at once).
LATE_AFTER = 2 * HEARTBEAT_INTERVAL
#: A peer whose every connection has been closed this long (none dialled
#: again meanwhile, no heartbeat) is down: its process is gone (rule 1).
CUT_DOWN_AFTER = 1 * SECOND
#: How long a starting member listens for the pool's map before writing one.
JOIN_WAIT = DOWN_AFTER
#: Least time between two hand-back steps.
TRICKLE_INTERVAL = 1 * SECOND
#: Most slots a hand-back step gives (and most it releases).
TRICKLE_SLOTS = 256
#: Fewest and most members of a pool.
MIN_MEMBERS = 2
MAX_MEMBERS = 64


class PoolError(ValueError):
    """A pool configuration or a peer's heartbeat that the core refuses."""


@attrs.frozen
class Member:
    """One instance of the pool: its ``host`` name and the ``ip`` clients
    (and ``moved``) use."""

    name: str
    address: str


@attrs.frozen
class PoolConfig:
    """The pool's members in ``crs.conf`` order, and the slot split over
    them."""

    members: tuple[Member, ...]

    def __attrs_post_init__(self) -> None:
        count = len(self.members)
        if not MIN_MEMBERS <= count <= MAX_MEMBERS:
            raise PoolError(f"a pool has {MIN_MEMBERS} to {MAX_MEMBERS} members, not {count}")
        names = [m.name for m in self.members]
        if len(set(names)) != count:
            raise PoolError("pool member names must be distinct")

    @classmethod
    def from_crs(cls, crs: CrsConfig) -> PoolConfig:
        """The pool of ``crs.conf``'s ``[POOL]`` section."""
        return cls(tuple(Member(h.name, h.ip) for h in crs.pool.hosts))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise PoolError(f"{name!r} is not a member of the pool")

    def home_range(self, name: str) -> tuple[int, int]:
        """A member's home slots (first, last): equal consecutive ranges in
        configuration order, as :class:`cryptify.crs.slots.SlotMap`."""
        index = self.names.index(name)
        count = len(self.members)
        return index * SLOTS // count, (index + 1) * SLOTS // count - 1

    def target(self, live: Iterable[str]) -> tuple[str, ...]:
        """Who should own each slot when ``live`` are up.

        A live member owns its home range; the home range of a member that
        is down is cut into equal consecutive parts, one per live member in
        configuration order.  So a takeover moves only the dead member's
        slots, and its return moves only them back.
        """
        up = [n for n in self.names if n in set(live)]
        if not up:
            raise PoolError("no live member to own the slots")
        owners: list[str] = []
        for name in self.names:
            first, last = self.home_range(name)
            size = last - first + 1
            if name in up:
                owners.extend([name] * size)
            else:
                owners.extend(up[i * len(up) // size] for i in range(size))
        return tuple(owners)


@attrs.frozen(order=True)
class MapKey:
    """A map's place in the total order: epoch, then author name, then the
    author's incarnation (a number that grows across its restarts)."""

    epoch: int
    author: str
    incarnation: int


@attrs.frozen
class SlotMap:
    """Who owns each slot (``None``: being handed over), under a key."""

    key: MapKey
    owners: tuple[str | None, ...] = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if len(self.owners) != SLOTS:
            raise PoolError(f"a slot map has {SLOTS} slots, not {len(self.owners)}")

    def owner(self, slot: int) -> str | None:
        if not 0 <= slot < SLOTS:
            raise PoolError(f"slot {slot} out of range")
        return self.owners[slot]

    def slots_of(self, name: str) -> list[tuple[int, int]]:
        """The (first, last) ranges of slots ``name`` owns, in order."""
        return slot_ranges(s for s, owner in enumerate(self.owners) if owner == name)

    def describe(self, name: str) -> str:
        """``name``'s slots as ``first-last,first-last`` (``-`` for none),
        for ``show system``'s SLOTS column."""
        text = ",".join(f"{a}-{b}" for a, b in self.slots_of(name))
        return text or "-"


@attrs.frozen
class Heartbeat:
    """What a member sends each peer every :data:`HEARTBEAT_INTERVAL`."""

    sender: str
    map: SlotMap | None
    #: The members the sender sees down (not live): a takeover's second
    #: opinion; None when the beat carries no report (on the wire the report
    #: is a frame of its own, :meth:`PoolMember.reported`).
    down: frozenset[str] | None = None


class Reason(enum.Enum):
    """Why a member's map changed (for crs.log and ``notify.sh``)."""

    FORMED = "first map of the pool"
    ADOPTED = "adopted a peer's newer map"
    TAKEOVER = "took over the slots of members that are down"
    HAND_BACK = "hand-back step"


@attrs.frozen
class Change:
    """A member's map changed: the new key, why, and (for a takeover) whose
    slots were taken."""

    key: MapKey
    reason: Reason
    down: tuple[str, ...] = ()


@attrs.define
class PoolMember:
    """One instance's view of the pool (see the module rules)."""

    config: PoolConfig
    me: str
    incarnation: int
    started: float
    map: SlotMap | None = None
    _heard: dict[str, float] = attrs.field(factory=dict)
    #: Per peer: when its last heartbeat arrived.
    _beat_at: dict[str, float] = attrs.field(factory=dict)
    #: Per peer: the longest own loop lag since the peer was last heard.
    _grace: dict[str, float] = attrs.field(factory=dict)
    _reported: dict[str, MapKey | None] = attrs.field(factory=dict)
    _next_step: float = 0.0
    _targets: dict[frozenset[str], tuple[str, ...]] = attrs.field(factory=dict)
    #: Per peer: the members its last heartbeat reported down.
    _seen_down: dict[str, frozenset[str]] = attrs.field(factory=dict)
    #: Peers with no open connection (told by the link, rules 1 and 5),
    #: and since when.
    _cut: dict[str, float] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.config.member(self.me)

    # -- inputs --------------------------------------------------------

    def receive(self, beat: Heartbeat, now: float) -> Change | None:
        """A peer's heartbeat; adopts its map if newer (rule 3).

        @raise PoolError: for a sender that is not a peer or a map naming
            an owner outside the pool; the member's state is unchanged.
        """
        if beat.sender == self.me:
            raise PoolError(f"heartbeat from another instance named {self.me!r}")
        self.config.member(beat.sender)
        peer_map = beat.map
        if peer_map is not None:
            known = set(self.config.names)
            strangers = {o for o in set(peer_map.owners) if o is not None and o not in known}
            if strangers or peer_map.key.author not in known:
                raise PoolError(f"map from {beat.sender!r} names members outside the pool")
        if beat.down is not None:
            self._check_report(beat.sender, beat.down)
        self.heard_from(beat.sender, now)
        self._beat_at[beat.sender] = now
        self._reported[beat.sender] = None if peer_map is None else peer_map.key
        if beat.down is not None:
            self._seen_down[beat.sender] = beat.down
        self._cut.pop(beat.sender, None)
        if peer_map is not None and (self.map is None or peer_map.key > self.map.key):
            self.map = peer_map
            return Change(peer_map.key, Reason.ADOPTED)
        return None

    def heard_from(self, peer: str, now: float) -> None:
        """A frame from ``peer`` arrived (a heartbeat, or any frame of the
        link once the peer has named itself): it is live at ``now``."""
        self._heard[peer] = max(now, self._heard.get(peer, now))
        self._grace.pop(peer, None)

    def lagged(self, late: float, now: float) -> None:
        """This member's event loop is ``late`` seconds behind at ``now`` (a
        timer due at ``now - late`` has not run before): frames may have
        waited unread since then, so each peer's deadline is extended by the
        longest such lag since the peer was last heard (rule 1; only the part
        of it after that).  A dead peer is thus declared down
        :data:`DOWN_AFTER` after its last frame when this member's loop keeps
        time, and at most that plus its own worst stall when not."""
        for peer, at in self._heard.items():
            lag = min(late, now - at)
            if lag > self._grace.get(peer, 0.0):
                self._grace[peer] = lag

    def reported(self, peer: str, down: frozenset[str]) -> None:
        """``peer`` sees the members ``down`` down now (its latest report
        replaces the one before).

        @raise PoolError: for a sender that is not a peer or a name outside
            the pool; nothing is recorded.
        """
        self._check_report(peer, down)
        self._seen_down[peer] = down

    def _check_report(self, peer: str, down: frozenset[str]) -> None:
        if peer == self.me:
            raise PoolError(f"report from another instance named {self.me!r}")
        self.config.member(peer)
        if not down <= set(self.config.names):
            raise PoolError(f"{peer!r} reports members outside the pool down")

    def down(self, now: float) -> frozenset[str]:
        """The members this one sees down at ``now`` (its report)."""
        return frozenset(self.config.names) - self.live(now)

    def disconnected(self, peer: str, cut: bool, now: float | None = None) -> None:
        """The link has no open connection to ``peer`` since ``now`` (``cut``;
        without ``now``, since its last frame), or has one again: a peer
        whose connections were all closed is down :data:`CUT_DOWN_AFTER`
        later (rule 1) and confirmed down once it is not live (rule 5); a
        heartbeat from it clears this."""
        self.config.member(peer)
        if cut:
            if peer not in self._cut:
                since = now if now is not None else self._heard.get(peer, 0.0)
                self._cut[peer] = since
        else:
            self._cut.pop(peer, None)

    def cut_since(self, peer: str) -> float | None:
        """Since when ``peer`` has had no open connection (None: it has one)."""
        return self._cut.get(peer)

    def tick(self, now: float) -> Change | None:
        """Let time pass: the coordinator writes the next map if one is due
        (rules 4 to 7)."""
        live = self.live(now)
        if self.coordinator(now) != self.me:
            return None
        target = self._target(live)
        if self.map is None:
            if now - self.started < JOIN_WAIT:
                return None
            return self._write(list(target), Reason.FORMED)
        owners = list(self.map.owners)
        missing = {o for o in owners if o is not None and o not in live}
        down = sorted(o for o in missing if self.confirmed(o, live))
        if down:
            for slot, owner in enumerate(owners):
                if owner in down:
                    owners[slot] = target[slot]
            return self._write(owners, Reason.TAKEOVER, tuple(down))
        if missing:
            return None  # late, not (yet) known dead: no takeover, no hand-back
        if now < self._next_step or not self._all_hold_mine(live):
            return None
        moved = False
        for slot, owner in enumerate(owners):
            if owner is None:
                owners[slot] = target[slot]
                moved = True
        released = 0
        for slot, owner in enumerate(self.map.owners):
            if released == TRICKLE_SLOTS:
                break
            if owner is not None and owner != target[slot]:
                owners[slot] = None
                released += 1
        if not moved and not released:
            return None
        self._next_step = now + TRICKLE_INTERVAL
        return self._write(owners, Reason.HAND_BACK)

    # -- outputs -------------------------------------------------------

    def heartbeat(self, now: float | None = None) -> Heartbeat:
        """The heartbeat to send every peer now (with the members this one
        sees down at ``now``, when given)."""
        return Heartbeat(self.me, self.map, None if now is None else self.down(now))

    def confirmed(self, peer: str, live: frozenset[str]) -> bool:
        """Whether ``peer``, not in ``live``, is known dead (rule 5): its
        connections are closed, another live member reports it down, or no
        other member is live to ask."""
        others = live - {self.me, peer}
        if peer in self._cut or not others:
            return True
        return any(peer in self._seen_down.get(p, frozenset()) for p in others)

    def late(self, peer: str, now: float) -> bool:
        """Whether ``peer`` is late (rule 8): not live, cut off (no open
        connection), or silent for more than :data:`LATE_AFTER` plus this
        member's lag since its last frame."""
        if peer == self.me:
            return False
        at = self._heard.get(peer)
        if at is None or peer in self._cut or peer not in self.live(now):
            return True
        return now - at > LATE_AFTER + self._grace.get(peer, 0.0)

    def live(self, now: float) -> frozenset[str]:
        """Members seen live: this one and every peer heard within
        :data:`DOWN_AFTER` plus this member's own lag since then."""
        grace, beats, cut = self._grace, self._beat_at, self._cut
        up = {
            n
            for n, at in self._heard.items()
            if now - at < DOWN_AFTER + grace.get(n, 0.0)
            and now - beats.get(n, at) < BEATLESS_AT_MOST + grace.get(n, 0.0)
            and (n not in cut or now - cut[n] < CUT_DOWN_AFTER + grace.get(n, 0.0))
        }
        return frozenset(up | {self.me})

    def heard(self, peer: str) -> float | None:
        """When ``peer``'s last frame arrived (None: never)."""
        return self._heard.get(peer)

    def grace(self, peer: str) -> float:
        """How much later than :data:`DOWN_AFTER` ``peer`` is declared down
        now: this member's longest loop lag since it was last heard."""
        return self._grace.get(peer, 0.0)

    def coordinator(self, now: float) -> str:
        """The first live member in configuration order."""
        live = self.live(now)
        return next(n for n in self.config.names if n in live)

    def claims(self, slot: int) -> bool:
        """Whether this member serves ``slot`` now."""
        return self.map is not None and self.map.owner(slot) == self.me

    def owner_of(self, uri: str) -> str | None:
        """The member that owns a URI's slot, or ``None`` if none does now
        (no map yet, or the slot is being handed over)."""
        return None if self.map is None else self.map.owner(slot_of(uri))

    def heir(self, slot: int, now: float) -> str | None:
        """The member that takes ``slot`` if this one dies while the others
        it sees live now stay up (rule 5's takeover target), or None with no
        other member live.  A hint for clients (``attached``'s standby)."""
        others = self.live(now) - {self.me}
        if not others:
            return None
        return self._target(others)[slot]

    def moved_to(self, uri: str) -> str | None:
        """Where ``moved`` sends a client of ``uri``: the owner's address,
        or ``None`` if this member owns the slot or no one does."""
        owner = self.owner_of(uri)
        if owner is None or owner == self.me:
            return None
        return self.config.member(owner).address

    # -- internals -----------------------------------------------------

    def _target(self, live: frozenset[str]) -> tuple[str, ...]:
        if live not in self._targets:
            self._targets[live] = self.config.target(live)
        return self._targets[live]

    def _all_hold_mine(self, live: frozenset[str]) -> bool:
        assert self.map is not None
        return all(self._reported.get(p) == self.map.key for p in live - {self.me})

    def _write(
        self, owners: list[str | None], reason: Reason, down: tuple[str, ...] = ()
    ) -> Change:
        epoch = 1 if self.map is None else self.map.key.epoch + 1
        self.map = SlotMap(MapKey(epoch, self.me, self.incarnation), tuple(owners))
        return Change(self.map.key, reason, down)
