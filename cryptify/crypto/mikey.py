"""
MIKEY-SAKKE I_MESSAGEs (RFC 6509): build, sign, receive.

C{I_MESSAGE = HDR, T, RAND, [IDRi], [IDRr], [IDRkmsi], [IDRkmsr], {SP},
SAKKE, [general extensions], SIGN}.  The initiator encapsulates an SSV for
the responder's identifier and signs the whole message with ECCSI; the
responder verifies the signature (RFC 6507) with the initiator's identifier,
then decapsulates (RFC 6508).  The SSV is the TGK; L{ReceivedIMessage.srtp}
derives SRTP master key and salt from it.

The signature covers the entire message but the signature field, which
includes the SIGN payload's two header octets (RFC 3830 5.2).  Some stacks
sign without those two octets; C{sign_compat=True} accepts that form too.
It is off by default.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs

from cryptify.crypto import eccsi
from cryptify.crypto import mikey_payloads as mp
from cryptify.crypto.errors import IdentityError, MikeyError, SignatureInvalid
from cryptify.crypto.identity import (
    ID_SCHEME_TEL_URI,
    ID_SCHEME_UID,
    period_of,
    tel_identifier,
)
from cryptify.crypto.prf import SrtpKeying, srtp_keying
from cryptify.crypto.replay import ReplayGuard
from cryptify.crypto.sakke import (
    PARAMETER_SET_1,
    SakkePublicKey,
    SakkeReceiver,
    encapsulate,
)

RAND_LENGTH = 16

_P = TypeVar("_P", bound=mp.Payload)

#: The default SRTP policy: AES-CM-128, HMAC-SHA1-80 (RFC 3830 6.10.1 TLVs).
DEFAULT_SRTP_POLICY = mp.SecurityPolicy(
    policy_no=0,
    prot_type=mp.PROT_SRTP,
    params=(
        (0, b"\x01"),  # encryption algorithm: AES-CM
        (1, b"\x10"),  # session encryption key length: 16
        (2, b"\x01"),  # authentication algorithm: HMAC-SHA-1
        (3, b"\x14"),  # session authentication key length: 20
        (4, b"\x0e"),  # session salt key length: 14
        (7, b"\x01"),  # SRTP encryption on
        (8, b"\x01"),  # SRTCP encryption on
        (10, b"\x01"),  # SRTP authentication on
        (11, b"\x0a"),  # authentication tag length: 10
    ),
)


def tel_idrs(initiator_uri: str | None, responder_uri: str | None) -> list[mp.IdR]:
    """IDRi/IDRr payloads for ID scheme 1 (they carry the URIs)."""
    out = []
    if initiator_uri is not None:
        out.append(mp.IdR(mp.ROLE_INITIATOR, mp.ID_TYPE_URI, initiator_uri.encode("ascii")))
    if responder_uri is not None:
        out.append(mp.IdR(mp.ROLE_RESPONDER, mp.ID_TYPE_URI, responder_uri.encode("ascii")))
    return out


def uid_idrs(
    initiator_uid: bytes | None, responder_uid: bytes | None, kms_uri: str | None = None
) -> list[mp.IdR]:
    """IDR payloads for ID scheme 2 (TS 33.180): UID roles, then the KMS URIs."""
    out = []
    if initiator_uid is not None:
        out.append(mp.IdR(mp.ROLE_UID_INITIATOR, mp.ID_TYPE_URI, initiator_uid))
    if responder_uid is not None:
        out.append(mp.IdR(mp.ROLE_UID_RESPONDER, mp.ID_TYPE_URI, responder_uid))
    if kms_uri is not None:
        kms = kms_uri.encode("utf-8")
        out.append(mp.IdR(mp.ROLE_INITIATOR_KMS, mp.ID_TYPE_URI, kms))
        out.append(mp.IdR(mp.ROLE_RESPONDER_KMS, mp.ID_TYPE_URI, kms))
    return out


@attrs.frozen
class BuiltIMessage:
    """An I_MESSAGE as sent, with the SSV and what the keys derive from."""

    data: bytes
    ssv: bytes = attrs.field(repr=False)
    header: mp.Header
    rand: bytes

    def srtp(self, cs_id: int = 1, salt_length: int = 14) -> SrtpKeying:
        """SRTP master key and salt for crypto session C{cs_id}."""
        return srtp_keying(
            self.ssv, self.header.csb_id, self.rand, cs_id, self.header.prf_func, 16, salt_length
        )


def build_i_message(
    signer: eccsi.EccsiSigner,
    z: SakkePublicKey,
    responder_id: bytes,
    *,
    now: float,
    idrs: Sequence[mp.IdR] = (),
    id_scheme: int = ID_SCHEME_TEL_URI,
    ssv: bytes | None = None,
    rand: bytes | None = None,
    csb_id: int | None = None,
    prf_func: int = mp.PRF_HMAC_SHA256,
    map_type: int = mp.MAP_SRTP_ID,
    entries: Sequence[mp.MapEntry] | None = None,
    policies: Sequence[mp.SecurityPolicy] = (DEFAULT_SRTP_POLICY,),
    extensions: Sequence[mp.GeneralExtension] = (),
    sign_compat: bool = False,
) -> BuiltIMessage:
    """
    Build and sign an I_MESSAGE carrying a (new or given) SSV to
    C{responder_id}, signed by C{signer}.

    @param now: Unix time for the T payload.
    @param sign_compat: sign without the SIGN header (for vendor peers only).
    """
    if entries is None:
        entries = [mp.SrtpIdEntry(0, 0, 0)] if map_type == mp.MAP_SRTP_ID else []
    header = mp.Header(
        csb_id=secrets.randbits(32) if csb_id is None else csb_id,
        prf_func=prf_func,
        map_type=map_type,
        entries=tuple(entries),
    )
    rand = secrets.token_bytes(RAND_LENGTH) if rand is None else rand
    sed, ssv = encapsulate(z, responder_id, ssv)
    payloads: list[mp.Payload] = [mp.Timestamp.ntp_utc(now), mp.Rand(rand), *idrs, *policies]
    payloads.append(mp.SakkePayload(PARAMETER_SET_1, id_scheme, sed))
    payloads.extend(extensions)
    body = mp.encode_message(header, payloads, sign_type=mp.S_TYPE_ECCSI)
    sign_head = mp.sign_header(mp.S_TYPE_ECCSI, eccsi.SIGNATURE_LENGTH)
    signature = signer.sign(body if sign_compat else body + sign_head)
    return BuiltIMessage(body + sign_head + signature, ssv, header, rand)


@attrs.frozen
class ReceivedIMessage:
    """A verified, decapsulated I_MESSAGE."""

    message: mp.MikeyMessage
    ssv: bytes = attrs.field(repr=False)
    initiator_id: bytes
    responder_id: bytes
    signed_with_header: bool = True

    @property
    def rand(self) -> bytes:
        """The RAND payload's data."""
        return _one(self.message, mp.Rand, "RAND").data

    def srtp(self, cs_id: int = 1, salt_length: int = 14) -> SrtpKeying:
        """SRTP master key and salt for crypto session C{cs_id}."""
        header = self.message.header
        return srtp_keying(
            self.ssv, header.csb_id, self.rand, cs_id, header.prf_func, 16, salt_length
        )


