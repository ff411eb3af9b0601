"""
The CIG's credentials at its PBXs, and requests that answer a 401/407.

L{Keyring} holds the C{pbx_account} credentials of C{cig.conf} (passwords
read once at start from their 0600 files, L{load_credentials}) and says
which to use for a request: the account whose server URI names the same
host and port as the request's target; for requests in a dialog the PBX
opened, the account whose server the PBX's address belongs to; and when
only one account is configured, that one.

L{ChallengedRequest} sends a request in a client transaction and, when
the answer is 401 or 407 with a challenge we can answer, sends it again
with C{Authorization}/C{Proxy-Authorization} (RFC 3261 22.2, 22.3): a
new branch, the next CSeq, the same Call-ID and tags. Each realm's
challenge is answered once; the same realm challenging again means the
credentials were refused, and the 401/407 goes to the caller as the
request's final answer, unless the server says the nonce was C{stale}.
At most L{MAX_RESENDS} resends per request.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.logger import Logger

from cryptify.config.cig_model import PbxAccount
from cryptify.crypto.errors import KeyFileError
from cryptify.crypto.securefile import read_secret_file
from cryptify.protocols.sip.address import parse_via
from cryptify.protocols.sip.dialog import new_branch
from cryptify.protocols.sip.digest import (
    Challenge,
    Credentials,
    DigestError,
    authorization,
    challenges_of,
    choose,
)
from cryptify.protocols.sip.errors import SipParseError
from cryptify.protocols.sip.locate import LocateError, Target, locate
from cryptify.protocols.sip.message import Request, Response
from cryptify.protocols.sip.transaction import Channel, TransactionLayer

log = Logger(namespace="cryptify.cig.sif.auth")

#: Most times one request is sent again with credentials.
MAX_RESENDS = 3
#: Longest password file read.
MAX_PASSWORD_FILE = 1024


class CredentialsError(Exception):
    """A password file that cannot be used; the message says why (never its content)."""


def read_private_file(path: str, what: str, limit: int) -> bytes:
    """
    The content of a secret file (a password, a private key), read with
    the project's one secret-file reader
    (:func:`~cryptify.crypto.securefile.read_secret_file`: a regular file,
    not a symbolic link, no access for group or others, at most C{limit}
    bytes).

    @raise CredentialsError: naming C{what} and the path, never the content.
    """
    try:
        return read_secret_file(path, limit)
    except KeyFileError as exc:
        raise CredentialsError(f"{what}: {exc}") from None


def load_credentials(account: PbxAccount) -> Credentials:
    """
    The account's user name and password: from C{password} in cig.conf,
    or the first line of C{password_file}, which must be a regular file
    no one but its owner may read or write (0600 or stricter).

    @raise CredentialsError: for a missing, unsafe, empty or too long file.
    """
    if account.password is not None:
        return Credentials(account.username, account.password)
    path = account.password_file
    assert path is not None
    data = read_private_file(path, "password_file", MAX_PASSWORD_FILE)
    try:
        password = data.decode("utf-8").splitlines()[0] if data.strip() else ""
    except UnicodeDecodeError:
        raise CredentialsError(f"password_file {path}: not UTF-8 text") from None
    if not password:
        raise CredentialsError(f"password_file {path}: empty")
    return Credentials(account.username, password)


def _same_server(one: Target, other: Target) -> bool:
    return one.host.lower() == other.host.lower() and one.port == other.port


@attrs.define(eq=False)
class Keyring:
    """Which credentials a request to, or in a dialog with, a PBX uses."""

    accounts: tuple[tuple[PbxAccount, Target, Credentials], ...] = ()
    #: PBX addresses learnt when a server's name was looked up.
    addresses: dict[str, Credentials] = attrs.field(factory=dict)

    @classmethod
    def load(cls, accounts: tuple[PbxAccount, ...]) -> Keyring:
        """
        Every account with its password read.

        @raise CredentialsError: when a password cannot be read, or a
            server URI names no server.
        """
        found: list[tuple[PbxAccount, Target, Credentials]] = []
        for account in accounts:
            try:
                target = locate(account.server)
            except LocateError as exc:
                raise CredentialsError(f"pbx_account {account.server}: {exc}") from None
            found.append((account, target, load_credentials(account)))
        return cls(tuple(found))

    def for_target(self, target: Target) -> Credentials | None:
        """Credentials for a new request to C{target}."""
        for _, server, credentials in self.accounts:
            if _same_server(server, target):
                return credentials
        return self._only()

    def for_address(self, address: str) -> Credentials | None:
        """Credentials for a request in a dialog with the PBX at C{address}."""
        if address in self.addresses:
            return self.addresses[address]
        for _, server, credentials in self.accounts:
            if server.host == address:
                return credentials
        return self._only()

    def learn(self, address: str, credentials: Credentials) -> None:
        """A server's name was looked up: requests from C{address} are its."""
        self.addresses[address] = credentials

    def _only(self) -> Credentials | None:
        return self.accounts[0][2] if len(self.accounts) == 1 else None


