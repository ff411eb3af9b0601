"""Control channel between a signaling server and its media relay.

The CRS drives its ``crs_relay`` and the CIG its ``cig-relay`` over AMP on a
UNIX socket.  The signaling side keeps one connection open
(:class:`~cryptify.links.relay_link.RelayLink`, reconnecting with backoff)
and polls it as a heartbeat; the relay side answers with :class:`Poll` and reports counters with
:class:`RelayStats`.  The CRS relay also takes :class:`Add` (a relay
session with two leg tags), :class:`Remove`, their batched forms
:class:`AddSessions` and :class:`RemoveSessions`, :class:`ListSessions` and
:class:`Reclaim` (a restarted CRS adopting its live sessions), :class:`Bridge`
(a leg sent to another operator's relay, for calls across operators); every
command names the calling ``server``, which keeps its sessions alive.
``docs/relay.md`` describes the commands and the ``RelayLink`` API.
"""

from __future__ import annotations

import attrs
from twisted.protocols import amp

from cryptify.protocols.mgmt import JsonValue


class Poll(amp.Command):
    """Heartbeat from the signaling server; answers with the session count."""

    arguments = [(b"server", amp.Unicode())]
    response = [(b"sessions", amp.Integer()), (b"version", amp.Unicode())]


class RelayStats(amp.Command):
    """The relay's counters as a JSON object."""

    arguments = []
    response = [(b"stats", JsonValue())]


class Add(amp.Command):
    """Create a relay session; answers its number, the two legs' tags and
    the relay's media address (``host`` may be ``0.0.0.0``: any address of
    the relay's machine)."""

    arguments = [(b"server", amp.Unicode()), (b"label", amp.Unicode(optional=True))]
    response = [
        (b"session", amp.Integer()),
        (b"tag_a", amp.String()),
        (b"tag_b", amp.String()),
        (b"host", amp.Unicode()),
        (b"port", amp.Integer()),
    ]


class Remove(amp.Command):
    """Delete a relay session; ``removed`` is false when it did not exist."""

    arguments = [(b"server", amp.Unicode()), (b"session", amp.Integer())]
    response = [(b"removed", amp.Boolean())]


class BatchTooLarge(Exception):
    """More than :data:`MAX_BATCH` sessions in one AddMany, RemoveMany or BridgeMany."""


class AddSessions(amp.Command):
    """:class:`Add` for many sessions at once (one per label, in order): the
    calls a CRS sets up in one reactor turn cost one command."""

    commandName = b"AddMany"
    arguments = [(b"server", amp.Unicode()), (b"labels", amp.ListOf(amp.Unicode()))]
    response = [
        (
            b"sessions",
            amp.AmpList(
                [(b"session", amp.Integer()), (b"tag_a", amp.String()), (b"tag_b", amp.String())]
            ),
        ),
        (b"host", amp.Unicode()),
        (b"port", amp.Integer()),
    ]
    errors = {BatchTooLarge: b"BATCH_TOO_LARGE"}


class RemoveSessions(amp.Command):
    """:class:`Remove` for many sessions at once; answers those that existed."""

    commandName = b"RemoveMany"
    arguments = [(b"server", amp.Unicode()), (b"sessions", amp.ListOf(amp.Integer()))]
    response = [(b"removed", amp.ListOf(amp.Integer()))]
    errors = {BatchTooLarge: b"BATCH_TOO_LARGE"}


#: Sessions per AddMany / RemoveMany at most (an AMP value holds 64 KiB).
MAX_BATCH = 256


class ListSessions(amp.Command):
    """The live relay sessions owned by ``server`` (a JSON list of objects)."""

    commandName = b"List"
    arguments = [(b"server", amp.Unicode())]
    response = [(b"sessions", JsonValue())]


class Reclaim(amp.Command):
    """Adopt live sessions (after a CRS restart); answers those that were live."""

    arguments = [(b"server", amp.Unicode()), (b"sessions", amp.ListOf(amp.Integer()))]
    response = [(b"reclaimed", amp.ListOf(amp.Integer()))]


class Bridge(amp.Command):
    """Bridge leg ``a`` or ``b`` of a session to another operator's relay at
    ``host``:``port``, whose leg there has ``tag``; answers whether the
    session (and leg) existed."""

    arguments = [
        (b"server", amp.Unicode()),
        (b"session", amp.Integer()),
        (b"leg", amp.Unicode()),
        (b"host", amp.Unicode()),
        (b"port", amp.Integer()),
        (b"tag", amp.String()),
    ]
    response = [(b"bridged", amp.Boolean())]


class BridgeSessions(amp.Command):
    """:class:`Bridge` for many legs at once, in order: the calls across
    operators a CRS bridges in one reactor turn cost one command.  Answers,
    per leg, whether its session (and leg) existed."""

    commandName = b"BridgeMany"
    arguments = [
        (b"server", amp.Unicode()),
        (
            b"legs",
            amp.AmpList(
                [
                    (b"session", amp.Integer()),
                    (b"leg", amp.Unicode()),
                    (b"host", amp.Unicode()),
                    (b"port", amp.Integer()),
                    (b"tag", amp.String()),
                ]
            ),
        ),
    ]
    response = [(b"bridged", amp.ListOf(amp.Boolean()))]
    errors = {BatchTooLarge: b"BATCH_TOO_LARGE"}


@attrs.frozen
class RelayAllocation:
    """What ``RelayLink.add_session`` gives the call code."""

    session: int
    tag_a: bytes
    tag_b: bytes
    host: str
    port: int
