"""The bridge's SRTP sessions: pylibsrtp's, called without its per-packet
overhead (:class:`FastSrtp`), behind the small interface the bridge and
the C path share (:class:`SrtpSession`).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session

from cryptify.cig.relay.bridge_spec import SRTP_PROFILES

#: Room pylibsrtp's buffer keeps for the SRTP trailer (auth tag, MKI).
_SRTP_TRAILER = 144


def new_session(key: bytes, profile: str, outbound: bool) -> Session:
    kind = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
    return Session(Policy(key=key, ssrc_type=kind, srtp_profile=SRTP_PROFILES[profile]))


def _libsrtp() -> Any:
    try:
        return importlib.import_module("pylibsrtp._binding")
    except ImportError:  # pragma: no cover - pylibsrtp always has it today
        return None


_BINDING = _libsrtp()


class SrtpSession(Protocol):
    """What the bridge asks of an SRTP session (:class:`FastSrtp` or the C path's)."""

    def protect(self, rtp: bytes) -> bytes: ...

    def unprotect(self, srtp: bytes) -> bytes | None: ...


class FastSrtp:
    """One pylibsrtp :class:`Session`, called without its per-packet overhead.

    ``Session.protect``/``unprotect`` allocate a length cell and check the
    argument's type on every packet; this keeps one cell and calls
    libsrtp on the session's own buffer directly (falling back to the
    public methods if pylibsrtp's internals ever differ).
    ``unprotect`` answers None for a packet that fails authentication or
    the replay check instead of raising.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._fast = False
        binding = _BINDING
        try:
            self._ctx = session._srtp[0]
            self._cdata = session._cdata
            self._buffer = session._buffer
            self._room = len(self._buffer) - _SRTP_TRAILER
            self._length = binding.ffi.new("int *")
            self._protect = binding.lib.srtp_protect
            self._unprotect = binding.lib.srtp_unprotect
            self._fast = True
        except AttributeError:  # pragma: no cover - other pylibsrtp internals
            pass

    def protect(self, rtp: bytes) -> bytes:
        size = len(rtp)
        if not self._fast or size > self._room:
            return self.session.protect(rtp)
        buffer, length = self._buffer, self._length
        buffer[0:size] = rtp
        length[0] = size
        status = self._protect(self._ctx, self._cdata, length)
        if status:
            raise SrtpError(f"srtp_protect failed: {status}")
        out: bytes = buffer[0 : length[0]]
        return out

    def unprotect(self, srtp: bytes) -> bytes | None:
        size = len(srtp)
        if not self._fast or size > self._room:
            try:
                return self.session.unprotect(srtp)
            except (SrtpError, ValueError):
                return None
        buffer, length = self._buffer, self._length
        buffer[0:size] = srtp
        length[0] = size
        if self._unprotect(self._ctx, self._cdata, length):
            return None
        out: bytes = buffer[0 : length[0]]
        return out
