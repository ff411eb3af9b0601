"""The CRS media relay process (``crs_relay``): UDP media and its control.

This module holds the relay's counters, the UDP adapter and the control
responders the CRS talks to.  Packets are counted with exactly the meanings
``crs-cli show relay`` prints:

RX          media packets received
TXB         media packets transmitted
TXERROR     packets the kernel refused to send
ERRNODEST   packets with no destination (unknown session or leg)
ERRTOSHORT  packets too short to carry a relay header and RTP
ERRTOLONG   packets longer than the largest media packet relayed
ENTRIES     relay sessions in the table
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.protocol import DatagramProtocol, Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from cryptify import __version__
from cryptify.protocols.relay_control import Poll, RelayStats

log = Logger(namespace="cryptify.crs.relay")

#: Shortest datagram that can be a relayed packet: 8-byte tag + 12-byte RTP header.
MIN_PACKET = 8 + 12
#: Longest datagram relayed (an Ethernet MTU's worth of UDP payload).
MAX_PACKET = 1472


@attrs.define
class RelayCounters:
    """The relay's statistics, as ``show relay`` prints them."""

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


class RelayDatagram(DatagramProtocol):
    """UDP adapter: counts and classifies every packet.

    Sessions arrive with the relay issue; until then every well-sized
    packet has no destination.
    """

    def __init__(self, counters: RelayCounters) -> None:
        self.counters = counters

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        counters = self.counters
        counters.rx += 1
        size = len(datagram)
        if size < MIN_PACKET:
            counters.errtoshort += 1
        elif size > MAX_PACKET:
            counters.errtolong += 1
        else:
            counters.errnodest += 1


class RelayControl(amp.CommandLocator):
    """Responders for the CRS's control connection."""

    def __init__(self, counters: RelayCounters) -> None:
        self.counters = counters

    @Poll.responder
    def poll(self, server: str) -> dict[str, Any]:
        log.info("Command poll from {server}", server=server)
        return {"sessions": 0, "version": __version__}

    @RelayStats.responder
    def stats(self) -> dict[str, Any]:
        return {"stats": self.counters.as_dict(entries=0)}


class RelayControlProtocol(amp.AMP):
    """One control connection; logs CONNECTION and CLOSE."""

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        log.info("CONNECTION from the CRS")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        log.info("CLOSE of the CRS connection")


def control_factory(counters: RelayCounters) -> Factory[RelayControlProtocol]:
    """Factory of control connections sharing one set of counters."""
    factory = Factory.forProtocol(lambda: RelayControlProtocol(locator=RelayControl(counters)))  # type: ignore[no-untyped-call]
    factory.noisy = False
    return factory
