"""
MIKEY payload codec (RFC 3830, RFC 6043, RFC 6509): octets to frozen
payload objects and back, with no cryptography.

A MIKEY message is the Common Header (HDR) followed by a chain of payloads,
each naming the type of the next.  The SIGN payload, when present, is last and
has no next-payload field.  MIKEY payloads have no common length field, so a
payload can be skipped only if its format is known: payloads this codec does
not interpret but can size (ID, CERT, CHASH, ERR, RANDR) are kept as
L{OpaquePayload}; an unknown payload type ends parsing with a L{MikeyError}.

Every malformation raises L{MikeyError}.
"""

from __future__ import annotations

import struct
from typing import TypeVar

import attrs

from cryptify.crypto.errors import MikeyError

# Next-payload codes (RFC 3830 6.1, RFC 6043 6, RFC 6509 Table 2).
LAST = 0
KEMAC = 1
PKE = 2
DH = 3
SIGN = 4
T = 5
ID = 6
CERT = 7
CHASH = 8
V = 9
SP = 10
RAND = 11
ERR = 12
TR = 13
IDR = 14
RANDR = 15
TP = 16
TICKET = 17
KEY_DATA = 20
GENERAL_EXT = 21
SAKKE = 26

#: HDR data type of a SAKKE I_MESSAGE (RFC 6509 Table 1).
DATA_TYPE_SAKKE = 26
#: PRF func values: MIKEY-1 (HMAC-SHA-1) and PRF-HMAC-SHA-256 (RFC 6043).
PRF_HMAC_SHA1 = 0
PRF_HMAC_SHA256 = 1
#: CS ID map types: SRTP-ID (RFC 3830), empty (TS 33.180), GENERIC-ID (RFC 6043).
MAP_SRTP_ID = 0
MAP_EMPTY = 1
MAP_GENERIC_ID = 2
#: T payload TS types.
TS_NTP_UTC = 0
TS_NTP = 1
TS_COUNTER = 2
#: ID types.
ID_TYPE_NAI = 0
ID_TYPE_URI = 1
ID_TYPE_BYTES = 2
#: ID roles (RFC 6043 Table 6.6, RFC 6509 Table 7, TS 33.180 E.6).
ROLE_INITIATOR = 1
ROLE_RESPONDER = 2
ROLE_KMS = 3
ROLE_PSK = 4
ROLE_APP = 5
ROLE_INITIATOR_KMS = 6
ROLE_RESPONDER_KMS = 7
ROLE_UID_INITIATOR = 8
ROLE_UID_RESPONDER = 9
#: SIGN S type for ECCSI (RFC 6509 Table 6).
S_TYPE_ECCSI = 2
#: SP Prot type SRTP.
PROT_SRTP = 0


@attrs.frozen
class SrtpIdEntry:
    """One SRTP-ID map entry; the i-th entry has CS ID i (1-based)."""

    policy_no: int
    ssrc: int
    roc: int


@attrs.frozen
class GenericIdEntry:
    """One GENERIC-ID map entry (RFC 6043 6.1.1)."""

    cs_id: int
    prot_type: int = PROT_SRTP
    s_flag: bool = False
    policies: tuple[int, ...] = ()
    session_data: bytes = b""
    spi: bytes = b""


MapEntry = SrtpIdEntry | GenericIdEntry


@attrs.frozen
class Header:
    """The Common Header payload (RFC 3830 6.1, RFC 6043 6.1)."""

    csb_id: int
    prf_func: int = PRF_HMAC_SHA256
    map_type: int = MAP_SRTP_ID
    entries: tuple[MapEntry, ...] = ()
    data_type: int = DATA_TYPE_SAKKE
    v: bool = False
    version: int = 1

    def cs_ids(self) -> list[int]:
        """The crypto session IDs the map defines, in order."""
        if self.map_type == MAP_SRTP_ID:
            return list(range(1, len(self.entries) + 1))
        return [e.cs_id for e in self.entries if isinstance(e, GenericIdEntry)]


