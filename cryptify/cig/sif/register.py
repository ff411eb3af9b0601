"""
The CIG's registrations at its PBXs (RFC 3261 section 10), one per
C{pbx_account} with C{register SECONDS}.

L{Registration} sends REGISTER for the account's address of record
(C{aor}, default C{sip:USERNAME@HOST}) with the CIG's contact and the
configured expiry, answering 401/407 with the account's credentials
(L{ChallengedRequest}). Rules:

 - One Call-ID per registration for the life of the process; the CSeq
   grows with every REGISTER (RFC 3261 10.2.4).
 - The expiry granted is the C{expires} parameter of our contact in the
   2xx, else its C{Expires} header, else what we asked for. The binding
   is refreshed L{REFRESH_MARGIN} seconds before it runs out (half way
   through for grants shorter than twice that).
 - A 423 with C{Min-Expires} is retried at once with that expiry (up to
   L{MAX_EXPIRES}); any other final failure (the credentials refused, a
   4xx-6xx, no answer in 32 s, no route to the server) waits and tries
   again: L{RETRY_FIRST} seconds, doubling up to L{RETRY_MAX}.
 - States: C{UNREGISTERED} (not yet tried, or stopped), C{REGISTERING}
   (waiting for the first or a retried answer), C{REGISTERED},
   C{FAILED} (waiting to retry). A registration that was up and fails
   logs it and runs C{notify.sh cig-server registration-lost}; the next
   success logs and runs C{registration-regained}. C{cig-cli status}
   shows each registration and its state (L{Registrations.rows}).

L{TrunkService} reads the accounts' passwords and the TLS files (while
still privileged, so root-owned 0600 files work; an unusable file stops
start-up) and starts and stops the registrations.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs
from twisted.application import service
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from cryptify.addresses import is_wildcard
from cryptify.config.cig_model import PbxAccount
from cryptify.lifecycle import Lifecycle, check_table
from cryptify.protocols.sip.address import param, parse_name_addr, parse_uri
from cryptify.protocols.sip.dialog import new_branch, new_tag
from cryptify.protocols.sip.digest import Credentials
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.locate import Target
from cryptify.protocols.sip.message import Headers, Request, Response
from cryptify.protocols.sip.transaction import Channel
from cryptify.service import StartupError

from .auth import CredentialsError, Keyring
from .base import contact_transport
from .challenge import Challenger
from .core import Sif
from .tls import TlsMaterial, load_tls

log = Logger(namespace="cryptify.cig.sif.register")

#: Refresh this many seconds before the binding runs out.
REFRESH_MARGIN = 30.0
#: First wait after a failed REGISTER (seconds); doubles each time.
RETRY_FIRST = 5.0
#: Longest wait between attempts (seconds).
RETRY_MAX = 300.0
#: Longest expiry taken from a registrar's 423 Min-Expires (seconds).
MAX_EXPIRES = 86400


class RegState(enum.Enum):
    """Where one registration stands (C{cig-cli status})."""

    UNREGISTERED = "UNREGISTERED"
    REGISTERING = "REGISTERING"
    REGISTERED = "REGISTERED"
    FAILED = "FAILED"


_R = RegState
REG_MOVES = check_table(
    RegState,
    {
        _R.UNREGISTERED: frozenset({_R.REGISTERING}),
        _R.REGISTERING: frozenset({_R.REGISTERED, _R.FAILED, _R.UNREGISTERED}),
        # A refresh keeps REGISTERED until its answer.
        _R.REGISTERED: frozenset({_R.REGISTERED, _R.FAILED, _R.UNREGISTERED}),
        _R.FAILED: frozenset({_R.REGISTERING, _R.UNREGISTERED}),
    },
)


def granted_expiry(response: Response, contact: str, asked: int) -> int:
    """
    The expiry a 2xx to our REGISTER grants our contact: its Contact's
    C{expires}, else the C{Expires} header, else C{asked}.
    """
    try:
        ours = parse_uri(contact)
    except SipParseError:
        ours = None
    try:
        contacts = response.headers.values("Contact")
    except SipParseError:
        contacts = []
    for value in contacts:
        try:
            found = parse_name_addr(value)
            uri = parse_uri(found.uri)
        except SipParseError:
            continue
        if ours is not None and (uri.host, uri.port, uri.user) == (ours.host, ours.port, ours.user):
            expires = param(found.params, "expires")
            if (
                expires is not None
                and expires.isascii()
                and expires.isdigit()
                and len(expires) <= 10
            ):
                return int(expires)
    header = (response.headers.get("Expires") or "").strip()
    if header.isascii() and header.isdigit() and len(header) <= 10:
        return int(header)
    return asked


def refresh_after(granted: int) -> float:
    """Seconds until the refresh of a binding granted for C{granted} seconds."""
    if granted > 2 * REFRESH_MARGIN:
        return granted - REFRESH_MARGIN
    return max(granted / 2, 1.0)


@attrs.define(eq=False)
class Registration:
    """One account's registration: REGISTER, refresh, retry."""

    sif: Sif
    account: PbxAccount
    target: Target
    credentials: Credentials
    notify: Callable[[str, str], object] = lambda unit, event: None
    lifecycle: Lifecycle[RegState] = attrs.field(
        factory=lambda: Lifecycle("Registration", REG_MOVES, RegState.UNREGISTERED)
    )
    call_id: str = attrs.field(factory=lambda: new_branch()[7:])
    from_tag: str = attrs.field(factory=new_tag)
    cseq: int = 0
    expires: int = 0
    failures: int = 0
    #: When the binding runs out (clock seconds), while registered.
    until: float | None = None
    timer: IDelayedCall | None = None
    #: Whether a REGISTER waits for its final answer.
    in_flight: bool = False
    #: Whether the registration was ever up (lost/regained notices).
    was_up: bool = False
    stopped: bool = False

    def __attrs_post_init__(self) -> None:
        self.expires = self.account.register or 3600

    @property
    def state(self) -> RegState:
        return self.lifecycle.state

    @property
    def aor(self) -> str:
        """The address of record: C{aor}, or C{sip:USERNAME@HOST[:PORT]}."""
        if self.account.aor is not None:
            return self.account.aor
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        port = "" if self.target.port == 5060 else f":{self.target.port}"
        return f"sip:{self.account.username}@{host}{port}"

    def local_host(self) -> str:
        bind = self.sif.config.sip.bind
        return "127.0.0.1" if is_wildcard(bind) else bind

    def contact(self, channel: Channel) -> str:
        """Our contact URI (where the PBX sends calls for the AOR)."""
        user = parse_uri(self.aor).user or self.account.username
        uri = f"sip:{user}@{self.local_host()}:{self.sif.contact_port(channel)}"
        return uri + contact_transport(channel)

    def start(self) -> None:
        """Register now."""
        self.stopped = False
        self._attempt()

    def stop(self) -> None:
        """Stop refreshing (the binding is left to expire at the registrar)."""
        self.stopped = True
        self._cancel_timer()
        if self.lifecycle.state is not RegState.UNREGISTERED:
            self.lifecycle.move(RegState.UNREGISTERED)
        self.until = None

    def _cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _attempt(self) -> None:
        self.timer = None
        if self.stopped or self.in_flight:
            return
        if self.lifecycle.state in (RegState.UNREGISTERED, RegState.FAILED):
            self.lifecycle.move(RegState.REGISTERING)
        self.in_flight = True
        self.sif.channel_for(self.target).addCallbacks(self._send, self._unreachable)

    def _unreachable(self, failure: Failure) -> None:
        self.in_flight = False
        self._failed(f"cannot reach {self.target}: {failure.getErrorMessage()}")

    def request(self, channel: Channel) -> Request:
        """The next REGISTER."""
        self.cseq += 1
        local = self.local_host()
        aor = self.aor
        headers = Headers(
            (
                ("Via", self.sif.via(channel, local)),
                ("Max-Forwards", "70"),
                ("From", f"<{aor}>;tag={self.from_tag}"),
                ("To", f"<{aor}>"),
                ("Call-ID", f"{self.call_id}@{local}"),
                ("CSeq", f"{self.cseq} REGISTER"),
                ("Contact", f"<{self.contact(channel)}>;expires={self.expires}"),
                ("Expires", str(self.expires)),
                ("Allow", self.sif.allow()),
            )
        )
        return Request("REGISTER", self.target.uri, headers)

    def _send(self, channel: Channel) -> None:
        if self.stopped:
            self.in_flight = False
            return
        register = self.request(channel)
        contact = self.contact(channel)

        def resent(request: Request) -> None:
            self.cseq = request.cseq.number

        self.sif.send_request(
            register,
            channel,
            self.credentials,
            lambda response: self._response(response, contact),
            lambda: self._timed_out(),
            resent,
        )

    def _timed_out(self) -> None:
        self.in_flight = False
        self._failed("no answer")

    def _response(self, response: Response, contact: str) -> None:
        status = response.status
        if status < 200:
            return
        self.in_flight = False
        if self.stopped:
            return
        if status < 300:
            self._registered(granted_expiry(response, contact, self.expires))
            return
        if status == 423:
            minimum = (response.headers.get("Min-Expires") or "").strip()
            if (
                minimum.isascii()
                and minimum.isdigit()
                and self.expires < int(minimum) <= MAX_EXPIRES
            ):
                log.info(
                    "registrar for {aor} wants at least {seconds} s",
                    aor=self.aor,
                    seconds=int(minimum),
                )
                self.expires = int(minimum)
                self._attempt()
                return
        self._failed(f"{status} {response.reason}")

    def _registered(self, granted: int) -> None:
        if granted <= 0:
            self._failed("registrar granted no time")
            return
        before = self.lifecycle.state
        self.failures = 0
        self.lifecycle.move(RegState.REGISTERED)
        self.until = self.sif.clock.seconds() + granted
        self._cancel_timer()
        self.timer = self.sif.clock.callLater(refresh_after(granted), self._attempt)
        if before is not RegState.REGISTERED:
            log.info(
                "registered {aor} at {server} for {seconds} s",
                aor=self.aor,
                server=str(self.target),
                seconds=granted,
            )
            if self.was_up:
                self.notify("cig-server", "registration-regained")
            self.was_up = True

    def _failed(self, why: str) -> None:
        if self.stopped:
            return
        before = self.lifecycle.state
        self.lifecycle.move(RegState.FAILED)
        self.until = None
        delay = min(RETRY_FIRST * 2**self.failures, RETRY_MAX)
        self.failures = min(self.failures + 1, 16)
        self._cancel_timer()
        self.timer = self.sif.clock.callLater(delay, self._attempt)
        if before is RegState.REGISTERED:
            log.warn(
                "registration of {aor} at {server} lost: {why}; retrying in {delay} s",
                aor=self.aor,
                server=str(self.target),
                why=why,
                delay=delay,
            )
            self.notify("cig-server", "registration-lost")
        else:
            log.warn(
                "registration of {aor} at {server} failed: {why}; retrying in {delay} s",
                aor=self.aor,
                server=str(self.target),
                why=why,
                delay=delay,
            )

    def row(self) -> tuple[str, str]:
        """(label, state) for C{cig-cli status}."""
        state = self.lifecycle.state.value
        if self.until is not None:
            left = max(0, int(self.until - self.sif.clock.seconds()))
            state += f" ({left} s left)"
        return f"REG {self.aor}", state


