"""Batched media I/O for the CRS relay: ``recvmmsg``/``sendmmsg`` through cffi.

The standard library has no ``recvmmsg``; cffi (already installed with
``cryptography``) calls the C library's in ABI mode, no compiler needed.
One wakeup reads up to :data:`BATCH` datagrams per system call into a
preallocated buffer, asks the core where each goes, and sends every
forwarded packet in one ``sendmmsg`` straight out of the receive buffer
(the tag is skipped by pointing the send vector 8 bytes in; nothing is
copied).  Addresses are the raw ``sockaddr`` bytes, and a latched leg's
destination is a preallocated ``sockaddr`` (after addr-map), so the hot
loop builds no Python tuples.

Linux only; :func:`available` tells whether it can be used, and the relay
falls back to :class:`cryptify.crs.relay.wiring.RelayReader` otherwise.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from cryptify.crs.relay.core import Address, Drop, RelayCore
from cryptify.protocols.relay_packet import TAG_SIZE

#: Datagrams per recvmmsg/sendmmsg call.
BATCH = 32
#: recvmmsg calls per wakeup before the reactor gets a turn.  A short
#: batch does not end the wakeup: packets that arrived meanwhile are read
#: at once, which saves the reactor's per-wakeup work under load.
ROUNDS = 16
#: Bytes per receive slot (the longest relayed packet is 1472).
SLOT = 2048
#: Bytes per source-address slot (a sockaddr_in6 is 28).
NAME = 32

_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen;
    struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen; int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int recvmmsg(int, struct mmsghdr *, unsigned int, int, void *);
int sendmmsg(int, struct mmsghdr *, unsigned int, int);
"""

_MSG_DONTWAIT = 0x40

_lib: Any = None
_ffi: Any = None


def available() -> bool:
    """Whether batched I/O can be used here (Linux, cffi, libc with mmsg)."""
    global _lib, _ffi
    if _lib is not None:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import cffi

        ffi = cffi.FFI()
        ffi.cdef(_CDEF)
        lib = ffi.dlopen(None)
        for symbol in ("recvmmsg", "sendmmsg"):
            getattr(lib, symbol)  # resolve now: a libc without it fails here
    except (ImportError, OSError, AttributeError):
        return False
    _ffi, _lib = ffi, lib
    return True


def raw_address(host: str, port: int) -> bytes:
    """A sockaddr for (host, port), as the kernel writes it."""
    if ":" in host:
        packed = socket.inet_pton(socket.AF_INET6, host)
        return struct.pack("=HH4x16s4x", socket.AF_INET6, socket.htons(port), packed)
    packed = socket.inet_aton(host)
    return struct.pack("=HH4s8x", socket.AF_INET, socket.htons(port), packed)


def parse_raw(raw: bytes) -> tuple[str, int]:
    """(host, port) of a raw sockaddr."""
    family, port = struct.unpack_from("=HH", raw)
    if family == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), socket.ntohs(port)
    return socket.inet_ntoa(raw[4:8]), socket.ntohs(port)


