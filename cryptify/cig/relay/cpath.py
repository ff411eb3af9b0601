"""The CIG bridge's per-packet path in C (``cbridge.c``, built by
``_cbridge_build.py``), Python side.

:class:`CCall` owns one call's C state: its SRTP sessions (libsrtp,
called directly), the secure -> PBX fast path, the PBX -> secure fast
path into its playout buffer (:class:`CPlayout`, ``playout.py``'s in C)
and its tick.  :class:`CTable` is the service's calls for the one 20 ms
clock that ticks them all in C.  A
:class:`~cryptify.cig.relay.bridge_core.CallBridge` built with
``engine="c"`` uses it; the control plane, telephone-events and new
client streams stay in Python, which is also the fallback where the
extension was not built (:func:`available` is then False).
``docs/bridge.md``, "The C path".
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from pylibsrtp import Error as SrtpError
from pylibsrtp import Session

from cryptify.cig.relay import bridge_spec

try:
    from cryptify.cig.relay import _cbridge

    _ffi: Any = _cbridge.ffi
    _lib: Any = _cbridge.lib
except ImportError:  # pragma: no cover - built at install time
    _ffi = _lib = None


def _bind() -> bool:
    """Hand the C side pylibsrtp's ``srtp_protect``/``srtp_unprotect``."""
    if _lib is None:
        return False
    try:
        from pylibsrtp import _binding

        addresses = [
            int(_binding.ffi.cast("uintptr_t", _binding.ffi.addressof(_binding.lib, name)))
            for name in ("srtp_protect", "srtp_unprotect")
        ]
    except (ImportError, AttributeError):  # pragma: no cover - other pylibsrtp internals
        return False
    protect, unprotect = (_ffi.cast("void *", a) for a in addresses)
    return bool(_lib.cb_bind(protect, unprotect) == 0)


_BOUND = _bind()

#: What :meth:`CCall.secure_to_pbx` answers: a packet for the PBX, nothing,
#: or the unprotected packet for the Python path.
SEND, DROP, SLOW = 0, 1, 2
#: Which sessions :class:`CSession` uses.
SECURE, PBX = 0, 1
#: Counters the C side keeps (deltas, folded into ``BridgeCounters``).
COUNTERS = (
    "secure_rx",
    "secure_tx",
    "pbx_rx",
    "pbx_tx",
    "transcoded",
    "srtp_errors",
    "pbx_srtp_errors",
    "held",
    "pbx_rx_octets",
    "pbx_tx_octets",
    "tx_errors",
)
#: The playout buffer's counters (totals, as ``Playout``'s fields).
PLAYOUT_COUNTERS = ("late", "concealed", "underruns", "resyncs")
#: Datagrams one :meth:`CCall.drain_secure` reads at most.
BATCH: int = _lib.CB_BATCH if _lib is not None else 0

_U32 = 1 << 32


def _same_limits() -> bool:
    """Whether the C side was built with this Python side's limits."""
    if _lib is None:
        return False
    return (
        _lib.CB_FRAME,
        _lib.CB_PLAYOUT_DELAY,
        _lib.CB_PLAYOUT_MAX_AHEAD,
        _lib.CB_PLAYOUT_MAX_PACKETS,
        _lib.CB_SEQ_MAX_DROPOUT,
        _lib.CB_SEQ_MAX_MISORDER,
    ) == (
        bridge_spec.FRAME_SAMPLES,
        bridge_spec.PLAYOUT_DELAY,
        bridge_spec.PLAYOUT_MAX_AHEAD,
        bridge_spec.PLAYOUT_MAX_PACKETS,
        bridge_spec.SEQ_MAX_DROPOUT,
        bridge_spec.SEQ_MAX_MISORDER,
    )


_USABLE = _BOUND and _same_limits()


def available() -> bool:
    """Whether the C path was built (and found pylibsrtp's libsrtp)."""
    return _USABLE


