"""Messages on the client side (sans-IO): post, receive once, confirm.

``post {to, content, key}`` is answered ``posted {message}`` once the CRS
has stored it.  ``key`` is 16 random octets drawn for each new message
(:func:`new_message_key`) and sent again, unchanged, only when the same
message is retried (after ``error unavailable`` or a lost connection): the
CRS then answers the first message's id instead of storing it twice, and
no two messages of this client -- in this process or any other -- share
a key. the recipient's ``delivered`` comes back later as
``delivered {message}``.  Every incoming ``message`` is confirmed with
``delivered`` (also a repeat, so that the CRS stops sending it), but is
reported to the application only once: ids already seen are remembered
(the last :data:`SEEN_LIMIT`).  After each attach the client sends
``fetch`` to get whatever was stored while it was away.

``content`` is the end-to-end payload of :mod:`cryptify.protocols.message_payload`
(docs/messages.md): :class:`MessageCrypto` seals a message once, before the
first attempt (every retry carries the same octets, as the retry scope
requires), and opens each one received.  A :class:`Messenger` given a
``crypto`` reports every received ``content`` opened (:attr:`Received.opened`)
or refused (:attr:`Received.refused`, never its text), and marks a sealed
message seen before under another id as a repeat (:attr:`Received.repeat_of`).

Other security domains (``docs/interworking.md``): a post with
``to_account`` naming another account carries ``to-account`` and is sealed
with that domain's KMS Public Key Z (:attr:`MessageCrypto.domains`); a
received message is verified with our domain's KPAK, else with each known
domain's (:attr:`Received.account` names the one that verified).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import attrs

from cryptify.client.session import Answered, ClientEvent, ClientSession, Incoming
from cryptify.crypto.domains import PeerDomain
from cryptify.crypto.eccsi import EccsiSigner
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.identity import period_of
from cryptify.crypto.keymaterial import KeyMaterial, PeriodKeys
from cryptify.crypto.sakke import SakkePublicKey, SakkeReceiver
from cryptify.protocols.message_payload import (
    MessageBody,
    OpenedMessage,
    PayloadError,
    open_payload,
    seal,
)
from cryptify.protocols.umsg import base_uri

#: Message ids remembered for de-duplication.
SEEN_LIMIT = 100_000
#: Octets of a message key.
KEY_OCTETS = 16
#: Fingerprints of opened messages remembered to recognise repeats.
FINGERPRINT_LIMIT = 10_000
#: Refusals after which the same post (same key) may be sent again.
RETRYABLE = frozenset(("unavailable", "internal"))


def new_message_key() -> bytes:
    """A fresh message key: 128 random bits, unique to one message."""
    return os.urandom(KEY_OCTETS)


@attrs.frozen
class Posted:
    """The CRS stored our message (``message`` is its id), or refused it (``error``).

    ``key`` is the message key the post carried (retry with it);
    ``retry_after`` the CRS's hint in ms with ``error unavailable``.
    """

    request_id: int
    message: str | None
    error: str | None = None
    key: bytes = b""
    retry_after: int | None = None

    @property
    def retryable(self) -> bool:
        """Whether sending the same post again (same key) may succeed."""
        return self.error in RETRYABLE


@attrs.frozen
class Received:
    """A message for us, reported once.

    With a :class:`MessageCrypto`, a ``content`` is reported either
    ``opened`` (it verified and decrypted) or ``refused`` (why it did not;
    its octets must never be shown as a message), and ``repeat_of`` names
    the earlier message id of the same sealed message, if it came before.
    """

    message: str
    sender: str
    to: str
    time_ms: int
    content: bytes | None
    ack: str | None
    opened: OpenedMessage | None = None
    refused: PayloadError | None = None
    repeat_of: str | None = None
    #: The sender's security domain when it is not ours (its KPAK verified).
    account: str | None = None


@attrs.frozen
class Receipt:
    """The recipient confirmed one of our messages."""

    message: str


MessageEvent = Posted | Received | Receipt

_Keys = tuple[PeriodKeys, EccsiSigner, SakkePublicKey, SakkeReceiver]


@attrs.define(eq=False)
class MessageCrypto:
    """Seals our messages and opens those for us, with our key material.

    The keys of each period are built once (signer, Z, receiver) and kept.
    """

    material: KeyMaterial = attrs.field(repr=False)
    #: Other security domains' public KMS parameters, by account.
    domains: dict[str, PeerDomain] = attrs.field(factory=dict)
    _keys: dict[str, _Keys] = attrs.field(factory=dict, repr=False)

    @property
    def uri(self) -> str:
        return self.material.uri

    def period_keys(self, period: str) -> _Keys:
        """(keys, signer, Z, receiver) of ``period``.

        @raise CryptoError: no keys for that period.
        """
        if period not in self._keys:
            keys = self.material.for_period(period)
            z = keys.public_key()
            self._keys[period] = (keys, keys.signer(), z, keys.receiver(z))
        return self._keys[period]

    def seal(
        self,
        to: str,
        body: MessageBody,
        now: float,
        sender: str | None = None,
        to_account: str | None = None,
    ) -> bytes:
        """The ``content`` of a post of ``body`` to ``to``, sealed at ``now``.

        ``sender`` (default: our URI) may carry an extension of our number.
        ``to_account``: the recipient's security domain, when it is another.

        @raise PayloadError: a bad URI, no keys for the period of ``now``
            (``wrong-period``), no parameters of ``to_account``
            (``malformed``), or a message too large for a post.
        """
        period = period_of(now)
        try:
            _, signer, z, _ = self.period_keys(period)
        except CryptoError as exc:
            raise PayloadError("wrong-period", str(exc)) from None
        if to_account is not None and to_account != self.material.account:
            domain = self.domains.get(to_account)
            if domain is None:
                raise PayloadError(
                    "malformed", f"no public KMS parameters for security domain {to_account}"
                )
            try:
                z = domain.public_key(period)
            except CryptoError as exc:
                raise PayloadError("wrong-period", str(exc)) from None
        return seal(body, sender=sender or self.uri, recipient=to, signer=signer, z=z, now=now)

    def _keys_for(self, period: str) -> tuple[bytes, SakkeReceiver] | None:
        try:
            keys, _, _, receiver = self.period_keys(period)
        except CryptoError:
            return None
        return keys.kpak, receiver

    def open(self, content: bytes, sender: str) -> OpenedMessage:
        """Check and open ``content`` delivered from ``sender`` (the CRS's ``from``).

        The header's ``from`` may carry an extension (a CIG writes for a
        PBX user as ``tel:+8888;101``); its number must be ``sender``'s.

        @raise PayloadError: the first check that failed (docs/messages.md).
        """
        return self.open_from(content, sender)[0]

    def open_from(self, content: bytes, sender: str) -> tuple[OpenedMessage, str | None]:
        """:meth:`open`, and the sender's security domain when it is not ours
        (our KPAK is tried first, then each other domain's of the period)."""
        try:
            opened = open_payload(content, me=base_uri(self.uri), keys_for=self._keys_for)
            account = None
        except PayloadError as exc:
            if exc.reason != "bad-signature" or not self.domains:
                raise
            opened, account = self._open_foreign(content, exc)
        if base_uri(opened.sender) != base_uri(sender):
            raise PayloadError(
                "sender-mismatch", f"signed as {opened.sender}, delivered from {sender}"
            )
        return opened, account

    def _open_foreign(self, content: bytes, first: PayloadError) -> tuple[OpenedMessage, str]:
        for account, domain in self.domains.items():

            def keys_for(
                period: str, domain: PeerDomain = domain
            ) -> tuple[bytes, SakkeReceiver] | None:
                ours = self._keys_for(period)
                if ours is None:
                    return None
                return domain.for_period(period).kpak, ours[1]

            try:
                return open_payload(content, me=base_uri(self.uri), keys_for=keys_for), account
            except PayloadError as exc:
                if exc.reason not in ("bad-signature", "wrong-period"):
                    raise
        raise first


@attrs.define(eq=False)
class Messenger:
    """Posting, receiving and confirming messages over a session."""

    session: ClientSession | None = None
    #: Opens received content (None: content is reported as it came).
    crypto: MessageCrypto | None = None
    #: Posts not answered yet: request id -> message key.
    pending: dict[int, bytes] = attrs.field(factory=dict)
    seen: OrderedDict[str, None] = attrs.field(factory=OrderedDict)
    #: Fingerprint of each opened message -> the id it first came with.
    fingerprints: OrderedDict[bytes, str] = attrs.field(factory=OrderedDict)

    @property
    def attached(self) -> bool:
        return self.session is not None and self.session.state == "attached"

    def post(
        self, to: str, content: bytes, key: bytes | None = None, to_account: str | None = None
    ) -> int:
        """Post ``content`` to ``to``; returns the request id.

        ``key``: the message key of an earlier attempt of this same message
        (a retry); a new message gets a fresh one.  ``to_account``: the
        recipient's account when another operator hosts it (``to-account``).
        """
        if self.session is None or not self.attached:
            raise RuntimeError("not attached")
        key = new_message_key() if key is None else key
        extra = {} if to_account is None else {"to-account": to_account}
        request_id = self.session.request("post", to=to, content=content, key=key, **extra)
        self.pending[request_id] = key
        return request_id

    def fetch(self) -> int | None:
        """Ask for every stored message (after an attach)."""
        if self.session is None or not self.attached:
            return None
        return self.session.request("fetch")

    def connection_lost(self) -> list[MessageEvent]:
        """The connection ended: every post still unanswered is reported
        ``unavailable`` with its key, so it is retried with the same key (the
        CRS may or may not have stored it), and no later answer on a new
        connection is taken for one of these."""
        lost: list[MessageEvent] = [
            Posted(request_id, None, "unavailable", key=key)
            for request_id, key in self.pending.items()
        ]
        self.pending.clear()
        return lost

    def handle(self, event: ClientEvent) -> list[MessageEvent]:
        if isinstance(event, Answered) and event.id in self.pending:
            key = self.pending.pop(event.id)
            msg = event.message
            if msg.type == "posted":
                return [Posted(event.id, msg["message"], key=key)]
            return [
                Posted(
                    event.id,
                    None,
                    msg.get("code", msg.type),
                    key=key,
                    retry_after=msg.get("retry-after"),
                )
            ]
        if not isinstance(event, Incoming):
            return []
        msg = event.message
        if msg.type == "delivered":
            return [Receipt(msg["message"])]
        if msg.type != "message":
            return []
        message_id = msg["message"]
        if self.session is not None and self.session.state == "attached":
            self.session.notify("delivered", message=message_id)
        if message_id in self.seen:
            return []
        self.seen[message_id] = None
        if len(self.seen) > SEEN_LIMIT:
            self.seen.popitem(last=False)
        received = Received(
            message_id,
            msg["from"],
            msg["to"],
            msg["time"],
            msg.get("content"),
            msg.get("ack"),
        )
        return [self._open(received)]

    def _open(self, received: Received) -> Received:
        if self.crypto is None or received.content is None:
            return received
        try:
            opened, account = self.crypto.open_from(received.content, received.sender)
        except PayloadError as exc:
            return attrs.evolve(received, refused=exc)
        first = self.fingerprints.setdefault(opened.fingerprint, received.message)
        if len(self.fingerprints) > FINGERPRINT_LIMIT:
            self.fingerprints.popitem(last=False)
        repeat_of = first if first != received.message else None
        return attrs.evolve(received, opened=opened, repeat_of=repeat_of, account=account)
