"""
SDP (RFC 8866) for audio calls, and the offer/answer model (RFC 3264).

The CIG's media side speaks G.711 (PCMU payload type 0, PCMA 8) and
telephone-event (RFC 4733, a dynamic payload type). L{parse_sdp} reads a
description (raising only L{SdpError}); L{make_offer} writes our offer;
L{make_answer} answers an offer: the first audio stream with a codec in
common is accepted with the common codecs in the offerer's order (and
telephone-event if offered), every other stream is refused with port 0,
and the direction is mirrored.

SRTP with SDES keys (RFC 4568): a C{RTP/SAVP} stream carries C{a=crypto}
lines (L{Media.crypto}, never in a repr). L{make_offer} offers
C{RTP/SAVP} when given our lines; L{make_answer} answers a C{RTP/SAVP}
stream, when its C{srtp} mode allows, with the first offered line we can
honour and our own fresh key under the same tag (a stream with none is
refused). L{srtp_keys} pairs our line and the peer's by tag: the keys
the PBX leg's media is protected with.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

import attrs

from .sdes import (
    SUITES,
    CryptoAttribute,
    SdesError,
    choose_crypto,
    our_crypto,
    parse_crypto,
)

#: Codecs we carry, by encoding name (upper case) and their static type.
STATIC = {"PCMU": 0, "PCMA": 8}
TELEPHONE_EVENT = "TELEPHONE-EVENT"
#: The dynamic payload type we offer for telephone-event.
TELEPHONE_EVENT_PT = 101
MAX_SDP_BYTES = 8192
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
#: Most C{a=crypto} lines read from one media section.
MAX_CRYPTO_LINES = 16
AVP = "RTP/AVP"
SAVP = "RTP/SAVP"
#: Which media protocols each C{srtp} mode answers.
_ANSWERS = {"off": (AVP,), "offer": (AVP, SAVP), "require": (SAVP,)}
_MIRROR = {"sendonly": "recvonly", "recvonly": "sendonly"}


class SdpError(ValueError):
    """The body is not a session description we can read."""


@attrs.frozen
class Media:
    """
    One C{m=} section: kind, port, protocol, payload types (as text, in
    order), the C{rtpmap}/C{fmtp} attributes by payload type, direction,
    and the section's own C{c=} address if any.
    """

    kind: str
    port: int
    proto: str
    formats: tuple[str, ...]
    rtpmap: tuple[tuple[str, str], ...] = ()
    fmtp: tuple[tuple[str, str], ...] = ()
    direction: str = "sendrecv"
    address: str | None = None
    ptime: int | None = None
    #: The C{a=crypto} values (after the colon), in order; they hold keys.
    crypto: tuple[str, ...] = attrs.field(default=(), repr=False)

    def encoding(self, pt: str) -> str | None:
        """The encoding name of payload type C{pt} (upper case), if known."""
        for given, value in self.rtpmap:
            if given == pt:
                return value.split("/", 1)[0].upper()
        for codec, number in STATIC.items():
            if str(number) == pt:
                return codec
        return None


@attrs.frozen
class SessionDescription:
    """A parsed SDP body: origin fields, session address, media sections."""

    username: str
    session_id: str
    version: str
    origin_address: str
    address: str | None
    media: tuple[Media, ...]
    name: str = "-"

    def audio(self) -> Media | None:
        """The first audio section with a port, if any."""
        for m in self.media:
            if m.kind == "audio" and m.port != 0:
                return m
        return None

    def media_address(self, media: Media) -> str | None:
        """Where C{media} is to be sent: its own C{c=} or the session's."""
        return media.address or self.address


def _address(value: str) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"bad connection line {value[:60]!r}")
    return parts[2].split("/", 1)[0]


def _media_line(value: str) -> Media:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"bad media line {value[:60]!r}")
    port = parts[1].split("/", 1)[0]
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise SdpError("bad media port")
    return Media(parts[0], int(port), parts[2], tuple(parts[3:]))