def _one(message: mp.MikeyMessage, kind: type[_P], name: str) -> _P:
    found = message.find(kind)
    if len(found) != 1:
        raise MikeyError(f"I_MESSAGE must carry exactly one {name} payload")
    return found[0]


def _idr(message: mp.MikeyMessage, role: int) -> bytes | None:
    for p in message.find(mp.IdR):
        if isinstance(p, mp.IdR) and p.role == role:
            return p.data
    return None


def check_i_message(message: mp.MikeyMessage) -> tuple[mp.Timestamp, mp.SakkePayload]:
    """Check the I_MESSAGE shape of a parsed message (RFC 6509 2.1)."""
    if message.header.data_type != mp.DATA_TYPE_SAKKE:
        raise MikeyError(f"not a SAKKE I_MESSAGE (HDR data type {message.header.data_type})")
    if message.header.prf_func not in (mp.PRF_HMAC_SHA1, mp.PRF_HMAC_SHA256):
        raise MikeyError(f"unknown PRF func {message.header.prf_func}")
    ts = _one(message, mp.Timestamp, "T")
    assert isinstance(ts, mp.Timestamp)
    if ts.ts_type not in (mp.TS_NTP_UTC, mp.TS_NTP):
        raise MikeyError("I_MESSAGE timestamp must be NTP-UTC or NTP")
    _one(message, mp.Rand, "RAND")
    sakke = _one(message, mp.SakkePayload, "SAKKE")
    assert isinstance(sakke, mp.SakkePayload)
    if sakke.params != PARAMETER_SET_1:
        raise MikeyError(f"unsupported SAKKE parameter set {sakke.params}")
    if message.sign is None:
        raise MikeyError("I_MESSAGE is not signed")
    if message.sign.s_type != mp.S_TYPE_ECCSI:
        raise MikeyError(f"unsupported signature type {message.sign.s_type}")
    return ts, sakke