def _context(session: Session | None) -> Any:
    """The libsrtp context (``srtp_t``) of a pylibsrtp session, for C."""
    if session is None:
        return _ffi.NULL
    from pylibsrtp import _binding

    return _ffi.cast("void *", int(_binding.ffi.cast("uintptr_t", session._srtp[0])))


def sockaddr(address: tuple[str, int]) -> bytes:
    """A ``struct sockaddr_in`` for ``sendmmsg``."""
    return (
        struct.pack("=H", socket.AF_INET)
        + struct.pack("!H", address[1])
        + socket.inet_aton(address[0])
        + bytes(8)
    )


class CSession:
    """One of a call's C SRTP sessions, with pylibsrtp's ``Session`` interface
    as the bridge uses it (``unprotect`` answers None for a packet that fails)."""

    def __init__(self, call: CCall, which: int) -> None:
        self._ptr = call.ptr
        self._which = which
        self._out = call.out
        self._len = call.length

    def protect(self, rtp: bytes) -> bytes:
        out, length = self._out, self._len
        status = _lib.cb_protect(self._ptr, self._which, rtp, len(rtp), out, length)
        if status:
            raise SrtpError(f"srtp_protect failed: {status}")
        data: bytes = _ffi.buffer(out, length[0])[:]
        return data

    def unprotect(self, srtp: bytes) -> bytes | None:
        out, length = self._out, self._len
        if _lib.cb_unprotect(self._ptr, self._which, srtp, len(srtp), out, length):
            return None
        data: bytes = _ffi.buffer(out, length[0])[:]
        return data


class CPlayout:
    """A call's playout buffer in C, with :class:`~cryptify.cig.relay.playout.Playout`'s
    interface as the bridge uses it (``push``, ``pull``, ``restart``, the counters)."""

    def __init__(self, call: CCall) -> None:
        self._ptr = call.ptr
        self._state = call.state
        self._frame = _ffi.new("unsigned char[]", _lib.CB_ROOM)

    @property
    def silence(self) -> int:
        return int(self._state.silence)

    @silence.setter
    def silence(self, value: int) -> None:
        self._state.silence = value

    def push(self, timestamp: int, frame: bytes) -> None:
        if _lib.cb_playout_push(self._ptr, timestamp, frame, len(frame)):
            raise MemoryError("cb_playout_push")

    def pull(self, n: int = bridge_spec.FRAME_SAMPLES) -> bytes | None:
        out = self._frame if n <= _lib.CB_ROOM else _ffi.new("unsigned char[]", n)
        if _lib.cb_playout_pull(self._ptr, out, n) < 0:
            return None
        data: bytes = _ffi.buffer(out, n)[:]
        return data

    def restart(self) -> None:
        _lib.cb_playout_restart(self._ptr)

    @property
    def frames(self) -> int:
        """How many frames are buffered."""
        return int(_lib.cb_playout_frames(self._ptr))

    @property
    def late(self) -> int:
        return int(self._state.late)

    @property
    def concealed(self) -> int:
        return int(self._state.concealed)

    @property
    def underruns(self) -> int:
        return int(self._state.underruns)

    @property
    def resyncs(self) -> int:
        return int(self._state.resyncs)


