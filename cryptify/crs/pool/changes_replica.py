"""Pool-wide operator changes, sans-IO: one instance's replica of the
change log (what it applied, its registers, its snapshot) and what it
owes each peer (see :mod:`~cryptify.crs.pool.changes_core` for the model
and :mod:`~cryptify.crs.pool.changes_snapshot` for compaction)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cryptify.crs.pool.changes_core import (
    AccountPlan,
    Change,
    Kind,
    Register,
    Verdict,
    check_origin,
)
from cryptify.crs.pool.changes_snapshot import Key, Snapshot, covered, fold, key_of
from cryptify.crs.pool.wire import WireError


class Replica:
    """One instance's change log in memory: high-water marks, the
    registers, the snapshot the log starts from, and the changes to hand
    to peers.

    ``snapshot`` is the durable log's snapshot (None: it has none) and
    ``records`` the changes after it, in order.
    """

    def __init__(
        self,
        name: str,
        log_id: int,
        records: Iterable[Change] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        self.name = name
        self.origin = check_origin(f"{name}:{log_id}")
        self.log: list[Change] = []
        self.encoded: dict[tuple[str, int], bytes] = {}
        self.hw: dict[str, int] = {}
        self.clock = 0
        #: The snapshot the log starts from (what was folded), or None.
        self.snapshot: Snapshot | None = None
        #: Per key, the change that won so far (all changes applied).
        self.winners: dict[Key, Change] = {}
        self.accounts: dict[str, Register] = {}
        self.blacklist: dict[tuple[str, str], Register] = {}
        #: The blacklist registers by account: URI -> register.
        self._entries: dict[str, dict[str, Register]] = {}
        if snapshot is not None:
            for winner in snapshot.winners:
                self._win(winner)
            self.hw = dict(snapshot.base)
            self.clock = snapshot.clock
            self.snapshot = snapshot
        for change in records:
            if not covered(self.hw, change.id):
                self.commit(change)

    def make(self, kind: Kind, args: Mapping[str, str | bytes], now_ms: int) -> Change:
        """A new change of this instance (not yet committed)."""
        at = max(now_ms, self.clock + 1)
        seq = self.hw.get(self.origin, 0) + 1
        change = Change(self.origin, seq, at, dict(self.hw), kind, dict(args))
        # the encoding checks the arguments as a peer would
        Change.decode(change.encode())
        return change

    def verdict(self, change: Change) -> Verdict:
        have = self.hw.get(change.origin, 0)
        if change.seq <= have:
            return Verdict.DUPLICATE
        if change.seq != have + 1:
            return Verdict.WAIT
        if any(self.hw.get(o, 0) < s for o, s in change.deps.items()):
            return Verdict.WAIT
        return Verdict.APPLY

    def commit(self, change: Change) -> None:
        """Take a change whose verdict is APPLY (once it is in the durable log)."""
        if self.verdict(change) is not Verdict.APPLY:
            raise ValueError(f"change {change.id} is not next")
        self.log.append(change)
        self.encoded[change.id] = change.encode()
        self.hw[change.origin] = change.seq
        self.clock = max(self.clock, change.at)
        self._win(change)

    def _win(self, change: Change) -> bool:
        """Record ``change`` in its key's register; whether it won."""
        key = key_of(change)
        old = self.winners.get(key)
        if old is not None and old.stamp >= change.stamp:
            return False
        self.winners[key] = change
        if change.kind in (Kind.ACCOUNT_CREATE, Kind.ACCOUNT_DELETE):
            present = change.kind is Kind.ACCOUNT_CREATE
            secret = change.text("secret") if present else None
            self.accounts[change.text("account")] = Register(change.stamp, present, secret)
        elif change.kind in (Kind.BLACKLIST_ADD, Kind.BLACKLIST_REMOVE):
            account, uri = change.text("account"), change.text("uri")
            register = Register(change.stamp, change.kind is Kind.BLACKLIST_ADD)
            self.blacklist[(account, uri)] = register
            self._entries.setdefault(account, {})[uri] = register
        return True

    def account_plan(self, account: str) -> AccountPlan:
        reg = self.accounts.get(account)
        listed, unlisted = set(), set()
        for uri, entry in self._entries.get(account, {}).items():
            if entry.present and (reg is None or entry.stamp > reg.stamp):
                listed.add(uri)
            else:
                unlisted.add(uri)
        return AccountPlan(
            account,
            None if reg is None else reg.present,
            None if reg is None else reg.secret,
            frozenset(listed),
            frozenset(unlisted),
        )

    def missing(self, marks: Mapping[str, int]) -> list[Change]:
        """The changes of the log beyond ``marks``, in log order."""
        return [c for c in self.log if c.seq > marks.get(c.origin, 0)]

    def covers(self, marks: Mapping[str, int], change_id: tuple[str, int]) -> bool:
        return covered(marks, change_id)

    @property
    def base(self) -> Mapping[str, int]:
        """The marks the snapshot reaches (empty without one)."""
        return {} if self.snapshot is None else self.snapshot.base

    # -- compaction --------------------------------------------------------

    def compact(self, floor: Mapping[str, int]) -> Snapshot | None:
        """The snapshot folding the changes of the log that ``floor`` (what
        every member has applied) covers; None when there are none.  The
        replica is unchanged until :meth:`fold` (once it is durable)."""
        base = dict(self.base)
        for origin, seq in self.hw.items():
            base[origin] = max(base.get(origin, 0), min(seq, floor.get(origin, 0)))
        folded = [c for c in self.log if covered(base, c.id)]
        if not folded:
            return None
        old = {} if self.snapshot is None else self.snapshot.by_key()
        clock = max([c.at for c in folded] + [0 if self.snapshot is None else self.snapshot.clock])
        return Snapshot.of(base, clock, fold(old, folded))

    def after(self, snapshot: Snapshot) -> list[Change]:
        """The changes of the log that ``snapshot`` does not cover, in order."""
        return [c for c in self.log if not covered(snapshot.base, c.id)]

    def fold(self, snapshot: Snapshot) -> None:
        """``snapshot`` (from :meth:`compact` or :meth:`merged`) is durable:
        the log keeps only what lies beyond it."""
        self.log = self.after(snapshot)
        self.encoded = {c.id: self.encoded[c.id] for c in self.log}
        self.snapshot = snapshot

    def merged(self, snapshot: Snapshot) -> Snapshot:
        """This replica's snapshot with a peer's ``snapshot`` merged in
        (what :meth:`install` makes of them; write it before)."""
        base = dict(self.base)
        for origin, seq in snapshot.base.items():
            base[origin] = max(base.get(origin, 0), seq)
        old = {} if self.snapshot is None else self.snapshot.by_key()
        clock = max(snapshot.clock, 0 if self.snapshot is None else self.snapshot.clock)
        return Snapshot.of(base, clock, fold(old, snapshot.winners))

    def lacks(self, snapshot: Snapshot) -> bool:
        """Whether ``snapshot`` covers changes not applied here."""
        return any(self.hw.get(o, 0) < s for o, s in snapshot.base.items())

    def install(self, snapshot: Snapshot) -> list[Change]:
        """Take a peer's ``snapshot`` (already durable, merged with this
        replica's own, see :meth:`merged`): the marks become the larger of
        each, every key keeps the higher stamp.  The changes whose effects
        are now due here (winners this replica had not applied), by stamp.

        :class:`WireError` if it claims changes of this replica's own log
        that were never made (another instance with the same log identity).
        """
        if snapshot.base.get(self.origin, 0) > self.hw.get(self.origin, 0):
            raise WireError(f"a snapshot claims changes of {self.origin} never made here")
        due = [c for c in snapshot.winners if not covered(self.hw, c.id) and self._win(c)]
        merged = self.merged(snapshot)
        for origin, seq in merged.base.items():
            self.hw[origin] = max(self.hw.get(origin, 0), seq)
        self.clock = max(self.clock, merged.clock)
        self.log = self.after(merged)
        self.encoded = {c.id: self.encoded[c.id] for c in self.log}
        self.snapshot = merged
        return due