@attrs.frozen
class Timestamp:
    """T payload (RFC 3830 6.6)."""

    ts_type: int
    value: bytes

    @classmethod
    def ntp_utc(cls, unix_seconds: float) -> Timestamp:
        """A 64-bit NTP-UTC timestamp for a Unix time."""
        ntp = unix_seconds + NTP_UNIX_OFFSET
        seconds = int(ntp)
        fraction = int((ntp - seconds) * (1 << 32)) & 0xFFFFFFFF
        return cls(TS_NTP_UTC, struct.pack(">II", seconds & 0xFFFFFFFF, fraction))

    def unix_seconds(self) -> float:
        """The time as Unix seconds (NTP types only)."""
        if self.ts_type not in (TS_NTP_UTC, TS_NTP):
            raise MikeyError("timestamp is not an NTP time")
        seconds, fraction = struct.unpack(">II", self.value)
        return float(seconds - NTP_UNIX_OFFSET + fraction / (1 << 32))


NTP_UNIX_OFFSET = 2208988800


@attrs.frozen
class Rand:
    """RAND payload (RFC 3830 6.11)."""

    data: bytes


@attrs.frozen
class IdR:
    """ID payload with a role (RFC 6043 6.6, RFC 6509 4.4)."""

    role: int
    id_type: int
    data: bytes


@attrs.frozen
class SecurityPolicy:
    """SP payload (RFC 3830 6.10): policy number, protocol and TLVs."""

    policy_no: int
    prot_type: int
    params: tuple[tuple[int, bytes], ...]


@attrs.frozen
class SakkePayload:
    """SAKKE payload (RFC 6509 4.2)."""

    params: int
    id_scheme: int
    data: bytes


@attrs.frozen
class GeneralExtension:
    """General extension payload (RFC 3830 6.15)."""

    ext_type: int
    data: bytes


@attrs.frozen
class OpaquePayload:
    """A payload sized but not interpreted; C{body} is all but the next-payload octet."""

    payload_type: int
    body: bytes


@attrs.frozen
class SignPayload:
    """SIGN payload (RFC 3830 6.5); always last."""

    s_type: int
    signature: bytes


Payload = Timestamp | Rand | IdR | SecurityPolicy | SakkePayload | GeneralExtension | OpaquePayload
_P = TypeVar("_P", bound=Payload)


def payload_type(payload: Payload) -> int:
    """The next-payload code of a payload."""
    if isinstance(payload, OpaquePayload):
        return payload.payload_type
    return _TYPES[type(payload)]


_TYPES: dict[type, int] = {
    Timestamp: T,
    Rand: RAND,
    IdR: IDR,
    SecurityPolicy: SP,
    SakkePayload: SAKKE,
    GeneralExtension: GENERAL_EXT,
}


