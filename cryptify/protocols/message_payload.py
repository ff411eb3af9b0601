"""The end-to-end message payload: what a client puts in a post's ``content``.

The CRS stores and forwards ``content`` without reading it; this module is
what makes it unreadable and unalterable for everyone but the two ends.
:func:`seal` builds a payload from a :class:`MessageBody` (text and zero or
more attachments) with the sender's ECCSI signing key and the KMS public
key Z; :func:`open_payload` checks and opens one with the recipient's keys.
Pure functions of their arguments: no I/O, no clock (the caller passes
``now``), randomness only from :func:`cryptify.crypto.sakke.encapsulate`.

Layout (docs/messages.md has it field by field), all in the strict CBOR
subset of :mod:`cryptify.protocols.cbor_subset`::

    content = [ header: bstr, sealed: bstr, signature: bstr(129) ]
    header  = { "v": 1, "from": TEL_EXT, "to": TEL_EXT, "period": "YYYY-MM",
                "time": uint, "sakke": bstr(273) }
    sealed  = AES-128-GCM(key, nonce, body, aad = header)      (ciphertext || tag)
    key || nonce = HKDF-SHA-256(SSV, salt = "", info = INFO, 28 octets)
    body    = { "text": tstr, "attachments": [ { "name": tstr, "type": tstr,
                                                 "data": bstr }, ... ] }

The SSV is a fresh 16-octet random message key, carried in ``sakke`` as
RFC 6508 Encapsulated Data for the recipient's RFC 6509 identifier
(``period 00 base-uri(to) 00``), exactly as a call's MIKEY I_MESSAGE
carries its TGK.  The signature is the sender's RFC 6507 ECCSI signature,
under identifier ``period 00 base-uri(from) 00``, over every octet of
``content`` before the signature item (the array head, the header item and
the sealed item), as RFC 3830 signs a MIKEY message.

Every way a payload can fail is a :class:`PayloadError` whose ``reason``
is one of :data:`REASONS`; nothing else escapes :func:`open_payload`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal, get_args

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cryptify.crypto import eccsi, sakke
from cryptify.crypto._util import check_period
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.identity import period_of, tel_identifier
from cryptify.protocols import cbor_subset
from cryptify.protocols.umsg import MAX_CONTENT, TEL_EXT, base_uri

#: The one format version this module writes and reads.
VERSION = 1
#: HKDF info: binds the derived key and nonce to this format and version.
INFO = b"cryptify message v1\x00"
KEY_OCTETS = 16
NONCE_OCTETS = 12
TAG_OCTETS = 16
#: Octets of the signature item at the end of ``content``: CBOR head
#: ``58 81`` and the 129-octet ECCSI signature.
SIGNATURE_ITEM_OCTETS = 2 + eccsi.SIGNATURE_LENGTH
#: The last second of 9999-12-31 UTC: later times have no YYYY-MM period.
MAX_TIME = 253402300799
#: Attachments in one message, at most.
MAX_ATTACHMENTS = 16
#: Octets of an attachment's file name (UTF-8), at most.
MAX_NAME_OCTETS = 255
#: Octets of an attachment's media type, at most (RFC 6838: 127 + "/" + 127).
MAX_TYPE_OCTETS = 255

Reason = Literal[
    "too-large",
    "malformed",
    "version",
    "mis-addressed",
    "wrong-period",
    "bad-signature",
    "undecryptable",
    "sender-mismatch",
]
#: Every reason a payload is refused with.
REASONS: tuple[Reason, ...] = get_args(Reason)

_TEL_EXT = re.compile(r"\A" + TEL_EXT + r"\Z")
_HEADER_KEYS = ("v", "from", "to", "period", "time", "sakke")
_BODY_KEYS = ("text", "attachments")
_ATTACHMENT_KEYS = ("name", "type", "data")
# RFC 6838 section 4.2 restricted names: type "/" subtype.
_MEDIA_TYPE = re.compile(
    r"\A[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\Z"
)


class PayloadError(ValueError):
    """A payload that cannot be built or is refused; ``reason`` says which way."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise PayloadError("malformed", "attachment name must be text")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError("malformed", "attachment name must be UTF-8") from None
    if not 1 <= len(raw) <= MAX_NAME_OCTETS:
        raise PayloadError("malformed", f"attachment name must be 1..{MAX_NAME_OCTETS} octets")
    if name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        raise PayloadError(
            "malformed",
            "attachment name must be a plain file name (no path, no control characters)",
        )
    return name


