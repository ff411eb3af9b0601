"""
OPTIONS keep-alive towards the PBX.

Every C{interval} seconds the SIF sends OPTIONS to each distinct server
the tel interface's extension maps send calls to, when the map entry's
host part is literal (C{sip:{ext}@pbx.com}, not C{sip:{ext}@{host}}). Any
response means the server answers; a transaction timeout, a failed lookup
or connection means it does not. The first probe's result and every
change after it are logged (cig.log); a server that stops answering
raises C{notify.sh cig-server pbx-down}, one that answers again
C{pbx-up}.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.addresses import is_wildcard
from cryptify.protocols.sip.dialog import new_branch, new_tag
from cryptify.protocols.sip.locate import Target, literal_target
from cryptify.protocols.sip.message import Headers, Request, Response
from cryptify.protocols.sip.transaction import Channel

from ..route import TEL, Router
from .core import Sif

log = Logger(namespace="cryptify.cig.keepalive")

#: Seconds between OPTIONS to each PBX server.
DEFAULT_INTERVAL = 30.0
UP = "UP"
DOWN = "DOWN"
UNKNOWN = "UNKNOWN"


def keepalive_targets(router: Router) -> tuple[Target, ...]:
    """The distinct literal SIP servers of the tel interface's extension maps."""
    found: dict[Target, None] = {}
    for uri_map in router.extension_maps(TEL):
        for entry in uri_map.entries:
            target = literal_target(entry.sip)
            if target is not None:
                found.setdefault(target)
    return tuple(found)


@attrs.define(eq=False)
class KeepAlive:
    """Probes each target with OPTIONS and tracks whether it answers."""

    sif: Sif
    targets: tuple[Target, ...]
    interval: float = DEFAULT_INTERVAL
    notify: Callable[[str, str], object] = lambda unit, event: None
    states: dict[Target, str] = attrs.field(factory=dict, init=False)
    in_flight: set[Target] = attrs.field(factory=set, init=False)
    timer: IDelayedCall | None = attrs.field(default=None, init=False)
    probes: int = attrs.field(default=0, init=False)

    def start(self) -> None:
        """Probe now and every C{interval} seconds (nothing if disabled)."""
        if self.interval > 0 and self.targets and self.timer is None:
            self._tick()

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def rows(self) -> list[tuple[str, str]]:
        """Each target and its state, for C{cig-cli status}."""
        return [(str(t), self.states.get(t, UNKNOWN)) for t in self.targets]

    def _tick(self) -> None:
        self.timer = self.sif.clock.callLater(self.interval, self._tick)
        for target in self.targets:
            if target not in self.in_flight:
                self._probe(target)

    def _probe(self, target: Target) -> None:
        self.in_flight.add(target)
        self.probes += 1

        def send(channel: Channel) -> None:
            self.sif.layer.request(
                self.options(target, channel),
                channel,
                lambda response: self._result(target, response),
                lambda: self._result(target, None),
            )

        def failed(failure: Failure) -> None:
            log.debug("OPTIONS to {target}: {why}", target=str(target), why=failure.value)
            self._result(target, None)

        self.sif.channel_for(target).addCallbacks(send, failed)

    def options(self, target: Target, channel: Channel) -> Request:
        """An OPTIONS request to C{target}'s server."""
        local = self.sif.config.sip.bind
        local = "127.0.0.1" if is_wildcard(local) else local
        headers = Headers(
            (
                ("Via", self.sif.via(channel, local)),
                ("Max-Forwards", "70"),
                ("From", f"<sip:cig@{local}>;tag={new_tag()}"),
                ("To", f"<{target.uri}>"),
                ("Call-ID", f"{new_branch()[7:]}@{local}"),
                ("CSeq", "1 OPTIONS"),
                ("Accept", "application/sdp"),
            )
        )
        return Request("OPTIONS", target.uri, headers)

    def _result(self, target: Target, response: Response | None) -> None:
        if response is not None and response.status < 200:
            return  # provisional: wait for the final answer
        self.in_flight.discard(target)
        before = self.states.get(target, UNKNOWN)
        now = UP if response is not None else DOWN
        self.states[target] = now
        if before == now:
            return
        if now == UP:
            log.info("PBX {target} answers", target=str(target))
            if before == DOWN:
                self.notify("cig-server", "pbx-up")
        else:
            log.warn("PBX {target} does not answer", target=str(target))
            self.notify("cig-server", "pbx-down")
