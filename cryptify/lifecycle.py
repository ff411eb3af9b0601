"""Lifecycles as explicit machines: an enum of states and the moves allowed.

Each CIG call leg (:mod:`cryptify.cig.sif.legs`, :mod:`cryptify.cig.tel.legs`),
each media bridge (:mod:`cryptify.cig.tel.bridge`) and each SIP transaction
(:mod:`cryptify.protocols.sip.transaction`) keeps its lifecycle in one
:class:`Lifecycle`: its state, and a table naming every state it can be in
and the states it may move to (none: the state is final).  Every change goes
through :meth:`Lifecycle.move`, which refuses a move the table does not
list with :class:`IllegalTransition`.

A refused move is a bug in our code, never a peer's doing: a leg first asks
:meth:`Lifecycle.can` and ignores an event its state does not take (a late
180, a second hangup), as SIP and UMSG expect.  ``docs/cig-calls.md``
draws the machines.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

import attrs

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(Exception):
    """A move the machine's table does not allow."""

    def __init__(self, machine: str, old: enum.Enum, new: enum.Enum) -> None:
        super().__init__(f"{machine}: {old.name} -> {new.name} is not allowed")
        self.machine = machine
        self.old = old
        self.new = new


def check_table(states: type[S], moves: Mapping[S, frozenset[S]]) -> Mapping[S, frozenset[S]]:
    """``moves`` if it names every state of ``states`` once (``ValueError`` if not)."""
    missing = [s.name for s in states if s not in moves]
    if missing:
        raise ValueError(f"{states.__name__}: no moves given for {', '.join(missing)}")
    return moves


@attrs.define
class Lifecycle(Generic[S]):
    """One machine's current state, changed only along ``moves``."""

    name: str
    moves: Mapping[S, frozenset[S]] = attrs.field(repr=False)
    state: S

    def can(self, new: S) -> bool:
        """Whether the table allows moving from the current state to ``new``."""
        return new in self.moves[self.state]

    def move(self, new: S) -> None:
        """Move to ``new``; :class:`IllegalTransition` if the table does not allow it."""
        if not self.can(new):
            raise IllegalTransition(self.name, self.state, new)
        self.state = new

    @property
    def final(self) -> bool:
        """Whether no move is left (the call or bridge is over)."""
        return not self.moves[self.state]
