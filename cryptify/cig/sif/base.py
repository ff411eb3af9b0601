"""The SIF's state and SIP plumbing, shared by its inbound, messaging and outgoing sides.

L{SifBase} holds the fields of L{cryptify.cig.sif.core.Sif} and what every
side uses to talk to the PBX: answers (C{reply}), the Via and Contact of
our requests, client transactions with digest answers (C{send_request},
C{send_bye}), and the channel to a target (C{channel_for}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cryptify.addresses import is_wildcard
from cryptify.config.cig_model import CigConfig
from cryptify.protocols.sip.address import shared_uri
from cryptify.protocols.sip.dialog import Dialog, DialogId, new_branch
from cryptify.protocols.sip.digest import Credentials
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.locate import Target
from cryptify.protocols.sip.message import (
    Request,
    Response,
    response_to,
)
from cryptify.protocols.sip.transaction import (
    Address,
    Channel,
    TransactionLayer,
)

from ..calls import Call, CallTable, TelSide
from ..mail.sip import (
    SipAnswer,
)
from ..route import Router
from .auth import ChallengedRequest, Keyring
from .challenge import Challenger
from .legs import OutCall, SipCall
from .peers import Refusals, SipPeers
from .ports import PortPool

log = Logger(namespace="cryptify.cig.sif")

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, REFER"
#: Methods SIP defines that the CIG does not take (405, not 501).
KNOWN_METHODS = frozenset(
    {"REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH", "INFO", "REFER", "UPDATE", "MESSAGE"}
)
SDP = "application/sdp"


class MessageDesk(Protocol):
    """Where MESSAGEs from the PBX go (the mailboxes' L{MailDesk.from_sip})."""

    def from_sip(self, sender: str, recipient: str, text: str, key: bytes) -> Deferred[SipAnswer]:
        """Post C{text} to C{recipient}; fires with the answer for the PBX."""


class NoTransport(Exception):
    """No channel to the target: no transport of that kind, or no connection."""


@attrs.define(eq=False)
class SifBase:
    """The SIP interface's state (see L{cryptify.cig.sif.core.Sif})."""

    """
    The SIP interface's user agent core (a L{TransactionUser} and the
    adapters' L{MessageSink}).
    """

    config: CigConfig
    clock: IReactorTime
    tel: TelSide
    calls: CallTable
    router: Router = attrs.field()
    layer: TransactionLayer = attrs.field(init=False)
    rtp_ports: PortPool = attrs.field(init=False)
    channel_to: Callable[[Address], Channel | None] | None = None
    #: A host name's IPv4 address (C{reactor.resolve}); None: names fail.
    resolve: Callable[[str], Deferred[str]] | None = None
    #: A TCP channel to an address (L{TcpConnector.channel}); None: no TCP.
    tcp_channel: Callable[[Address], Deferred[Channel]] | None = None
    #: A TLS channel to an address whose certificate must name the given
    #: host (a L{TcpConnector} with C{tls}); None: no TLS.
    tls_channel: Callable[[Address, str], Deferred[Channel]] | None = None
    #: Who may send requests; None: anyone (tests, in-process tools).
    peers: SipPeers | None = None
    #: Credentials for the PBXs' 401/407 challenges (C{pbx_account}).
    keyring: Keyring = attrs.field(factory=Keyring)
    #: Digest checks of requests from the PBXs (C{pbx_challenge}); None: none.
    challenger: Challenger | None = None
    #: Where MESSAGEs from the PBX go (C{messaging true}); None: answered 480.
    messages: MessageDesk | None = None
    refusals: Refusals = attrs.field(init=False)
    placing: set[Call] = attrs.field(factory=set, init=False)
    dialogs: dict[DialogId, SipCall | OutCall] = attrs.field(factory=dict, init=False)
    outgoing: dict[Call, OutCall] = attrs.field(factory=dict, init=False)
    invites: dict[tuple[str, ...], SipCall] = attrs.field(factory=dict, init=False)

    @router.default
    def _router(self) -> Router:
        return Router(self.config)

    # --- requests ----------------------------------------------------------
    def allow(self) -> str:
        return ALLOW + (", MESSAGE" if self.config.sip.messaging else "")

    def reply(
        self, request: Request, status: int, to_tag: str | None = None, body: bytes = b""
    ) -> Response:
        extra: list[tuple[str, str]] = []
        if request.method == "INVITE" and 100 < status < 300:
            extra.append(("Contact", f"<{self.contact_uri(request)}>"))
            extra.append(("Allow", self.allow()))
        if body:
            extra.append(("Content-Type", SDP))
        if status in (405,):
            extra.append(("Allow", self.allow()))
        return response_to(
            request.headers,
            status,
            to_tag=to_tag if status > 100 else None,
            extra=tuple(extra),
            body=body,
        )

    def local_host(self, request: Request) -> str:
        """The address we advertise: C{bind}, or the one the PBX used."""
        bind = self.config.sip.bind
        if not is_wildcard(bind):
            return bind
        try:
            return shared_uri(request.uri).host or "127.0.0.1"
        except SipParseError:
            return "127.0.0.1"

    def contact_uri(self, request: Request) -> str:
        """Our Contact in answers to C{request}: over TLS, the TLS port and C{;transport=tls}."""
        try:
            tls = request.top_via.transport == "TLS"
        except (SipParseError, IndexError):
            tls = False
        if tls:
            return f"sip:{self.local_host(request)}:{self.config.sip.tls_port};transport=tls"
        return f"sip:{self.local_host(request)}:{self.config.sip.port}"

    def send_bye(
        self, dialog: Dialog, channel: Channel, host: str, credentials: Credentials | None = None
    ) -> None:
        """
        Hang up towards the PBX: BYE in C{dialog}, sent again with
        C{credentials} (by default those of the PBX at the channel's
        address) if challenged.
        """
        self.dialogs.pop(dialog.id, None)
        bye = dialog.request("BYE", self.via(channel, host))
        if credentials is None:
            credentials = self.keyring.for_address(channel.address[0])

        def resent(request: Request) -> None:
            dialog.local_cseq = request.cseq.number

        self.send_request(bye, channel, credentials, lambda response: None, lambda: None, resent)

    def send_request(
        self,
        request: Request,
        channel: Channel,
        credentials: Credentials | None,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
        on_resend: Callable[[Request], None] = lambda request: None,
    ) -> None:
        """
        Send C{request} in a client transaction; a 401/407 is answered
        once with C{credentials} (L{ChallengedRequest}).
        """
        ChallengedRequest(
            self.layer, channel, request, credentials, on_response, on_timeout, on_resend
        ).send()

    def contact_port(self, channel: Channel) -> int:
        """Where we listen for what comes over C{channel}'s transport."""
        return self.config.sip.tls_port if transport_of(channel) == "tls" else self.config.sip.port

    def via(self, channel: Channel, host: str) -> str:
        """
        A Via value for a request we send on C{channel}, fresh branch. On a
        TLS connection we opened it carries C{alias} (RFC 5923): the PBX,
        which has our certificate, may send its requests for our sent-by
        address back over this connection instead of opening one to us.
        """
        transport = transport_of(channel)
        alias = ";alias" if transport == "tls" and getattr(channel, "initiated", False) else ""
        return (
            f"SIP/2.0/{transport.upper()} {host}:{self.contact_port(channel)}"
            f";branch={new_branch()};rport{alias}"
        )

    # --- where requests to the PBX go ---------------------------------------
    def channel_for(self, target: Target) -> Deferred[Channel]:
        """
        A channel to C{target}: its host looked up (A record) unless it is
        an address, over UDP or a (reused) TCP connection. Fails with
        L{DNSLookupError} or L{NoTransport}.
        """
        if target.numeric:
            found: Deferred[str] = succeed(target.host)
        elif self.resolve is not None:
            found = self.resolve(target.host)
        else:
            found = fail(DNSLookupError(target.host))

        def connect(address: str) -> Channel | Deferred[Channel]:
            where = (address, target.port)
            if not target.numeric:
                credentials = self.keyring.for_target(target)
                if credentials is not None:
                    self.keyring.learn(address, credentials)
            if target.transport == "tls":
                if self.tls_channel is None:
                    raise NoTransport("no TLS transport")
                return self.tls_channel(where, target.host)
            if target.transport == "tcp":
                if self.tcp_channel is None:
                    raise NoTransport("no TCP transport")
                return self.tcp_channel(where)
            channel = self.channel_to(where) if self.channel_to is not None else None
            if channel is None:
                raise NoTransport("no UDP transport")
            return channel

        return found.addCallback(connect)


def transport_of(channel: Channel) -> str:
    """C{udp}, C{tcp} or C{tls}: what C{channel} runs over."""
    if getattr(channel, "secure", False):
        return "tls"
    return "tcp" if channel.reliable else "udp"


def contact_transport(channel: Channel) -> str:
    """The Contact URI parameter for requests sent on C{channel}."""
    transport = transport_of(channel)
    return "" if transport == "udp" else f";transport={transport}"