def _check_type(media_type: object) -> str:
    if not isinstance(media_type, str) or not _MEDIA_TYPE.match(media_type):
        raise PayloadError("malformed", "attachment media type must be type/subtype (RFC 6838)")
    return media_type


def _check_octets(data: object) -> None:
    if not isinstance(data, bytes):
        raise PayloadError("malformed", "attachment data must be octets")


def _check_text(text: object) -> None:
    if not isinstance(text, str):
        raise PayloadError("malformed", "the message text must be text")


@attrs.frozen
class Attachment:
    """One attached file: a plain file name, its media type, its octets."""

    name: str = attrs.field(validator=lambda _i, _a, v: _check_name(v))
    media_type: str = attrs.field(validator=lambda _i, _a, v: _check_type(v))
    data: bytes = attrs.field(validator=lambda _i, _a, v: _check_octets(v))


def _attachments(value: Iterable[Attachment]) -> tuple[Attachment, ...]:
    return tuple(value)


def _check_attachments(_i: object, _a: object, value: tuple[Attachment, ...]) -> None:
    if len(value) > MAX_ATTACHMENTS:
        raise PayloadError("too-large", f"more than {MAX_ATTACHMENTS} attachments")


@attrs.frozen
class MessageBody:
    """What the sender wrote: the text (may be empty) and the attachments."""

    text: str = attrs.field(validator=lambda _i, _a, v: _check_text(v))
    attachments: tuple[Attachment, ...] = attrs.field(
        default=(), converter=_attachments, validator=_check_attachments
    )


@attrs.frozen
class OpenedMessage:
    """A payload that verified and decrypted.

    ``sender`` and ``recipient`` are the header's URIs (extension kept);
    ``period`` the key period both identities were taken in; ``time`` the
    sender's clock when it sealed the message (Unix seconds).
    ``fingerprint`` is SHA-256 of the signed octets: the same for every copy
    of one sealed message, different for any two seals (each has its own
    random message key), so a recipient can spot a message delivered again
    under another id.
    """

    sender: str
    recipient: str
    period: str
    time: int
    body: MessageBody
    fingerprint: bytes