@implementer(IReadDescriptor)
class BatchReader:
    """Reads, routes and forwards datagrams in batches (see the module doc)."""

    def __init__(
        self,
        core: RelayCore,
        clock: IReactorTime,
        sock: socket.socket,
        map_address: Callable[[str], str],
        rounds: int = ROUNDS,
    ) -> None:
        if not available():
            raise RuntimeError("recvmmsg/sendmmsg are not available here")
        ffi = _ffi
        self.core = core
        self.clock = clock
        self.sock = sock
        self.fd = sock.fileno()
        self.rounds = rounds
        self.map_address = map_address
        self.namelen = 28 if sock.family == socket.AF_INET6 else 16
        self._rbuf = ffi.new("char[]", BATCH * SLOT)
        self._names = ffi.new("char[]", BATCH * NAME)
        self._rbytes = ffi.buffer(self._rbuf)
        self._nbytes = ffi.buffer(self._names)
        self._riov = ffi.new("struct iovec[]", BATCH)
        self._rmsg = ffi.new("struct mmsghdr[]", BATCH)
        for i in range(BATCH):
            self._riov[i].iov_base = self._rbuf + i * SLOT
            self._riov[i].iov_len = SLOT
            hdr = self._rmsg[i].msg_hdr
            hdr.msg_name = self._names + i * NAME
            hdr.msg_namelen = NAME
            hdr.msg_iov = ffi.addressof(self._riov[i])
            hdr.msg_iovlen = 1
        # A copy of the fresh headers restores msg_namelen before each call.
        self._rtemplate = bytes(ffi.buffer(self._rmsg))
        self._siov = ffi.new("struct iovec[]", BATCH)
        self._smsg = ffi.new("struct mmsghdr[]", BATCH)
        self._shdr = []
        for j in range(BATCH):
            hdr = self._smsg[j].msg_hdr
            hdr.msg_namelen = self.namelen
            hdr.msg_iov = ffi.addressof(self._siov[j])
            hdr.msg_iovlen = 1
            self._shdr.append(ffi.addressof(hdr))
        self._siov_list = [self._siov + j for j in range(BATCH)]
        self._payload = [self._rbuf + i * SLOT + TAG_SIZE for i in range(BATCH)]
        self._lens = [ffi.addressof(self._rmsg[i], "msg_len") for i in range(BATCH)]
        core.resolve = self.resolve
        core.address_of = raw_address

    def resolve(self, source: Address) -> Address:
        """Destination of a latched raw source address: addr-map applied, as
        a preallocated sockaddr the send headers point at."""
        assert isinstance(source, bytes)
        host, port = parse_raw(source)
        mapped = self.map_address(host)
        raw = source if mapped == host else raw_address(mapped, port)
        dest: Address = _ffi.new("char[]", raw)
        return dest

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "crs_relay media"

    def connectionLost(self, reason: Failure) -> None:
        self.sock.close()

    def doRead(self) -> None:
        ffi, lib = _ffi, _lib
        fd = self.fd
        core = self.core
        route = core.route
        counters = self.core.counters
        rbytes, nbytes, namelen = self._rbytes, self._nbytes, self.namelen
        rmsg, smsg, template = self._rmsg, self._smsg, self._rtemplate
        shdr, siov, payload, lens = self._shdr, self._siov_list, self._payload, self._lens
        now = self.clock.seconds()
        for _ in range(self.rounds):
            ffi.memmove(rmsg, template, len(template))
            got = lib.recvmmsg(fd, rmsg, BATCH, _MSG_DONTWAIT, ffi.NULL)
            if got <= 0:
                return
            out = 0
            for i in range(got):
                size = lens[i][0]
                at = i * SLOT
                name = i * NAME
                dest = route(rbytes[at : at + TAG_SIZE], size, nbytes[name : name + namelen], now)
                if dest.__class__ is Drop:
                    continue
                shdr[out].msg_name = dest
                vec = siov[out]
                out_tag = core.out_tag
                if out_tag is None:
                    vec.iov_base = payload[i]
                    vec.iov_len = size - TAG_SIZE
                else:  # to a bridged relay: its tag in place of ours
                    start = payload[i] - TAG_SIZE
                    ffi.memmove(start, out_tag, TAG_SIZE)
                    vec.iov_base = start
                    vec.iov_len = size
                out += 1
            done = 0
            while done < out:
                sent = lib.sendmmsg(fd, smsg + done, out - done, 0)
                if sent <= 0:
                    # The first message was refused: count it, try the rest.
                    counters.txerror += 1
                    done += 1
                else:
                    counters.txb += sent
                    done += sent


class BatchPort:
    """A bound media socket served by a :class:`BatchReader`."""

    def __init__(self, reactor: IReactorFDSet, reader: BatchReader) -> None:
        self.reactor = reactor
        self.reader = reader
        reactor.addReader(reader)

    def stopListening(self) -> None:
        self.reactor.removeReader(self.reader)
        self.reader.sock.close()
