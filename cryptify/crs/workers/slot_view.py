"""The pool's slot view as a worker of a pool member follows it
(docs/workers.md, Pools; :mod:`cryptify.crs.workers.pool`): who owns each
slot, which members are late, their addresses.  :func:`slot_view` is the
parent's, :func:`decode_view` reads it back (anything else is a
:class:`ViewError`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from cryptify.crs.pool.wiring import PoolLink
from cryptify.crs.slots import SLOTS, slot_ranges

#: Longest map key, member name or address in a view.
MAX_WORD = 200
#: Most members in a view (a pool has 2 to 64).
MAX_MEMBERS = 64


class ViewError(ValueError):
    """What came is not a slot view."""


@attrs.frozen
class SlotView:
    """The pool as a worker follows it."""

    #: The map's key (``EPOCH/AUTHOR/INCARNATION``), ``""`` before any map.
    key: str
    #: This instance's name.
    me: str
    #: The owner of each slot (None: being handed over, or no map yet).
    owners: tuple[str | None, ...] = attrs.field(repr=False)
    #: The members whose frames are late (their slots have no owner for an attach).
    late: frozenset[str] = frozenset()
    addresses: Mapping[str, str] = attrs.field(factory=dict)
    #: Who would take each slot of this instance if it died (the attach's
    #: ``standby``), when the parent's pool link says (None: no standby).
    standby: tuple[str | None, ...] | None = attrs.field(default=None, repr=False)


#: A worker's view before the parent's first: no slot has an owner.
NO_VIEW = SlotView("", "", (None,) * SLOTS)


def map_key(link: PoolLink) -> str:
    """The key of ``link``'s current map (``""``: none yet)."""
    slot_map = None if link.member is None else link.member.map
    if slot_map is None:
        return ""
    key = slot_map.key
    return f"{key.epoch}/{key.author}/{key.incarnation}"


def _runs(names: Iterable[str | None]) -> list[list[object]]:
    """``[[FIRST, LAST, NAME-or-null], ...]`` of a name per slot."""
    runs: list[list[object]] = []
    for slot, name in enumerate(names):
        if runs and runs[-1][2] == name:
            runs[-1][1] = slot
        else:
            runs.append([slot, slot, name])
    return runs


def slot_view(link: PoolLink) -> dict[str, object]:
    """The parent's slot view, as the workers are sent it: the owners in
    runs ``[[FIRST, LAST, OWNER-or-null], ...]``; with a pool link that
    names a standby per slot, the standby of each slot of this instance
    the same way."""
    slot_map = None if link.member is None else link.member.map
    owners: Sequence[str | None] = (None,) * SLOTS if slot_map is None else slot_map.owners
    view: dict[str, object] = {
        "key": map_key(link),
        "me": link.me,
        "owners": _runs(owners),
        "late": sorted(p for p in link.peers if link.late(p)),
        "addresses": {name: link.address(name) for name in link.pool.names},
    }
    heir: Any = getattr(link, "standby", None)
    if callable(heir):
        view["standby"] = _runs(
            heir(slot) if owner == link.me else None for slot, owner in enumerate(owners)
        )
    return view


def _word(value: object, empty: bool = False) -> str:
    if not isinstance(value, str) or len(value) > MAX_WORD or (not value and not empty):
        raise ViewError(f"not a name in a slot view: {str(value)[:40]!r}")
    return value


def decode_view(value: object) -> SlotView:
    """The :class:`SlotView` of a :func:`slot_view` answer.

    @raise ViewError: naming what is wrong.
    """
    if not isinstance(value, dict):
        raise ViewError("a slot view is a map")
    runs, late, addresses = value.get("owners"), value.get("late"), value.get("addresses")
    if not isinstance(runs, list) or not isinstance(late, list):
        raise ViewError("a slot view has its owners and late members as lists")
    if not isinstance(addresses, dict) or len(addresses) > MAX_MEMBERS or len(late) > MAX_MEMBERS:
        raise ViewError("a slot view has the members' addresses as a map")
    owners = _names(runs)
    standby = value.get("standby")
    return SlotView(
        _word(value.get("key"), empty=True),
        _word(value.get("me")),
        owners,
        frozenset(_word(p) for p in late),
        {_word(k): _word(v) for k, v in addresses.items()},
        None if standby is None else _names(standby),
    )


def _names(runs: object) -> tuple[str | None, ...]:
    """The name per slot of :func:`_runs`.

    @raise ViewError: when the runs do not cover the slots in order.
    """
    if not isinstance(runs, list):
        raise ViewError("runs of names are a list")
    names: list[str | None] = []
    for run in runs:
        if not isinstance(run, list) or len(run) != 3:
            raise ViewError("a run of names is [FIRST, LAST, NAME]")
        first, last, name = run
        if (
            not isinstance(first, int)
            or not isinstance(last, int)
            or isinstance(first, bool)
            or isinstance(last, bool)
            or first != len(names)
            or not first <= last < SLOTS
        ):
            raise ViewError(f"a run of names out of order: {str(run)[:40]}")
        names.extend([None if name is None else _word(name)] * (last - first + 1))
    if len(names) != SLOTS:
        raise ViewError(f"a slot view covers {len(names)} slots, not {SLOTS}")
    return tuple(names)


def owned_by(view: SlotView, name: str) -> list[tuple[int, int]]:
    """The (first, last) ranges of the slots ``name`` owns in ``view``."""
    return slot_ranges(s for s, owner in enumerate(view.owners) if owner == name)
