"""
SDES: SRTP keys in SDP (RFC 4568 C{a=crypto}), sans-IO.

The keys of SRTP on the PBX leg (L{cryptify.protocols.sip.sdp} puts
them in offers and answers; docs/sip.md "SRTP towards the PBX").
L{parse_crypto} reads one C{a=crypto} value, L{choose_crypto} picks the
offered line to accept, L{our_crypto} makes the line we send with a
fresh key.

Rules:
 - Suites: C{AES_CM_128_HMAC_SHA1_80} and C{AES_CM_128_HMAC_SHA1_32}
   (30 bytes of master key and salt). Lines with other suites, with
   session parameters, with an MKI or with more than one key are
   skipped by L{choose_crypto} (we could not honour them), never guessed.
 - Limits: a value of at most L{MAX_CRYPTO_LENGTH} characters, a tag of
   at most 9 digits, at most L{MAX_KEYS} keys; anything unreadable is an
   L{SdesError}.
 - Keys never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable, Iterable

import attrs

#: The suites we can protect media with, in our order of preference.
SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
#: Master key (16) and salt (14) of the AES-CM-128 suites.
KEY_BYTES = 30
MAX_CRYPTO_LENGTH = 1024
MAX_KEYS = 16
_TAG = re.compile(r"[0-9]{1,9}")
_SUITE = re.compile(r"[A-Za-z0-9_]{1,64}")
_LIFETIME = re.compile(r"(?:2\^[0-9]{1,2}|[0-9]{1,20})")
_MKI = re.compile(r"[0-9]{1,20}:[0-9]{1,3}")


class SdesError(ValueError):
    """An C{a=crypto} value we cannot read; C{reason} says why (never the key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class KeyParams:
    """One C{inline:} key: master key and salt, optional lifetime and MKI."""

    key: bytes = attrs.field(repr=False)
    lifetime: str | None = None
    mki: str | None = None

    def render(self) -> str:
        text = "inline:" + base64.b64encode(self.key).decode("ascii")
        if self.lifetime is not None:
            text += f"|{self.lifetime}"
        if self.mki is not None:
            text += f"|{self.mki}"
        return text


@attrs.frozen
class CryptoAttribute:
    """One C{a=crypto} line: tag, suite, keys, session parameters."""

    tag: int
    suite: str
    keys: tuple[KeyParams, ...]
    session_params: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        """Whether we can honour it: a known suite, one right-sized key, no MKI or parameters."""
        return (
            self.suite in SUITES
            and len(self.keys) == 1
            and len(self.keys[0].key) == KEY_BYTES
            and self.keys[0].mki is None
            and not self.session_params
        )

    @property
    def key(self) -> bytes:
        """The (single) master key and salt."""
        return self.keys[0].key

    def render(self) -> str:
        """The value after C{a=crypto:}."""
        parts = [str(self.tag), self.suite, ";".join(k.render() for k in self.keys)]
        return " ".join([*parts, *self.session_params])


def _key_params(text: str) -> KeyParams:
    method, colon, info = text.partition(":")
    if method.lower() != "inline" or not colon:
        raise SdesError("key method is not inline")
    fields = info.split("|")
    if len(fields) > 3:
        raise SdesError("too many key fields")
    try:
        key = base64.b64decode(fields[0], validate=True)
    except (binascii.Error, ValueError):
        raise SdesError("key is not base64") from None
    if not key:
        raise SdesError("empty key")
    lifetime: str | None = None
    mki: str | None = None
    for extra in fields[1:]:
        if _MKI.fullmatch(extra) and mki is None:
            mki = extra
        elif _LIFETIME.fullmatch(extra) and lifetime is None and mki is None:
            lifetime = extra
        else:
            raise SdesError("bad key lifetime or MKI")
    return KeyParams(key, lifetime, mki)


def parse_crypto(value: str) -> CryptoAttribute:
    """
    One C{a=crypto} value (what follows C{a=crypto:}).

    @raise SdesError: if it is not RFC 4568's form or breaks a limit.
    """
    if len(value) > MAX_CRYPTO_LENGTH:
        raise SdesError("crypto attribute too long")
    words = value.strip().split()
    if len(words) < 3:
        raise SdesError("crypto attribute needs a tag, a suite and keys")
    tag, suite, keys = words[:3]
    if not _TAG.fullmatch(tag):
        raise SdesError("bad crypto tag")
    if not _SUITE.fullmatch(suite):
        raise SdesError("bad crypto suite")
    key_texts = keys.split(";")
    if len(key_texts) > MAX_KEYS:
        raise SdesError("too many keys")
    return CryptoAttribute(
        int(tag),
        suite,
        tuple(_key_params(k) for k in key_texts),
        tuple(words[3:]),
    )


def choose_crypto(offered: Iterable[CryptoAttribute]) -> CryptoAttribute | None:
    """The first offered line we can honour (RFC 4568 5.1.2: the offerer's order)."""
    for line in offered:
        if line.usable:
            return line
    return None


def our_crypto(
    tag: int, suite: str, new_key: Callable[[int], bytes] = secrets.token_bytes
) -> CryptoAttribute:
    """Our line for C{suite} (answering, C{tag} is the chosen offer's) with a fresh key."""
    if suite not in SUITES:
        raise SdesError("unsupported crypto suite")
    return CryptoAttribute(tag, suite, (KeyParams(new_key(KEY_BYTES)),))