@attrs.frozen
class MikeyMessage:
    """
    A parsed MIKEY message.  C{signed_length} is the number of leading
    octets the signature covers (RFC 3830 5.2: everything but the signature
    field itself, so including the SIGN payload's two header octets).
    """

    header: Header
    payloads: tuple[Payload, ...]
    sign: SignPayload | None = None
    raw: bytes = attrs.field(default=b"", repr=False, eq=False)
    signed_length: int = attrs.field(default=0, eq=False)

    def find(self, kind: type[_P]) -> list[_P]:
        """The payloads of one class, in order."""
        return [p for p in self.payloads if isinstance(p, kind)]

    def signed_data(self, include_sign_header: bool = True) -> bytes:
        """The octets the signature covers, or the vendor form without the SIGN header."""
        if include_sign_header:
            return self.raw[: self.signed_length]
        return self.raw[: self.signed_length - 2]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MikeyError(f"MIKEY message truncated in {what}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack(">H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack(">I", self.take(4, what))[0]
        return value


def _parse_header(reader: _Reader) -> tuple[Header, int]:
    version = reader.u8("HDR")
    if version != 1:
        raise MikeyError(f"unsupported MIKEY version {version}")
    data_type = reader.u8("HDR")
    next_type = reader.u8("HDR")
    vprf = reader.u8("HDR")
    csb_id = reader.u32("HDR")
    count = reader.u8("HDR")
    map_type = reader.u8("HDR")
    entries: list[MapEntry] = []
    if map_type == MAP_SRTP_ID:
        for _ in range(count):
            entries.append(
                SrtpIdEntry(
                    reader.u8("CS ID map"), reader.u32("CS ID map"), reader.u32("CS ID map")
                )
            )
    elif map_type == MAP_GENERIC_ID:
        for _ in range(count):
            cs_id = reader.u8("CS ID map")
            prot = reader.u8("CS ID map")
            sp = reader.u8("CS ID map")
            policies = tuple(reader.take(sp & 0x7F, "CS ID map"))
            session = reader.take(reader.u16("CS ID map"), "CS ID map")
            spi = reader.take(reader.u8("CS ID map"), "CS ID map")
            entries.append(GenericIdEntry(cs_id, prot, bool(sp & 0x80), policies, session, spi))
    elif map_type == MAP_EMPTY:
        pass
    else:
        raise MikeyError(f"unknown CS ID map type {map_type}")
    header = Header(
        csb_id=csb_id,
        prf_func=vprf & 0x7F,
        map_type=map_type,
        entries=tuple(entries),
        data_type=data_type,
        v=bool(vprf & 0x80),
        version=version,
    )
    return header, next_type


def _parse_payload(reader: _Reader, kind: int) -> tuple[Payload, int]:
    name = f"payload type {kind}"
    nxt = reader.u8(name)
    payload: Payload
    if kind == T:
        ts_type = reader.u8(name)
        size = {TS_NTP_UTC: 8, TS_NTP: 8, TS_COUNTER: 4}.get(ts_type)
        if size is None:
            raise MikeyError(f"unknown timestamp type {ts_type}")
        payload = Timestamp(ts_type, reader.take(size, name))
    elif kind in (RAND, RANDR):
        data = reader.take(reader.u8(name), name)
        payload = Rand(data) if kind == RAND else OpaquePayload(kind, bytes([len(data)]) + data)
    elif kind == IDR:
        role = reader.u8(name)
        id_type = reader.u8(name)
        payload = IdR(role, id_type, reader.take(reader.u16(name), name))
    elif kind in (ID, CERT):
        sub = reader.u8(name)
        data = reader.take(reader.u16(name), name)
        payload = OpaquePayload(kind, struct.pack(">BH", sub, len(data)) + data)
    elif kind == SP:
        policy_no = reader.u8(name)
        prot = reader.u8(name)
        body = _Reader(reader.take(reader.u16(name), name))
        params = []
        while body.pos < len(body.data):
            ptype = body.u8("SP parameter")
            params.append((ptype, body.take(body.u8("SP parameter"), "SP parameter")))
        payload = SecurityPolicy(policy_no, prot, tuple(params))
    elif kind == SAKKE:
        params_value = reader.u8(name)
        scheme = reader.u8(name)
        payload = SakkePayload(params_value, scheme, reader.take(reader.u16(name), name))
    elif kind == GENERAL_EXT:
        ext_type = reader.u8(name)
        payload = GeneralExtension(ext_type, reader.take(reader.u16(name), name))
    elif kind == CHASH:
        func = reader.u8(name)
        size = {0: 20, 1: 16}.get(func)
        if size is None:
            raise MikeyError(f"unknown CHASH hash function {func}")
        payload = OpaquePayload(kind, bytes([func]) + reader.take(size, name))
    elif kind == ERR:
        payload = OpaquePayload(kind, reader.take(3, name))
    else:
        raise MikeyError(f"unknown MIKEY payload type {kind}: its length cannot be known")
    return payload, nxt


def parse_message(data: bytes) -> MikeyMessage:
    """
    Parse a MIKEY message.

    @raise MikeyError: on any malformation.
    """
    if not isinstance(data, bytes | bytearray):
        raise MikeyError("MIKEY message must be octets")
    data = bytes(data)
    reader = _Reader(data)
    header, kind = _parse_header(reader)
    payloads: list[Payload] = []
    sign: SignPayload | None = None
    signed_length = 0
    while kind != LAST:
        if kind == SIGN:
            first = reader.u16("SIGN")
            s_type, length = first >> 12, first & 0x0FFF
            signed_length = reader.pos
            sign = SignPayload(s_type, reader.take(length, "SIGN"))
            break
        if len(payloads) > 255:
            raise MikeyError("MIKEY message has too many payloads")
        payload, kind = _parse_payload(reader, kind)
        payloads.append(payload)
    if reader.pos != len(data):
        raise MikeyError("MIKEY message has trailing octets after its last payload")
    return MikeyMessage(header, tuple(payloads), sign, data, signed_length)


def _encode_header(header: Header, next_type: int) -> bytes:
    out = bytearray(
        struct.pack(
            ">BBBBIBB",
            header.version,
            header.data_type,
            next_type,
            (0x80 if header.v else 0) | (header.prf_func & 0x7F),
            header.csb_id,
            len(header.entries),
            header.map_type,
        )
    )
    for e in header.entries:
        if isinstance(e, SrtpIdEntry):
            out += struct.pack(">BII", e.policy_no, e.ssrc, e.roc)
        else:
            out += struct.pack(
                ">BBB", e.cs_id, e.prot_type, (0x80 if e.s_flag else 0) | len(e.policies)
            )
            out += bytes(e.policies)
            out += struct.pack(">H", len(e.session_data)) + e.session_data
            out += bytes([len(e.spi)]) + e.spi
    return bytes(out)


def _encode_payload(payload: Payload, next_type: int) -> bytes:
    n = bytes([next_type])
    if isinstance(payload, Timestamp):
        return n + bytes([payload.ts_type]) + payload.value
    if isinstance(payload, Rand):
        if len(payload.data) > 255:
            raise MikeyError("RAND is at most 255 octets")
        return n + bytes([len(payload.data)]) + payload.data
    if isinstance(payload, IdR):
        return (
            n + struct.pack(">BBH", payload.role, payload.id_type, len(payload.data)) + payload.data
        )
    if isinstance(payload, SecurityPolicy):
        body = b"".join(bytes([t, len(v)]) + v for t, v in payload.params)
        return n + struct.pack(">BBH", payload.policy_no, payload.prot_type, len(body)) + body
    if isinstance(payload, SakkePayload):
        head = struct.pack(">BBH", payload.params, payload.id_scheme, len(payload.data))
        return n + head + payload.data
    if isinstance(payload, GeneralExtension):
        return n + struct.pack(">BH", payload.ext_type, len(payload.data)) + payload.data
    return n + payload.body


def encode_message(
    header: Header, payloads: tuple[Payload, ...] | list[Payload], sign_type: int | None = None
) -> bytes:
    """
    Encode a message.  With C{sign_type}, the last payload names SIGN as
    next; the caller appends L{sign_header} and the signature.
    """
    types = [payload_type(p) for p in payloads] + [SIGN if sign_type is not None else LAST]
    out = _encode_header(header, types[0])
    for payload, nxt in zip(payloads, types[1:]):
        out += _encode_payload(payload, nxt)
    return out


def sign_header(s_type: int, length: int) -> bytes:
    """The SIGN payload's S type / signature length octets."""
    if length > 0x0FFF:
        raise MikeyError("signature too long for a SIGN payload")
    return struct.pack(">H", (s_type << 12) | length)