def _derive(ssv: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(
        algorithm=hashes.SHA256(), length=KEY_OCTETS + NONCE_OCTETS, salt=None, info=INFO
    ).derive(ssv)
    return okm[:KEY_OCTETS], okm[KEY_OCTETS:]


def _check_uri(uri: object, what: str) -> str:
    if not isinstance(uri, str) or not _TEL_EXT.match(uri):
        raise PayloadError("malformed", f"{what} must be a tel URI (tel:+DIGITS, ;EXT allowed)")
    return uri


def _encode_body(body: MessageBody) -> bytes:
    return cbor_subset.encode(
        {
            "text": body.text,
            "attachments": [
                {"name": a.name, "type": a.media_type, "data": a.data} for a in body.attachments
            ],
        }
    )


def seal(
    body: MessageBody,
    *,
    sender: str,
    recipient: str,
    signer: eccsi.EccsiSigner,
    z: sakke.SakkePublicKey,
    now: float,
) -> bytes:
    """Build the ``content`` of a post from ``sender`` to ``recipient``.

    ``signer`` is the sender's ECCSI key for the key period of ``now`` (its
    identifier must be that period's identifier of ``base_uri(sender)``);
    ``z`` is the KMS public key of that period.

    @raise PayloadError: ``malformed`` for a bad URI or a signer of another
        identity or period, ``too-large`` when the result would not fit in
        a post (:data:`MAX_CONTENT`).
    """
    _check_uri(sender, "sender")
    _check_uri(recipient, "recipient")
    if not 0 <= now <= MAX_TIME:
        raise PayloadError("malformed", f"time must be 0..{MAX_TIME}")
    period = period_of(now)
    if signer.identity != tel_identifier(base_uri(sender), period):
        raise PayloadError("malformed", "the signing key is not the sender's for this key period")
    try:
        plaintext = _encode_body(body)
    except (cbor_subset.CborError, UnicodeEncodeError):
        raise PayloadError("malformed", "the text must be UTF-8") from None
    if len(plaintext) > MAX_CONTENT:
        raise PayloadError("too-large", f"the message would exceed {MAX_CONTENT} octets")
    encapsulated, ssv = sakke.encapsulate(z, tel_identifier(base_uri(recipient), period))
    header = cbor_subset.encode(
        {
            "v": VERSION,
            "from": sender,
            "to": recipient,
            "period": period,
            "time": int(now),
            "sakke": encapsulated,
        }
    )
    key, nonce = _derive(ssv)
    sealed = AESGCM(key).encrypt(nonce, plaintext, header)
    signed = cbor_subset.encode([header, sealed, b""])[:-1]  # the array without the empty item
    content = signed + cbor_subset.encode(signer.sign(signed))
    if len(content) > MAX_CONTENT:
        raise PayloadError("too-large", f"the message would exceed {MAX_CONTENT} octets")
    return content


@attrs.frozen
class _Header:
    sender: str
    recipient: str
    period: str
    time: int
    encapsulated: bytes


def _map(value: object, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or tuple(value) != keys:
        raise PayloadError("malformed", f"{what} must be a map of {', '.join(keys)} in that order")
    return value


def _parse_header(octets: bytes) -> _Header:
    try:
        value = cbor_subset.decode(octets)
    except cbor_subset.CborError as e:
        raise PayloadError("malformed", f"header: {e}") from None
    if isinstance(value, dict) and value.get("v") != VERSION:
        raise PayloadError("version", f"format version {value.get('v')!r}; this reads {VERSION}")
    fields = _map(value, _HEADER_KEYS, "the header")
    sender = _check_uri(fields["from"], "from")
    recipient = _check_uri(fields["to"], "to")
    period = fields["period"]
    try:
        check_period(period)
    except CryptoError:
        raise PayloadError("malformed", "period must be YYYY-MM") from None
    when = fields["time"]
    if type(when) is not int or not 0 <= when <= MAX_TIME:
        raise PayloadError("malformed", f"time must be an integer 0..{MAX_TIME}")
    encapsulated = fields["sakke"]
    if not isinstance(encapsulated, bytes) or len(encapsulated) != sakke.ENCAPSULATED_LENGTH:
        raise PayloadError(
            "malformed", f"sakke must be {sakke.ENCAPSULATED_LENGTH} octets of Encapsulated Data"
        )
    return _Header(sender, recipient, period, when, encapsulated)


def _parse_body(plaintext: bytes) -> MessageBody:
    try:
        value = cbor_subset.decode(plaintext)
    except cbor_subset.CborError as e:
        raise PayloadError("malformed", f"body: {e}") from None
    fields = _map(value, _BODY_KEYS, "the body")
    text, items = fields["text"], fields["attachments"]
    if not isinstance(items, list):
        raise PayloadError("malformed", "body attachments must be an array")
    if len(items) > MAX_ATTACHMENTS:
        raise PayloadError("too-large", f"more than {MAX_ATTACHMENTS} attachments")
    attachments = []
    for item in items:
        part = _map(item, _ATTACHMENT_KEYS, "an attachment")
        attachments.append(
            Attachment(_check_name(part["name"]), _check_type(part["type"]), part["data"])
        )
    return MessageBody(text, tuple(attachments))


#: From a key period to the recipient's keys in it: (KPAK of the account,
#: SAKKE receiver for the recipient's identifier), or None when it holds no
#: keys for that period.
KeysForPeriod = Callable[[str], "tuple[bytes, sakke.SakkeReceiver] | None"]


def open_payload(
    content: bytes,
    *,
    me: str,
    keys_for: KeysForPeriod,
    sender: str | None = None,
) -> OpenedMessage:
    """Check and open a payload addressed to ``me`` (a base tel URI).

    Checks, in this order: size; strict CBOR and shape; version; the
    header's ``to`` is ``me`` (an extension is allowed); ``period`` is the
    UTC month of ``time`` and ``keys_for`` has keys for it (a
    :class:`CryptoError` out of ``keys_for`` counts as none); when ``sender``
    (the ``from`` the CRS vouches for) is given, the header's ``from`` is
    it; the ECCSI signature by ``from`` for that period; SAKKE
    decapsulation; AES-GCM; the body's shape and limits.

    @raise PayloadError: with the reason of the first check that failed.
    """
    if not isinstance(content, bytes | bytearray):
        raise PayloadError("malformed", "content must be octets")
    content = bytes(content)
    if len(content) > MAX_CONTENT:
        raise PayloadError("too-large", f"content over {MAX_CONTENT} octets")
    try:
        outer = cbor_subset.decode(content)
    except cbor_subset.CborError as e:
        raise PayloadError("malformed", str(e)) from None
    if (
        not isinstance(outer, list)
        or len(outer) != 3
        or not all(isinstance(item, bytes) for item in outer)
    ):
        raise PayloadError("malformed", "content must be an array of header, sealed, signature")
    header_octets, sealed, signature = outer
    if len(signature) != eccsi.SIGNATURE_LENGTH:
        raise PayloadError("malformed", f"the signature must be {eccsi.SIGNATURE_LENGTH} octets")
    if len(sealed) < TAG_OCTETS:
        raise PayloadError("malformed", "sealed body shorter than its tag")
    header = _parse_header(header_octets)
    if base_uri(header.recipient) != me:
        raise PayloadError("mis-addressed", f"addressed to {header.recipient}, not to {me}")
    if period_of(header.time) != header.period:
        raise PayloadError("wrong-period", "the key period is not the month of the message time")
    try:
        keys = keys_for(header.period)
    except CryptoError:
        keys = None
    if keys is None:
        raise PayloadError("wrong-period", f"no keys for key period {header.period}")
    kpak, receiver = keys
    if sender is not None and sender != header.sender:
        raise PayloadError("sender-mismatch", f"signed as {header.sender}, delivered from {sender}")
    # Strict decoding means one encoding per value, so the signature item is
    # exactly the last SIGNATURE_ITEM_OCTETS of the content.
    signed = content[:-SIGNATURE_ITEM_OCTETS]
    try:
        eccsi.verify(
            kpak, tel_identifier(base_uri(header.sender), header.period), signed, signature
        )
    except CryptoError:
        raise PayloadError("bad-signature", f"not signed by {header.sender}") from None
    try:
        ssv = receiver.decapsulate(header.encapsulated)
    except CryptoError:
        raise PayloadError("undecryptable", "the message key is not for this recipient") from None
    key, nonce = _derive(ssv)
    try:
        plaintext = AESGCM(key).decrypt(nonce, sealed, header_octets)
    except InvalidTag:
        raise PayloadError("undecryptable", "the sealed body failed authentication") from None
    return OpenedMessage(
        header.sender,
        header.recipient,
        header.period,
        header.time,
        _parse_body(plaintext),
        hashlib.sha256(signed).digest(),
    )