def initiator_identifier(message: mp.MikeyMessage, sakke: mp.SakkePayload, when: float) -> bytes:
    """The initiator's identifier as the message names it (IDRi / UID role)."""
    if sakke.id_scheme == ID_SCHEME_UID:
        uid = _idr(message, mp.ROLE_UID_INITIATOR)
        if uid is None:
            raise IdentityError("I_MESSAGE names no initiator UID (IDR role 8)")
        return uid
    uri = _idr(message, mp.ROLE_INITIATOR)
    if uri is None:
        raise IdentityError("I_MESSAGE names no initiator (IDRi)")
    try:
        return tel_identifier(uri.decode("ascii"), period_of(when))
    except UnicodeDecodeError:
        raise IdentityError("IDRi is not an ASCII URI") from None


def responder_identifier(
    message: mp.MikeyMessage, sakke: mp.SakkePayload, when: float
) -> bytes | None:
    """The responder's identifier as the message names it, if it does."""
    if sakke.id_scheme == ID_SCHEME_UID:
        return _idr(message, mp.ROLE_UID_RESPONDER)
    uri = _idr(message, mp.ROLE_RESPONDER)
    if uri is None:
        return None
    try:
        return tel_identifier(uri.decode("ascii"), period_of(when))
    except UnicodeDecodeError:
        raise IdentityError("IDRr is not an ASCII URI") from None


def verify_i_message(
    message: mp.MikeyMessage, kpak: bytes, initiator_id: bytes, sign_compat: bool = False
) -> bool:
    """
    Verify the ECCSI signature.  Returns whether the RFC form (with the SIGN
    header) verified; with C{sign_compat}, the vendor form is tried second.

    @raise SignatureInvalid: if no accepted form verifies.
    """
    assert message.sign is not None
    signature = message.sign.signature
    try:
        eccsi.verify(kpak, initiator_id, message.signed_data(True), signature)
        return True
    except SignatureInvalid:
        if not sign_compat:
            raise
    eccsi.verify(kpak, initiator_id, message.signed_data(False), signature)
    return False


def receive_i_message(
    data: bytes,
    *,
    kpak: bytes,
    receiver: SakkeReceiver | Callable[[bytes], SakkeReceiver],
    now: float,
    replay: ReplayGuard | None = None,
    initiator_id: bytes | None = None,
    sign_compat: bool = False,
) -> ReceivedIMessage:
    """
    Parse, verify and decapsulate an I_MESSAGE.

    @param receiver: the responder's RSK, or a function from the responder
        identifier the message names to the RSK for it (for two key periods).
    @param initiator_id: the initiator's identifier, when known from the
        signalling; otherwise taken from the message.
    @raise CryptoError: (a subclass) for every failure.
    """
    message = mp.parse_message(data)
    ts, sakke = check_i_message(message)
    when = ts.unix_seconds()
    if initiator_id is None:
        initiator_id = initiator_identifier(message, sakke, when)
    with_header = verify_i_message(message, kpak, initiator_id, sign_compat)
    named = responder_identifier(message, sakke, when)
    if isinstance(receiver, SakkeReceiver):
        if named is not None and named != receiver.identity:
            raise IdentityError("I_MESSAGE is addressed to another identity")
    else:
        if named is None:
            raise IdentityError("I_MESSAGE names no responder identity")
        receiver = receiver(named)
    if sakke.id_scheme == ID_SCHEME_TEL_URI and receiver.identity[:7] != period_of(when).encode():
        raise IdentityError("I_MESSAGE month (T) differs from the responder identifier's month")
    if replay is not None:
        rand = _one(message, mp.Rand, "RAND")
        assert isinstance(rand, mp.Rand)
        replay.check(when, rand.data, now)
    ssv = receiver.decapsulate(sakke.data)
    return ReceivedIMessage(message, ssv, initiator_id, receiver.identity, with_header)