def parse_sdp(body: bytes) -> SessionDescription:
    """
    Parse an SDP body.

    @raise SdpError: if it is not valid enough to answer.
    """
    if len(body) > MAX_SDP_BYTES:
        raise SdpError("session description too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("session description is not UTF-8") from None
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("no v=0 line first")
    origin: list[str] | None = None
    session_address: str | None = None
    session_direction: str | None = None
    name = "-"
    media: list[Media] = []
    #: Media sections with a direction attribute of their own.
    directed: set[int] = set()
    for line in lines[1:]:
        kind, eq, value = line.partition("=")
        if not eq or len(kind) != 1:
            raise SdpError(f"bad line {line[:60]!r}")
        if kind == "o":
            origin = value.split()
            if len(origin) != 6:
                raise SdpError("bad origin line")
        elif kind == "s":
            name = value
        elif kind == "c":
            if media:
                media[-1] = _changed(media[-1], address=_address(value))
            else:
                session_address = _address(value)
        elif kind == "m":
            media.append(_media_line(value))
        elif kind == "a" and media:
            media[-1] = _attribute(media[-1], value)
            if value in DIRECTIONS:
                directed.add(len(media) - 1)
        elif kind == "a" and value in DIRECTIONS:
            session_direction = value  # RFC 8866 6.7: for every stream without its own
    if origin is None:
        raise SdpError("no origin line")
    if session_direction is not None:
        media = [
            m if i in directed else _changed(m, direction=session_direction)
            for i, m in enumerate(media)
        ]
    return SessionDescription(
        username=origin[0],
        session_id=origin[1],
        version=origin[2],
        origin_address=origin[5],
        address=session_address,
        media=tuple(media),
        name=name,
    )


def _changed(
    m: Media,
    *,
    rtpmap: tuple[tuple[str, str], ...] | None = None,
    fmtp: tuple[tuple[str, str], ...] | None = None,
    direction: str | None = None,
    address: str | None = None,
    ptime: int | None = None,
    crypto: tuple[str, ...] | None = None,
) -> Media:
    """C{m} with the fields given changed (what C{attrs.evolve} gives, quicker)."""
    return Media(
        m.kind,
        m.port,
        m.proto,
        m.formats,
        m.rtpmap if rtpmap is None else rtpmap,
        m.fmtp if fmtp is None else fmtp,
        m.direction if direction is None else direction,
        m.address if address is None else address,
        m.ptime if ptime is None else ptime,
        m.crypto if crypto is None else crypto,
    )


def _attribute(media: Media, value: str) -> Media:
    attr, _, rest = value.partition(":")
    if attr in DIRECTIONS:
        return _changed(media, direction=attr)
    if attr in ("rtpmap", "fmtp"):
        pt, _, spec = rest.partition(" ")
        if not (pt.isascii() and pt.isdigit()) or not spec.strip():
            raise SdpError(f"bad {attr} attribute")
        if attr == "rtpmap":
            return _changed(media, rtpmap=(*media.rtpmap, (pt, spec.strip())))
        return _changed(media, fmtp=(*media.fmtp, (pt, spec.strip())))
    if attr == "crypto":
        if len(media.crypto) >= MAX_CRYPTO_LINES:
            raise SdpError("too many crypto attributes")
        return _changed(media, crypto=(*media.crypto, rest.strip()))
    if (
        attr == "ptime"
        and rest.strip().isascii()
        and rest.strip().isdigit()
        and len(rest.strip()) < 5
    ):
        return _changed(media, ptime=int(rest.strip()))
    return media


def _ip_kind(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def render_sdp(sdp: SessionDescription) -> bytes:
    """Write a session description (CRLF line ends)."""
    addr = sdp.address or sdp.origin_address
    lines = [
        "v=0",
        f"o={sdp.username} {sdp.session_id} {sdp.version} IN "
        f"{_ip_kind(sdp.origin_address)} {sdp.origin_address}",
        f"s={sdp.name or '-'}",
        f"c=IN {_ip_kind(addr)} {addr}",
        "t=0 0",
    ]
    for m in sdp.media:
        lines.append(f"m={m.kind} {m.port} {m.proto} {' '.join(m.formats)}")
        if m.address is not None:
            lines.append(f"c=IN {_ip_kind(m.address)} {m.address}")
        lines += [f"a=rtpmap:{pt} {spec}" for pt, spec in m.rtpmap]
        lines += [f"a=fmtp:{pt} {spec}" for pt, spec in m.fmtp]
        lines += [f"a=crypto:{value}" for value in m.crypto]
        if m.ptime is not None:
            lines.append(f"a=ptime:{m.ptime}")
        if m.port:
            lines.append(f"a={m.direction}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def make_offer(
    address: str,
    port: int,
    session_id: str,
    version: int = 1,
    codecs: tuple[str, ...] = (),
    crypto: tuple[CryptoAttribute, ...] = (),
) -> SessionDescription:
    """
    Our offer: one audio stream with PCMU, PCMA and telephone-event;
    C{RTP/SAVP} with C{crypto}'s lines when there are any (L{offer_crypto}).
    """
    names = codecs or ("PCMU", "PCMA")
    formats = (*tuple(str(STATIC[n]) for n in names), str(TELEPHONE_EVENT_PT))
    rtpmap = tuple((str(STATIC[n]), f"{n}/8000") for n in names)
    rtpmap += ((str(TELEPHONE_EVENT_PT), "telephone-event/8000"),)
    media = Media(
        "audio",
        port,
        SAVP if crypto else AVP,
        formats,
        rtpmap=rtpmap,
        fmtp=((str(TELEPHONE_EVENT_PT), "0-16"),),
        ptime=20,
        crypto=tuple(c.render() for c in crypto),
    )
    return SessionDescription("cig", session_id, str(version), address, address, (media,))


def offer_crypto(
    new_key: Callable[[int], bytes] = secrets.token_bytes,
) -> tuple[CryptoAttribute, ...]:
    """Our C{a=crypto} lines for an offer: each suite we take, its own fresh key."""
    return tuple(our_crypto(tag, suite, new_key) for tag, suite in enumerate(SUITES, 1))


def crypto_lines(media: Media) -> list[CryptoAttribute]:
    """The readable C{a=crypto} lines of C{media} (unreadable ones are skipped)."""
    lines = []
    for value in media.crypto:
        try:
            lines.append(parse_crypto(value))
        except SdesError:
            continue
    return lines


def make_answer(
    offer: SessionDescription,
    address: str,
    port: int,
    session_id: str,
    version: int = 1,
    srtp: str = "off",
    new_key: Callable[[int], bytes] = secrets.token_bytes,
    keep: CryptoAttribute | None = None,
) -> SessionDescription | None:
    """
    Answer C{offer} with our audio on C{address}:C{port}, or C{None} if no
    audio stream has a codec in common, or none has a protocol C{srtp}
    allows (and, for C{RTP/SAVP}, an C{a=crypto} line we can honour): the
    caller answers 488. Our key is fresh (C{new_key}) unless C{keep}, our
    previous line, has the chosen suite (a re-INVITE keeps the stream's key).
    """
    chosen = False
    media: list[Media] = []
    for m in offer.media:
        if chosen or m.kind != "audio" or m.port == 0 or m.proto not in _ANSWERS[srtp]:
            media.append(Media(m.kind, 0, m.proto, m.formats[:1]))
            continue
        codecs = [pt for pt in m.formats if m.encoding(pt) in STATIC]
        ours: tuple[str, ...] = ()
        if m.proto == SAVP:
            theirs = choose_crypto(crypto_lines(m))
            if theirs is None:
                codecs = []
            elif keep is not None and keep.suite == theirs.suite:
                ours = (CryptoAttribute(theirs.tag, keep.suite, keep.keys).render(),)
            else:
                ours = (our_crypto(theirs.tag, theirs.suite, new_key).render(),)
        if not codecs:
            media.append(Media(m.kind, 0, m.proto, m.formats[:1]))
            continue
        events = [pt for pt in m.formats if m.encoding(pt) == TELEPHONE_EVENT][:1]
        formats = (*codecs, *events)
        chosen = True
        media.append(
            Media(
                "audio",
                port,
                m.proto,
                tuple(formats),
                rtpmap=tuple((pt, spec) for pt, spec in _rtpmaps(m) if pt in formats),
                fmtp=tuple((pt, spec) for pt, spec in m.fmtp if pt in events),
                direction=mirror(_offered_direction(offer, m)),
                ptime=m.ptime,
                crypto=ours,
            )
        )
    if not chosen:
        return None
    return SessionDescription("cig", session_id, str(version), address, address, tuple(media))


def _offered_direction(offer: SessionDescription, m: Media) -> str:
    """An offered stream's direction, RFC 2543 hold (c=0.0.0.0) read as sendonly."""
    if offer.media_address(m) in ("0.0.0.0", "::"):
        return "sendonly" if m.direction in ("sendrecv", "sendonly") else "inactive"
    return m.direction


def _rtpmaps(m: Media) -> list[tuple[str, str]]:
    """rtpmap lines for every format, filling in the static ones."""
    given = dict(m.rtpmap)
    out = []
    for pt in m.formats:
        if pt in given:
            out.append((pt, given[pt]))
        elif m.encoding(pt) in STATIC:
            out.append((pt, f"{m.encoding(pt)}/8000"))
    return out


def mirror(direction: str) -> str:
    """The answer's direction for an offer's (RFC 3264 6.1), and back."""
    return _MIRROR.get(direction, direction)


def stream_direction(sdp: SessionDescription) -> str:
    """
    The direction of C{sdp}'s audio stream from its writer's side, with
    RFC 2543 hold (a connection address of 0.0.0.0 or ::) read as
    C{sendonly} (or C{inactive}, when the stream did not want to send
    either): the writer will not receive. No audio stream: C{inactive}.
    """
    audio = sdp.audio()
    if audio is None:
        return "inactive"
    return _offered_direction(sdp, audio)


def sends(direction: str) -> bool:
    """Whether a stream's writer sends media in C{direction}."""
    return direction in ("sendrecv", "sendonly")


def receives(direction: str) -> bool:
    """Whether a stream's writer takes media in C{direction}."""
    return direction in ("sendrecv", "recvonly")


def with_direction(sdp: SessionDescription, direction: str) -> SessionDescription:
    """C{sdp} with its audio stream's direction set and its version one up."""
    if direction not in DIRECTIONS:
        raise SdpError(f"no direction {direction[:20]!r}")
    media = tuple(
        attrs.evolve(m, direction=direction) if m.kind == "audio" and m.port else m
        for m in sdp.media
    )
    version = str(int(sdp.version) + 1) if sdp.version.isascii() and sdp.version.isdigit() else "2"
    return attrs.evolve(sdp, media=media, version=version)


def chosen_codec(sdp: SessionDescription) -> str | None:
    """The first G.711 codec of the audio stream (what media will carry)."""
    audio = sdp.audio()
    if audio is None:
        return None
    for pt in audio.formats:
        name = audio.encoding(pt)
        if name in STATIC:
            return name
    return None


@attrs.frozen
class SrtpKeys:
    """
    The SRTP keys of a media stream (master key || salt each): C{tx} ours,
    to protect what we send, C{rx} the peer's, to unprotect what it sends.
    """

    suite: str
    tx: bytes = attrs.field(repr=False)
    rx: bytes = attrs.field(repr=False)


def our_line(sdp: SessionDescription) -> CryptoAttribute | None:
    """Our usable C{a=crypto} line of C{sdp}'s audio stream (a re-INVITE keeps its key)."""
    audio = sdp.audio()
    if audio is None or audio.proto != SAVP:
        return None
    return choose_crypto(crypto_lines(audio))


def srtp_keys(local: SessionDescription, remote: SessionDescription) -> SrtpKeys | None:
    """
    The keys of the audio stream our SDP C{local} and the peer's C{remote}
    agreed on (offer and answer, either way round): None for plain
    C{RTP/AVP}. The answer's line names the offer's by its tag.

    @raise SdpError: if one side is C{RTP/SAVP} and the other is not, or no
        usable line of one has the same tag and suite as one of the other.
    """
    ours, theirs = local.audio(), remote.audio()
    if ours is None or theirs is None:
        raise SdpError("no audio stream")
    if ours.proto != theirs.proto:
        raise SdpError(f"media protocols differ ({ours.proto} and {theirs.proto})")
    if theirs.proto != SAVP:
        return None
    mine = {(c.tag, c.suite): c for c in crypto_lines(ours) if c.usable}
    for line in crypto_lines(theirs):
        match = mine.get((line.tag, line.suite))
        if line.usable and match is not None:
            return SrtpKeys(line.suite, match.key, line.key)
    raise SdpError("no crypto attribute in common")
