"""Where RFC 4475's SIP torture messages are (read in place, never copied)."""

from __future__ import annotations

import os

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CANDIDATES = (
    os.environ.get("CRYPTIFY_SIP_TORTURE", ""),
    os.path.join(os.path.dirname(_REPO), "shared", "sip-torture", "rfc4475"),
    "/work/shared/sip-torture/rfc4475",
)


def torture_dir() -> str:
    """The first directory that holds them (the first candidate if none does)."""
    for candidate in _CANDIDATES:
        if candidate and os.path.isdir(candidate):
            return candidate
    return _CANDIDATES[1]


TORTURE = torture_dir()
