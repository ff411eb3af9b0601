"""
Which addresses the SIF takes SIP from, and the record of those it refuses.

A gateway answers only the SIP peers it is configured for (issue 13):

 - the PBX servers the maps name: the literal host of each C{sip} side
   of the tel interface's extension maps (where calls to the PBX go) and
   source maps (the PBX's callers), as addresses or as host names looked
   up at start and every L{REFRESH_EVERY} seconds; a lookup that fails
   or finds nothing keeps the name's last good addresses;
 - the networks of C{trusted_peer ADDR|CIDR;} in C{interfaces { sip }}.

L{SipPeers.trusted} is the test the SIF applies to each request and to
each TCP connection. Requests from anyone else get C{403} or nothing
(C{untrusted_answer}); they are never parsed further, routed, listed in
C{show call} or written to C{session.log}.

L{Refusals} keeps cig.log readable under a scan: the first refusal from a
source is logged at once, the rest are counted and summed up in one line
per source every L{SUMMARY_EVERY} seconds. At most L{MAX_SOURCES} sources
are counted one by one per interval; beyond that they share one count.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.config.cig_model import CigConfig, UriMap
from cryptify.protocols.sip.locate import literal_target

log = Logger(namespace="cryptify.cig.peers")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Seconds between look-ups of the PBX's host names.
REFRESH_EVERY = 300.0
#: Seconds between summaries of refused SIP.
SUMMARY_EVERY = 60.0
#: Sources counted one by one per summary interval.
MAX_SOURCES = 1000


# Every request's source is checked: parsed forms of recent sources are kept.
@functools.lru_cache(maxsize=1024)
def _address(text: str) -> IPAddress | None:
    try:
        found = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def pbx_hosts(config: CigConfig) -> tuple[str, ...]:
    """
    The literal hosts (addresses or names) of the SIP sides of the tel
    interface's extension and source maps, in file order, each once.
    """
    names = (*config.tel.extension_maps, *config.tel.source_maps)
    maps: list[UriMap] = []
    for name in names:
        try:
            maps.append(config.get_map(name))
        except KeyError:
            continue
    found: dict[str, None] = {}
    for uri_map in maps:
        for entry in uri_map.entries:
            target = literal_target(entry.sip)
            if target is not None:
                found.setdefault(target.host)
    return tuple(found)


@attrs.define(eq=False)
class SipPeers:
    """
    The SIF's trusted SIP peers: the PBX's addresses (literal or looked
    up) and the C{trusted_peer} networks.
    """

    clock: IReactorTime
    networks: tuple[IPNetwork, ...] = ()
    #: PBX hosts: addresses are taken as they are, names are looked up.
    hosts: tuple[str, ...] = ()
    #: Every address of a host name (None: names are not looked up).
    resolve_all: Callable[[str], Deferred[Sequence[str]]] | None = None
    refresh_every: float = REFRESH_EVERY
    #: The last good addresses of each looked-up name.
    resolved: dict[str, frozenset[IPAddress]] = attrs.field(factory=dict, init=False)
    literal: frozenset[IPAddress] = attrs.field(init=False)
    names: tuple[str, ...] = attrs.field(init=False)
    timer: IDelayedCall | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        literal: set[IPAddress] = set()
        names: list[str] = []
        for host in self.hosts:
            address = _address(host)
            if address is not None:
                literal.add(address)
            else:
                names.append(host)
        self.literal = frozenset(literal)
        self.names = tuple(names)

    @classmethod
    def from_config(
        cls,
        config: CigConfig,
        clock: IReactorTime,
        resolve_all: Callable[[str], Deferred[Sequence[str]]] | None = None,
    ) -> SipPeers:
        """The peers C{config} names."""
        networks = tuple(ipaddress.ip_network(peer) for peer in config.sip.trusted_peers)
        return cls(clock, networks, pbx_hosts(config), resolve_all)

    def reconfigure(self, config: CigConfig) -> None:
        """Take the peers a reloaded C{config} names (SIGHUP).

        Names no longer named are forgotten; names that are new are looked
        up now (and every C{refresh_every} seconds, with the others).
        """
        fresh = SipPeers.from_config(config, self.clock)
        new_names = set(fresh.names) - set(self.names)
        self.networks, self.hosts = fresh.networks, fresh.hosts
        self.literal, self.names = fresh.literal, fresh.names
        for gone in set(self.resolved) - set(self.names):
            del self.resolved[gone]
        if new_names and self.resolve_all is not None:
            self.stop()
            self._refresh()
        log.info("SIP peers now: {peers}", peers=", ".join(self.addresses()) or "none")

    def trusted(self, host: str) -> bool:
        """Whether SIP from address C{host} is taken."""
        address = _address(host)
        if address is None:
            return False
        if address in self.literal:
            return True
        for found in self.resolved.values():
            if address in found:
                return True
        for network in self.networks:
            if address in network:
                return True
        return False

    def addresses(self) -> list[str]:
        """Every address taken now (for logs and status), networks last."""
        known = set(self.literal).union(*self.resolved.values())
        return [str(a) for a in sorted(known, key=lambda a: (a.version, a))] + [
            str(n) for n in self.networks
        ]

    def start(self) -> None:
        """Look the names up now and every C{refresh_every} seconds."""
        if self.timer is None:
            self._refresh()
        if not self.hosts and not self.networks:
            log.warn(
                "no SIP peer is configured (no literal PBX host in the tel interface's maps,"
                " no trusted_peer): every SIP request will be refused"
            )

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _refresh(self) -> None:
        if not self.names or self.resolve_all is None:
            return
        self.timer = self.clock.callLater(self.refresh_every, self._refresh)
        for name in self.names:
            self.resolve_all(name).addCallbacks(
                lambda found, name=name: self._found(name, found),
                lambda failure, name=name: self._failed(name, failure),
            )

    def _found(self, name: str, found: Iterable[str]) -> None:
        addresses = frozenset(a for a in map(_address, found) if a is not None)
        if not addresses:
            self._failed(name, None)
            return
        before = self.resolved.get(name)
        self.resolved[name] = addresses
        if before != addresses:
            log.info(
                "SIP peer {name} is {addresses}",
                name=name,
                addresses=", ".join(sorted(map(str, addresses))),
            )

    def _failed(self, name: str, failure: Failure | None) -> None:
        why = failure.getErrorMessage() if failure is not None else "no address"
        kept = self.resolved.get(name)
        log.warn(
            "cannot look up SIP peer {name} ({why}); {kept}",
            name=name,
            why=why,
            kept=f"keeping {', '.join(sorted(map(str, kept)))}" if kept else "not taken",
        )


@attrs.define(eq=False)
class Refusals:
    """
    Refused SIP, logged once per source and summed up per interval.
    C{lines} counts the log lines written (for tests and status).
    """

    clock: IReactorTime
    interval: float = SUMMARY_EVERY
    max_sources: int = MAX_SOURCES
    #: Refusals since the last summary, per source (0: only the first, logged).
    counts: dict[str, int] = attrs.field(factory=dict, init=False)
    others: int = attrs.field(default=0, init=False)
    total: int = attrs.field(default=0, init=False)
    lines: int = attrs.field(default=0, init=False)
    timer: IDelayedCall | None = attrs.field(default=None, init=False)

    def refused(self, source: str, what: str) -> None:
        """One more refusal from C{source} (an address); C{what} says why."""
        self.total += 1
        if source in self.counts:
            self.counts[source] += 1
        elif len(self.counts) >= self.max_sources:
            self.others += 1
        else:
            self.counts[source] = 0
            self.lines += 1
            log.warn(
                "refusing SIP from {source}: {what}; more from it are summed up"
                " every {interval:.0f} s",
                source=source,
                what=what,
                interval=self.interval,
            )
        if self.timer is None:
            self.timer = self.clock.callLater(self.interval, self._summary)

    def _summary(self) -> None:
        self.timer = None
        for source, count in self.counts.items():
            if count:
                self.lines += 1
                log.warn(
                    "refused {count} more SIP messages or connections from {source}"
                    " in {interval:.0f} s",
                    count=count,
                    source=source,
                    interval=self.interval,
                )
        if self.others:
            self.lines += 1
            log.warn(
                "refused {count} SIP messages or connections from other sources"
                " in {interval:.0f} s",
                count=self.others,
                interval=self.interval,
            )
        busy = [source for source, count in self.counts.items() if count] or None
        self.counts = dict.fromkeys(busy or (), 0)
        self.others = 0
        if busy:
            self.timer = self.clock.callLater(self.interval, self._summary)

    def stop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