class CCall:
    """One call's C state (freed with this object) over its pylibsrtp sessions,
    which it keeps alive: the secure leg's, and the PBX leg's when it is SRTP."""

    def __init__(self, rx: Session, tx: Session) -> None:
        ptr = _lib.cb_new()
        if ptr == _ffi.NULL:
            raise MemoryError("cb_new")
        self.ptr = _ffi.gc(ptr, _lib.cb_free)
        #: The C struct Python reads and writes (fast-path state, counters).
        self.state: Any = _lib.cb_state_of(self.ptr)
        self.out = _ffi.new("unsigned char[]", _lib.CB_ROOM)
        self.length = _ffi.new("int *")
        self._slow = _ffi.new("unsigned char[]", _lib.CB_ROOM)
        self._slow_len = _ffi.new("int *")
        self._sessions: tuple[Session | None, ...] = ()
        self.secure_tx = CSession(self, SECURE)
        self.secure_rx = CSession(self, SECURE)
        self.pbx_tx = CSession(self, PBX)
        self.pbx_rx = CSession(self, PBX)
        self.playout = CPlayout(self)
        self.set_sessions(rx, tx, None, None)

    def set_sessions(
        self, rx: Session, tx: Session, pbx_rx: Session | None, pbx_tx: Session | None
    ) -> None:
        """The call's sessions (the PBX leg's None: plain RTP)."""
        sessions = (rx, tx, pbx_rx, pbx_tx)
        _lib.cb_set_sessions(self.ptr, *map(_context, sessions))
        # Only now may the sessions the C side used before be freed.
        self._sessions = sessions

    def set_pbx(self, pbx_rx: Session | None, pbx_tx: Session | None) -> None:
        """New PBX leg sessions (None: plain RTP)."""
        rx, tx = self._sessions[0], self._sessions[1]
        assert rx is not None and tx is not None
        self.set_sessions(rx, tx, pbx_rx, pbx_tx)

    def secure_to_pbx(self, srtp: bytes) -> tuple[int, bytes | None]:
        """One datagram from the relay: (SEND, packet), (DROP, None) or (SLOW, rtp)."""
        out, length = self.out, self.length
        status = _lib.cb_secure_to_pbx(self.ptr, srtp, len(srtp), out, length)
        if status == DROP:
            return DROP, None
        if status < 0:
            raise SrtpError("srtp_protect failed towards the PBX")
        data: bytes = _ffi.buffer(out, length[0])[:]
        return status, data

    def pbx_in(self, data: bytes) -> bytes | None:
        """One datagram from the PBX: None when C took it (into the playout
        buffer, or dropped and counted), else the unprotected packet the
        Python path must finish."""
        size = len(data)
        out = self.out if size <= _lib.CB_ROOM else _ffi.new("unsigned char[]", size)
        length = self.length
        status = _lib.cb_pbx_in(self.ptr, data, size, out, length)
        if status == SLOW:
            rtp: bytes = _ffi.buffer(out, length[0])[:]
            return rtp
        if status < 0:
            raise MemoryError("cb_pbx_in")
        return None

    def tick(self) -> bytes | None:
        """This tick's datagram for the relay (tag || SRTP), or None when
        Python must tick the call (a telephone-event under way)."""
        out, length = self.out, self.length
        status = _lib.cb_tick(self.ptr, out, length)
        if status == SLOW:
            return None
        if status < 0:
            raise SrtpError("srtp_protect failed towards the relay")
        data: bytes = _ffi.buffer(out, length[0])[:]
        return data

    def set_io(self, ident: int, secure_fd: int, relay: bytes) -> None:
        """Where :class:`CTable`'s clock sends this call's ticks from and to."""
        _lib.cb_set_io(self.ptr, ident, secure_fd, relay, len(relay))

    def set_pbx_address(self, address: bytes) -> None:
        """Where :class:`CTable`'s poller sends to the PBX (b"": not known yet)."""
        _lib.cb_set_pbx_addr(self.ptr, address, len(address))

    def drain_secure(
        self, fd_in: int, fd_out: int, address: bytes, most: int
    ) -> tuple[int, bytes | None]:
        """Read up to ``most`` datagrams from ``fd_in`` (at most :data:`BATCH`),
        send what the fast path makes to ``address`` through ``fd_out``.

        Answers how many were read (-1: none waited) and the unprotected
        packet the Python path must finish, if the last one was such."""
        got = _lib.cb_drain_secure(
            self.ptr, fd_in, fd_out, address, len(address), most,
            self._slow, self._slow_len, _lib.CB_ROOM,
        )  # fmt: skip
        n = self._slow_len[0]
        return got, (_ffi.buffer(self._slow, n)[:] if n > 0 else None)

    def drain_pbx(self, fd_in: int, most: int) -> tuple[int, bytes | None]:
        """Read up to ``most`` datagrams from the PBX leg's ``fd_in`` into the
        playout buffer; as :meth:`drain_secure`, the last one may come back
        for the Python path."""
        got = _lib.cb_drain_pbx(self.ptr, fd_in, most, self._slow, self._slow_len, _lib.CB_ROOM)
        n = self._slow_len[0]
        return got, (_ffi.buffer(self._slow, n)[:] if n > 0 else None)

    def left(self) -> int:
        """Datagrams of this call's last read still to be handled."""
        return int(_lib.cb_left(self.ptr))

    def take_counters(self) -> dict[str, int]:
        """The counts since the last call (and zero them)."""
        st = self.state
        out = {name: int(getattr(st, name)) for name in COUNTERS}
        for name in COUNTERS:
            setattr(st, name, 0)
        return out


