"""
Thin Twisted adapters for SIP over UDP and TCP.

Each reads bytes, parses them into messages, and hands them with the
L{Channel} to answer on to a L{MessageSink}; parse errors go to the sink
too (it decides between a 4xx and silence). A sink that raises is logged
and the adapter goes on serving. A TCP connection that sends a message it
cannot frame is closed after the sink has seen the error.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.internet import protocol
from twisted.logger import Logger

from .errors import SipParseError
from .message import Request, Response, StreamParser, parse_datagram
from .transaction import Address, Channel

log = Logger(namespace="cryptify.protocols.sip")


class MessageSink(Protocol):
    """Where the adapters deliver what they read."""

    def message_received(self, message: Request | Response, channel: Channel) -> None: ...

    def parse_failed(self, error: SipParseError, channel: Channel) -> None: ...


@attrs.frozen
class UdpChannel:
    """The way back to a UDP peer: the listening port and its address."""

    transport: Any
    address: Address
    reliable: bool = False

    def send(self, data: bytes) -> None:
        try:
            self.transport.write(data, self.address)
        except OSError as exc:
            log.warn("cannot send to {peer}: {why}", peer=self.address, why=exc)


class SipDatagramProtocol(protocol.DatagramProtocol):
    """SIP over UDP: one message per datagram."""

    def __init__(self, sink: MessageSink) -> None:
        self.sink = sink

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        channel = UdpChannel(self.transport, (str(addr[0]), int(addr[1])))
        try:
            try:
                message = parse_datagram(data)
            except SipParseError as exc:
                self.sink.parse_failed(exc, channel)
                return
            if message is not None:
                self.sink.message_received(message, channel)
        except Exception:
            log.failure("error handling a SIP datagram from {peer}", peer=channel.address)


class SipStreamProtocol(protocol.Protocol):
    """SIP over TCP: messages framed by Content-Length; this is the channel."""

    reliable = True

    def __init__(self, sink: MessageSink) -> None:
        self.sink = sink
        self.parser = StreamParser()
        self.address: Address = ("", 0)

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.address = (str(getattr(peer, "host", "")), int(getattr(peer, "port", 0)))

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        try:
            try:
                messages = self.parser.feed(data)
            except SipParseError as exc:
                self.sink.parse_failed(exc, self)
                if self.transport is not None:
                    self.transport.loseConnection()
                return
            for message in messages:
                self.sink.message_received(message, self)
        except Exception:
            log.failure("error handling SIP from {peer}", peer=self.address)


class SipStreamFactory(protocol.Factory):
    """Builds a L{SipStreamProtocol} per TCP connection."""

    def __init__(self, sink: MessageSink) -> None:
        self.sink = sink

    def buildProtocol(self, addr: Any) -> SipStreamProtocol:
        return SipStreamProtocol(self.sink)