def with_credentials(
    request: Request,
    answers: dict[tuple[str, str], tuple[Challenge, int]],
    credentials: Credentials,
) -> Request:
    """
    C{request} once more: a new branch, the next CSeq and one credentials
    header for each challenge in C{answers} (keyed by header and realm,
    with its nonce count).

    @raise DigestError: for a challenge we cannot answer.
    @raise SipParseError: for a request without a readable Via or CSeq.
    """
    headers = request.headers.without("Authorization").without("Proxy-Authorization")
    via = parse_via(request.headers.values("Via")[0]).with_params(branch=new_branch())
    headers = headers.set("Via", str(via))
    headers = headers.set("CSeq", f"{request.cseq.number + 1} {request.method}")
    for challenge, count in answers.values():
        value = authorization(
            challenge, credentials, request.method, request.uri, nc=count, body=request.body
        )
        headers = headers.add(challenge.answer_header, value)
    return Request(request.method, request.uri, headers, request.body)


@attrs.define(eq=False)
class ChallengedRequest:
    """
    A request that is sent again with credentials when challenged.
    C{on_resend} hears each new version (a call needs its latest INVITE
    for CANCEL, ACK and the dialog); C{on_response} hears every other
    response, and a challenge that is not answered.
    """

    layer: TransactionLayer
    channel: Channel
    request: Request
    credentials: Credentials | None
    on_response: Callable[[Response], None]
    on_timeout: Callable[[], None]
    on_resend: Callable[[Request], None] = lambda request: None
    answers: dict[tuple[str, str], tuple[Challenge, int]] = attrs.field(factory=dict)
    resends: int = 0

    def send(self) -> None:
        """Send the request in a new client transaction."""
        self.layer.request(self.request, self.channel, self._response, self.on_timeout)

    def _response(self, response: Response) -> None:
        if response.status in (401, 407):
            again = self._again(response)
            if again is not None:
                self.request = again
                self.resends += 1
                self.on_resend(again)
                self.send()
                return
        self.on_response(response)

    def _again(self, response: Response) -> Request | None:
        """The request with credentials for C{response}'s challenge, or None."""
        if self.credentials is None:
            log.info(
                "{method} to {uri} challenged ({status}); no pbx_account credentials for it",
                method=self.request.method,
                uri=self.request.uri,
                status=response.status,
            )
            return None
        if self.resends >= MAX_RESENDS:
            return None
        challenge = choose(challenges_of(response))
        if challenge is None:
            log.info(
                "{method} to {uri} challenged ({status}) with no Digest challenge we support",
                method=self.request.method,
                uri=self.request.uri,
                status=response.status,
            )
            return None
        key = (challenge.answer_header, challenge.realm)
        previous = self.answers.get(key)
        if previous is not None and not challenge.stale:
            log.warn(
                "{method} to {uri}: credentials of {user} refused for realm {realm}",
                method=self.request.method,
                uri=self.request.uri,
                user=self.credentials.username,
                realm=challenge.realm,
            )
            return None
        # A nonce answered before is answered again with the next count.
        for other, (earlier, count) in list(self.answers.items()):
            self.answers[other] = (earlier, count + 1)
        self.answers[key] = (challenge, 1)
        try:
            return with_credentials(self.request, self.answers, self.credentials)
        except (DigestError, SipParseError):
            return None