class CTable:
    """The calls one clock ticks in C (:meth:`tick_all`: each call's datagram
    goes out of its secure leg by ``sendto``, from C) and whose legs one
    epoll set of C's holds (:meth:`poll`, :meth:`fileno` for the reactor)."""

    def __init__(self) -> None:
        ptr = _lib.cb_table_new()
        if ptr == _ffi.NULL:
            raise MemoryError("cb_table_new")
        self.ptr = _ffi.gc(ptr, _lib.cb_table_free)
        #: The calls in the table (kept alive while C holds their pointers).
        self.calls: dict[int, CCall] = {}
        self._slow = _ffi.new("int[]", 64)
        self._slow_size = 64
        self._ident = _ffi.new("int *")
        self._leg = _ffi.new("int *")
        self._packet = _ffi.new("unsigned char[]", _lib.CB_ROOM)
        self._packet_len = _ffi.new("int *")

    def fileno(self) -> int:
        """The epoll set of the legs (readable when a leg is)."""
        return int(_lib.cb_table_fileno(self.ptr))

    def add(self, ident: int, call: CCall, pbx_fd: int = -1) -> None:
        """A call on the clock (after :meth:`CCall.set_io`), and with ``pbx_fd``
        both its legs in the epoll set."""
        if _lib.cb_table_add(self.ptr, call.ptr, pbx_fd):
            raise OSError("cb_table_add: cannot watch the legs")
        self.calls[ident] = call

    def remove(self, ident: int) -> None:
        call = self.calls.pop(ident, None)
        if call is not None:
            _lib.cb_table_remove(self.ptr, call.ptr)

    def tick_all(self) -> list[int]:
        """One tick of every call; the ids of those Python must tick."""
        if len(self.calls) > self._slow_size:
            self._slow_size = 2 * len(self.calls)
            self._slow = _ffi.new("int[]", self._slow_size)
        n = _lib.cb_tick_all(self.ptr, self._slow, self._slow_size)
        if not n:
            return []
        slow: list[int] = _ffi.unpack(self._slow, n)
        return slow

    def poll(self, rounds: int, most: int, slow: Callable[[int, int, bytes], None]) -> None:
        """Read what waits on the legs: up to ``rounds`` rounds of epoll, up to
        ``most`` datagrams per ready leg a round; each packet the fast paths
        leave goes to ``slow(ident, leg, packet)`` (leg: :data:`SECURE` or
        :data:`PBX`), in its place among the others."""
        ptr, ident, leg, packet, length = (
            self.ptr, self._ident, self._leg, self._packet, self._packet_len,
        )  # fmt: skip
        _lib.cb_poll_start(ptr, rounds, most)
        while _lib.cb_poll_next(ptr, ident, leg, packet, length, _lib.CB_ROOM):
            slow(ident[0], leg[0], _ffi.buffer(packet, length[0])[:])