@attrs.define(eq=False)
class Registrations:
    """Every account's registration."""

    sif: Sif
    notify: Callable[[str, str], object] = lambda unit, event: None
    all: list[Registration] = attrs.field(factory=list)

    def load(self, keyring: Keyring) -> None:
        """One registration per account with C{register}."""
        self.all = [
            Registration(self.sif, account, target, credentials, self.notify)
            for account, target, credentials in keyring.accounts
            if account.register is not None
        ]

    def start(self) -> None:
        for registration in self.all:
            registration.start()

    def stop(self) -> None:
        for registration in self.all:
            registration.stop()

    def rows(self) -> list[tuple[str, str]]:
        return [registration.row() for registration in self.all]


class TrunkService(service.Service):
    """
    Reads the C{pbx_account} passwords into the SIF's keyring and the TLS
    files (while privileged), then keeps the registrations up while
    running.
    """

    def __init__(self, sif: Sif, registrations: Registrations) -> None:
        self.sif = sif
        self.registrations = registrations
        self.loaded = False
        self.tls = TlsMaterial()

    def load(self) -> None:
        """Read the secrets once; L{StartupError} if one cannot be used."""
        if self.loaded:
            return
        try:
            keyring = Keyring.load(self.sif.config.sip.pbx_accounts)
            blocks = self.sif.config.sip.pbx_challenges
            challenger = Challenger.load(self.sif.clock, blocks, self.sif.peers) if blocks else None
            self.tls = load_tls(self.sif.config.sip)
        except CredentialsError as exc:
            raise StartupError(str(exc)) from exc
        self.sif.keyring = keyring
        self.sif.challenger = challenger
        self.registrations.load(keyring)
        self.loaded = True

    def privilegedStartService(self) -> None:
        self.load()
        service.Service.privilegedStartService(self)

    def startService(self) -> None:
        self.load()
        service.Service.startService(self)
        self.registrations.start()

    def stopService(self) -> None:
        service.Service.stopService(self)
        self.registrations.stop()
