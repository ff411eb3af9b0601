"""Small helpers shared by the crypto modules."""

from __future__ import annotations

import re
import secrets

from cryptify.crypto.errors import MalformedInput

_PERIOD = re.compile(r"\A(\d{4})-(0[1-9]|1[0-2])\Z")


def i2osp(value: int, length: int) -> bytes:
    """Encode a non-negative integer as exactly C{length} big-endian octets."""
    return int(value).to_bytes(length, "big")


def os2ip(data: bytes) -> int:
    """Decode big-endian octets as a non-negative integer."""
    return int.from_bytes(data, "big")


def random_below(bound: int) -> int:
    """A uniformly random integer in [1, bound)."""
    while True:
        value = secrets.randbelow(bound)
        if value:
            return value


def unhex(text: str, what: str) -> bytes:
    """Decode hex text, raising L{MalformedInput} naming C{what}."""
    try:
        return bytes.fromhex(text)
    except (ValueError, TypeError) as e:
        raise MalformedInput(f"{what} is not valid hex") from e


def check_period(text: object) -> str:
    """Check a key period written YYYY-MM and return it."""
    if not isinstance(text, str) or not _PERIOD.match(text):
        raise MalformedInput("key period must be written YYYY-MM")
    return text


def next_period(period: str) -> str:
    """The month after C{period} (YYYY-MM)."""
    check_period(period)
    year, month = int(period[:4]), int(period[5:])
    if month == 12:
        return f"{year + 1:04d}-01"
    return f"{year:04d}-{month + 1:02d}"
