"""
Digest challenges of requests from the PBX (the server's side of RFC 3261
section 22, with the algorithms of RFC 8760), sans-IO.

C{pbx_challenge "ADDR|CIDR|NAME" { ... }} in cig.conf names a PBX whose
requests must carry credentials (a NAME is one of the maps' PBX hosts, at
the addresses L{SipPeers} last looked it up to), in addition to the source-address check
of L{cryptify.cig.sif.peers}. L{Challenger.check} says, for one request
from one address, whether it passes or what to answer:

 - Which requests: those from an address of a C{pbx_challenge} block's
   peer that are out of a dialog (INVITE, OPTIONS, MESSAGE, REFER, ...);
   never ACK or CANCEL (RFC 3261 22.1: they cannot be resent with
   credentials), never requests in a dialog the CIG knows (the SIF skips
   those: the dialog was opened by an authenticated INVITE, or by the CIG).
 - No credentials for our realm: 401 with one C{WWW-Authenticate} per
   algorithm the block offers (SHA-256 first, then MD5; RFC 8760 2.4),
   each with C{qop="auth"} and a fresh nonce.
 - Nonces are stateless: C{base64url(issued | salt | HMAC-SHA-256(secret,
   issued | salt | peer address | realm))}, the secret random per start.
   A nonce older than L{NONCE_LIFETIME}, issued to another address, or
   not ours (a CIG restarted since) gets 401 with C{stale=true}: the
   client answers again without asking anyone for a password.
 - Replays: each nonce's highest nonce count is kept (at most
   L{MAX_NONCES} nonces, the oldest forgotten first; a forgotten nonce is
   stale from then on). A count not above the last is a replay: 401 with
   C{stale=true}. Counts are only recorded for credentials that verified.
 - The right user, realm, algorithm offered, C{qop=auth}, the request's
   own URI, and a response compared in constant time
   (C{hmac.compare_digest}). Wrong credentials get 401 again (not 403:
   a client may have picked up an old password and asks its operator);
   each source is logged once and then summed up once a minute
   (L{Refusals}).
 - Limits: at most L{MAX_AUTH_HEADERS} C{Authorization} headers looked
   at, each at most 4096 characters and 32 parameters; credentials that
   cannot be read get 400 with a Warning, never an exception.
 - The password is never logged, shown in a repr or an error message.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import ipaddress
import secrets
import struct
from collections import OrderedDict
from collections.abc import Callable

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from cryptify.config.cig_model import PbxChallenge
from cryptify.protocols.sip.digest import (
    Challenge,
    Credentials,
    DigestAnswer,
    DigestError,
    challenge_value,
    parse_authorization,
    response_digest,
)
from cryptify.protocols.sip.message import Request

from .auth import MAX_PASSWORD_FILE, CredentialsError, read_private_file
from .peers import IPAddress, IPNetwork, Refusals, SipPeers, _address

log = Logger(namespace="cryptify.cig.sif.challenge")

#: Seconds a nonce is good for; older ones get C{stale=true}.
NONCE_LIFETIME = 300.0
#: Nonces whose nonce count is remembered.
MAX_NONCES = 10000
#: Most C{Authorization} headers of one request looked at.
MAX_AUTH_HEADERS = 8
#: Seconds a nonce may seem to come from the future (a clock step).
CLOCK_SLACK = 5.0
_NONCE = struct.Struct(">Q8s16s")


class Verdict(enum.Enum):
    """What a request from a challenged PBX gets."""

    #: Credentials that verified: the request goes on.
    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    #: No credentials (for our realm): 401.
    CHALLENGE = "challenge"
    #: An old, foreign or replayed nonce: 401 with C{stale=true}.
    STALE = "stale"
    #: Wrong credentials: 401 again, logged.
    REFUSED = "refused"
    #: Credentials that cannot be read: 400.
    BAD = "bad"


@attrs.frozen
class Decision:
    """A verdict and what it answers: the status, its headers, why (for logs)."""

    verdict: Verdict
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    why: str = ""


@attrs.frozen
class Guard:
    """
    One C{pbx_challenge} block with its password read: its peer is a
    C{network}, or a host C{name} the SIF's peers look up.
    """

    network: IPNetwork | None
    realm: str
    credentials: Credentials
    algorithms: tuple[str, ...]
    name: str | None = None


def load_guard(block: PbxChallenge) -> Guard:
    """
    The block with its password: C{password}, or the first line of
    C{password_file} (a regular 0600 file, as for C{pbx_account}).

    @raise CredentialsError: for a missing, unsafe, empty or too long file.
    """
    password = block.password
    if password is None:
        assert block.password_file is not None
        data = read_private_file(block.password_file, "password_file", MAX_PASSWORD_FILE)
        try:
            password = data.decode("utf-8").splitlines()[0] if data.strip() else ""
        except UnicodeDecodeError:
            raise CredentialsError(f"password_file {block.password_file}: not UTF-8 text") from None
        if not password:
            raise CredentialsError(f"password_file {block.password_file}: empty")
    try:
        network: IPNetwork | None = ipaddress.ip_network(block.peer)
        name = None
    except ValueError:
        network, name = None, block.peer
    return Guard(
        network, block.realm, Credentials(block.username, password), block.algorithms, name
    )


@attrs.define(eq=False)
class Challenger:
    """The CIG's digest checks of requests from its PBXs (see the module)."""

    clock: IReactorTime
    guards: tuple[Guard, ...] = ()
    secret: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), repr=False)
    lifetime: float = NONCE_LIFETIME
    max_nonces: int = MAX_NONCES
    #: Each nonce seen in verified credentials: its highest count, when issued.
    counts: OrderedDict[str, tuple[int, int]] = attrs.field(factory=OrderedDict, init=False)
    #: Nonces issued at or before this (and not in C{counts}) were forgotten.
    floor: int = attrs.field(default=-1, init=False)
    refusals: Refusals = attrs.field(init=False)
    #: The addresses a PBX host name was last looked up to (L{SipPeers}).
    addresses_of: Callable[[str], frozenset[IPAddress]] = lambda name: frozenset()

    def __attrs_post_init__(self) -> None:
        self.refusals = Refusals(self.clock)

    @classmethod
    def load(
        cls, clock: IReactorTime, blocks: tuple[PbxChallenge, ...], peers: SipPeers | None = None
    ) -> Challenger:
        """
        Every block with its password read; a host name's addresses are
        those C{peers} look up for it.

        @raise CredentialsError: for a password that cannot be read, or a
            host name that is not a PBX host of the maps (only those are
            looked up).
        """
        guards = tuple(load_guard(block) for block in blocks)
        looked_up = peers.names if peers is not None else ()
        for guard in guards:
            if guard.name is not None and guard.name not in looked_up:
                raise CredentialsError(
                    f"pbx_challenge {guard.name}: not a PBX host name of the tel interface's"
                    " maps (give its address or network instead)"
                )
        challenger = cls(clock, guards)
        if peers is not None:
            challenger.addresses_of = lambda name: peers.resolved.get(name, frozenset())
        return challenger

    def guard_for(self, host: str) -> Guard | None:
        """The block whose peer has address C{host}, if any."""
        address = _address(host)
        if address is None:
            return None
        for guard in self.guards:
            if guard.network is not None:
                if address in guard.network:
                    return guard
            elif guard.name is not None and address in self.addresses_of(guard.name):
                return guard
        return None

    # --- nonces ------------------------------------------------------------
    def _mac(self, issued: int, salt: bytes, host: str, realm: str) -> bytes:
        data = b"|".join([str(issued).encode(), salt, host.encode(), realm.encode("utf-8")])
        return hmac.new(self.secret, data, hashlib.sha256).digest()[:16]

    def nonce(self, host: str, realm: str) -> str:
        """A fresh nonce for C{host} in C{realm}."""
        issued = int(self.clock.seconds())
        salt = secrets.token_bytes(8)
        raw = _NONCE.pack(issued, salt, self._mac(issued, salt, host, realm))
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def issued(self, nonce: str, host: str, realm: str) -> int | None:
        """When C{nonce} was issued to C{host}, if it is ours, theirs and fresh."""
        if len(nonce) != 43:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=")
        except ValueError:
            return None
        if len(raw) != _NONCE.size:
            return None
        issued, salt, mac = _NONCE.unpack(raw)
        if not hmac.compare_digest(mac, self._mac(issued, salt, host, realm)):
            return None
        age = self.clock.seconds() - issued
        if age > self.lifetime or age < -CLOCK_SLACK:
            return None
        return int(issued)

    def _fresh_count(self, nonce: str, issued: int, nc: int) -> bool:
        """Record C{nc} for C{nonce}; False for a replayed or forgotten one."""
        known = self.counts.get(nonce)
        if known is None:
            if issued <= self.floor:
                return False
        elif nc <= known[0]:
            return False
        self.counts[nonce] = (nc, issued)
        self.counts.move_to_end(nonce)
        while len(self.counts) > self.max_nonces:
            _, (_, forgotten) = self.counts.popitem(last=False)
            self.floor = max(self.floor, forgotten)
        return True

    # --- requests ----------------------------------------------------------
    def check(self, request: Request, host: str) -> Decision:
        """What C{request} from address C{host} gets (PASS when not challenged)."""
        guard = self.guard_for(host)
        if guard is None or request.method in ("ACK", "CANCEL"):
            return Decision(Verdict.PASS)
        answer, unreadable = self._answer_for(request, guard)
        if answer is None:
            if unreadable is not None:
                text = unreadable.replace('"', "'").replace("\\", "/")[:100]
                warning = f'399 cig "unreadable credentials: {text}"'
                return Decision(Verdict.BAD, 400, (("Warning", warning),), unreadable)
            return self._challenge(guard, host, Verdict.CHALLENGE, "no credentials")
        verdict, why = self._verify(request, host, guard, answer)
        if verdict is Verdict.PASS:
            return Decision(Verdict.PASS)
        if verdict is Verdict.REFUSED:
            self.refusals.refused(host, f"digest credentials refused ({request.method}: {why})")
        return self._challenge(guard, host, verdict, why)

    def _answer_for(self, request: Request, guard: Guard) -> tuple[DigestAnswer | None, str | None]:
        """The credentials for our realm, or why none could be read."""
        unreadable: str | None = None
        for value in request.headers.get_all("Authorization")[:MAX_AUTH_HEADERS]:
            if (value.split(None, 1) or [""])[0].lower() != "digest":
                continue  # Basic and other schemes are not ours: as no credentials
            try:
                answer = parse_authorization(value)
            except DigestError as exc:
                unreadable = exc.reason
                continue
            if answer.realm == guard.realm:
                return answer, None
        return None, unreadable

    def _verify(
        self, request: Request, host: str, guard: Guard, answer: DigestAnswer
    ) -> tuple[Verdict, str]:
        if answer.algorithm not in guard.algorithms or answer.qop != "auth":
            return Verdict.CHALLENGE, "an algorithm or qop not offered"
        issued = self.issued(answer.nonce, host, guard.realm)
        if issued is None:
            return Verdict.STALE, "an old or foreign nonce"
        if answer.username != guard.credentials.username:
            return Verdict.REFUSED, "unknown user"
        if answer.uri != request.uri:
            return Verdict.REFUSED, "credentials for another URI"
        challenge = Challenge(
            "WWW-Authenticate", guard.realm, answer.nonce, answer.algorithm, ("auth",)
        )
        expected, _ = response_digest(
            challenge, guard.credentials, request.method, answer.uri, answer.cnonce, answer.nc
        )
        if not hmac.compare_digest(expected.encode(), answer.response.lower().encode()):
            return Verdict.REFUSED, "wrong password"
        if not self._fresh_count(answer.nonce, issued, answer.nc):
            return Verdict.STALE, "a replayed nonce count"
        return Verdict.PASS, ""

    def _challenge(self, guard: Guard, host: str, verdict: Verdict, why: str) -> Decision:
        nonce = self.nonce(host, guard.realm)
        stale = verdict is Verdict.STALE
        headers = tuple(
            ("WWW-Authenticate", challenge_value(guard.realm, nonce, algorithm, stale))
            for algorithm in guard.algorithms
        )
        return Decision(verdict, 401, headers, why)

    def stop(self) -> None:
        self.refusals.stop()