class Peers:
    """Who has what: each peer's reported high-water marks and what has
    been sent to it since (sans-IO; the wiring sends and receives).

    - When a peer's link comes up, :meth:`up` (then send our marks).
    - When a peer's marks arrive, :meth:`marks`: what to send it.
    - Every resync interval, :meth:`resync`: what was sent but never
      confirmed is sent again (a frame lost with its connection).

    What is due to a peer is changes and, first, when the peer lacks some
    of what the log's snapshot folded, the snapshot.
    """

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.reported: dict[str, dict[str, int]] = {}
        self.sent: dict[str, dict[str, int]] = {}
        self.live: set[str] = set()

    def up(self, peer: str) -> None:
        self.live.add(peer)
        self.sent[peer] = dict(self.reported.get(peer, {}))

    def down(self, peer: str) -> None:
        self.live.discard(peer)
        self.sent.pop(peer, None)

    def _due(self, peer: str) -> list[Change | Snapshot]:
        sent = self.sent.setdefault(peer, dict(self.reported.get(peer, {})))
        due: list[Change | Snapshot] = []
        snapshot = self.replica.snapshot
        if snapshot is not None and any(sent.get(o, 0) < s for o, s in snapshot.base.items()):
            due.append(snapshot)
            for origin, seq in snapshot.base.items():
                sent[origin] = max(sent.get(origin, 0), seq)
        for change in self.replica.missing(sent):
            due.append(change)
            sent[change.origin] = max(sent.get(change.origin, 0), change.seq)
        return due

    def marks(
        self, peer: str, marks: Mapping[str, int], again: bool = False
    ) -> list[Change | Snapshot]:
        """A peer reported its marks; ``again`` when it asks for a resend
        (it had to drop a change it could not apply yet)."""
        reported = dict(marks)
        self.reported[peer] = reported
        sent = self.sent.setdefault(peer, {})
        if again:
            self.sent[peer] = dict(reported)
        else:
            for origin, seq in reported.items():
                sent[origin] = max(sent.get(origin, 0), seq)
        if peer not in self.live:
            return []
        return self._due(peer)

    def resync(self) -> dict[str, list[Change | Snapshot]]:
        due = {}
        for peer in sorted(self.live):
            self.sent[peer] = dict(self.reported.get(peer, {}))
            found = self._due(peer)
            if found:
                due[peer] = found
        return due

    def new(self) -> dict[str, list[Change | Snapshot]]:
        """A change was committed here: what to send each live peer now."""
        due = {}
        for peer in sorted(self.live):
            found = self._due(peer)
            if found:
                due[peer] = found
        return due

    def has(self, peer: str, change_id: tuple[str, int]) -> bool:
        return covered(self.reported.get(peer, {}), change_id)

    def floor(self, members: Iterable[str]) -> dict[str, int] | None:
        """What every one of ``members`` (the peers) and this instance has
        applied, as they last reported it; None while one of them has not
        reported since this instance started."""
        floor = dict(self.replica.hw)
        for peer in members:
            reported = self.reported.get(peer)
            if reported is None:
                return None
            floor = {o: min(s, reported.get(o, 0)) for o, s in floor.items()}
        return {o: s for o, s in floor.items() if s > 0}

    def foldable(self, floor: Mapping[str, int]) -> int:
        """How many changes of the log ``floor`` covers."""
        return sum(1 for c in self.replica.log if covered(floor, c.id))
