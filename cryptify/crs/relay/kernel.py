"""The relay's fast path in the kernel: an eBPF program on tc ingress.

``bpf/relay.bpf.c`` is compiled with clang when the package is installed
(``setup.py``, next to this module as ``relay.bpf.o``).  :class:`KernelPath`
loads it through libbpf (``libbpf.so.1``, called through cffi in ABI mode:
no compiler is needed at run time, and nothing is linked at install time),
attaches it to the ingress of the interfaces that carry the relay's
address, and keeps its ``legs`` map in step with the core: a session is
*pushed* once both its legs have latched, *pulled* (counters, credit,
last-seen time) before the core decides anything about it, and withdrawn
when it ends.  The kernel forwards the packets of a pushed session that
come from the latched addresses; every other datagram reaches the
userspace relay as before, which stays the whole relay where this module
cannot load (:class:`KernelPathUnavailable` says why, once, in the log).

Attachment: a tcx link (Linux 6.6+) is tried first, because the kernel
detaches it by itself when the relay process exits or dies, so a dead
relay never leaves a program forwarding for sessions nobody expires.
Where tcx is missing, a ``cls_bpf`` filter in direct-action mode is
attached on the ``clsact`` qdisc (``bpf_tc_attach``) and removed when the
relay stops.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

from cryptify.addresses import is_wildcard
from cryptify.crs.relay.core import CREDIT_CAP, Address, Leg, RelaySession

if TYPE_CHECKING:
    from cffi import FFI

    #: A C value handed over by cffi (``struct bpf_object *``, ...).
    CData = FFI.CData

__all__ = ["OBJECT_PATH", "KernelPath", "KernelPathUnavailable", "interfaces_for"]

#: The compiled program (built at install time; absent without clang).
OBJECT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.bpf.o")

_CDEF = """
struct bpf_object;
struct bpf_program;
struct bpf_object *bpf_object__open_file(const char *path, const void *opts);
int bpf_object__load(struct bpf_object *obj);
void bpf_object__close(struct bpf_object *obj);
struct bpf_program *bpf_object__find_program_by_name(const struct bpf_object *obj,
                                                     const char *name);
int bpf_program__fd(const struct bpf_program *prog);
int bpf_object__find_map_fd_by_name(const struct bpf_object *obj, const char *name);
int bpf_map_update_elem(int fd, const void *key, const void *value, unsigned long long flags);
int bpf_map_lookup_elem(int fd, const void *key, void *value);
int bpf_map_lookup_elem_flags(int fd, const void *key, void *value, unsigned long long flags);
int bpf_map_delete_elem(int fd, const void *key);
int bpf_link_create(int prog_fd, int target_fd, int attach_type, const void *opts);
struct bpf_tc_hook { size_t sz; int ifindex; int attach_point; unsigned int parent; };
struct bpf_tc_opts {
    size_t sz; int prog_fd; unsigned int flags; unsigned int prog_id;
    unsigned int handle; unsigned int priority;
};
int bpf_tc_hook_create(struct bpf_tc_hook *hook);
int bpf_tc_attach(const struct bpf_tc_hook *hook, struct bpf_tc_opts *opts);
int bpf_tc_detach(const struct bpf_tc_hook *hook, const struct bpf_tc_opts *opts);
typedef int (*libbpf_print_fn_t)(int level, const char *, void *);
libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn);

struct bpf_spin_lock { unsigned int val; };
struct leg {
    struct bpf_spin_lock lock;
    uint32_t credit; uint32_t cap; uint32_t src_ip; uint32_t dest_ip;
    uint16_t src_port; uint16_t dest_port; uint32_t pad;
    uint64_t peer; uint64_t seen_ns; uint64_t packets; uint64_t bytes;
};
struct config { uint32_t relay_ip; uint16_t relay_port; uint16_t pad; };
"""

#: enum bpf_attach_type: BPF_TCX_INGRESS (Linux 6.6).
_BPF_TCX_INGRESS = 46
#: enum bpf_tc_attach_point: BPF_TC_INGRESS.
_BPF_TC_INGRESS = 1
#: Map update/lookup flag: copy the value under its spin lock.
_BPF_F_LOCK = 4
_BPF_ANY = 0
#: Priority of the cls_bpf filter (the tcx fallback); its handle is the
#: relay's port, so relays on other ports keep their own filters.
_TC_PRIORITY = 0xC0DE
_SIOCGIFADDR = 0x8915
_STAT_NAMES = ("RX", "TXB", "ERRNODEST", "TXERROR")

_ffi: Any = None
_lib: Any = None


class KernelPathUnavailable(Exception):
    """The kernel path cannot be used here; ``str()`` is the reason."""


def _load_libbpf() -> tuple[Any, Any]:
    global _ffi, _lib
    if _lib is None:
        try:
            import cffi

            ffi = cffi.FFI()
            ffi.cdef(_CDEF)
            lib: Any = ffi.dlopen("libbpf.so.1")
        except (ImportError, OSError) as e:
            raise KernelPathUnavailable(f"libbpf.so.1 cannot be loaded ({e})") from None
        lib.libbpf_set_print(ffi.NULL)  # its messages go nowhere: errno says why
        _ffi, _lib = ffi, lib
    return _ffi, _lib


def _fail(what: str, code: int) -> KernelPathUnavailable:
    code = abs(code) or ctypes_errno()
    hint = ""
    if code == errno.EPERM:
        hint = " (needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, or root)"
    return KernelPathUnavailable(
        f"{what}: {errno.errorcode.get(code, code)} {os.strerror(code)}{hint}"
    )


def ctypes_errno() -> int:
    """The errno the last libbpf call left (through cffi)."""
    return int(_ffi.errno) if _ffi is not None else 0


def _ipv4_of(ifname: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", ifname.encode()))
        except OSError:
            return None
    return socket.inet_ntoa(raw[20:24])


def local_addresses() -> list[str]:
    """The IPv4 address of every interface (its first), for the program to
    tell a local destination from one out of the device."""
    found = []
    for _, name in socket.if_nameindex():
        address = _ipv4_of(name)
        if address is not None:
            found.append(address)
    return found


def interfaces_for(host: str) -> list[tuple[int, str]]:
    """The interfaces (index, name) whose ingress a relay on ``host`` sees:
    loopback always (a local client's packets cross it whatever address
    they are sent to), and the interface that has ``host``, or every
    interface when the relay listens on ``0.0.0.0``."""
    found = []
    for index, name in socket.if_nameindex():
        if name == "lo" or is_wildcard(host) or _ipv4_of(name) == host:
            found.append((index, name))
    return found


def _inet(address: Address) -> tuple[int, int] | None:
    """(IPv4 address, port), both as the kernel's network-order integers,
    of an address the core holds: a (host, port) tuple, a raw sockaddr, or
    the preallocated sockaddr of the batched reader.  None for IPv6."""
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        if not isinstance(host, str) or ":" in host:
            return None
        packed = socket.inet_aton(host)
    else:
        raw = address if isinstance(address, bytes) else bytes(_ffi.buffer(address))
        family, port = struct.unpack_from("=HH", raw)
        if family != socket.AF_INET:
            return None
        port = socket.ntohs(port)
        packed = raw[4:8]
    (ip,) = struct.unpack("=I", packed)
    (nport,) = struct.unpack("=H", struct.pack("!H", port))
    return ip, nport


@attrs.define(eq=False)
class KernelPath:
    """The loaded program, its attachments and its maps.

    Implements the core's :class:`~cryptify.crs.relay.core.Offload`.
    ``ktime`` reads the clock the program stamps packets with
    (``CLOCK_MONOTONIC``).
    """

    obj: CData | None
    prog_fd: int
    legs_fd: int
    stats_fd: int
    links: list[int] = attrs.Factory(list)
    tc_hooks: list[CData] = attrs.Factory(list)
    interfaces: list[str] = attrs.Factory(list)
    mode: str = ""
    credit_cap: int = CREDIT_CAP
    port: int = 0
    ktime: Callable[[], int] = time.monotonic_ns
    #: The kernel's stamp of each pushed leg's last packet as last pulled.
    _stamps: dict[bytes, int] = attrs.Factory(dict)

    @classmethod
    def load(
        cls,
        host: str,
        port: int,
        interfaces: Iterable[tuple[int, str]] | None = None,
        attach: str = "auto",
        path: str = OBJECT_PATH,
        credit_cap: int = CREDIT_CAP,
    ) -> KernelPath:
        """Load the program for a relay on ``host:port`` and attach it
        (``attach``: ``auto`` tries tcx then cls_bpf; ``tcx``; ``tc``)."""
        if ":" in host:
            raise KernelPathUnavailable("the kernel path is IPv4 only")
        if not os.path.exists(path):
            raise KernelPathUnavailable(
                f"{os.path.basename(path)} was not built (clang and libbpf-dev at install time)"
            )
        ffi, lib = _load_libbpf()
        obj = lib.bpf_object__open_file(path.encode(), ffi.NULL)
        if obj == ffi.NULL:
            raise _fail(f"open {path}", ctypes_errno())
        try:
            rc = lib.bpf_object__load(obj)
            if rc:
                raise _fail("bpf_object__load", rc)
            prog = lib.bpf_object__find_program_by_name(obj, b"relay_ingress")
            fds = [
                lib.bpf_program__fd(prog),
                *(
                    lib.bpf_object__find_map_fd_by_name(obj, n)
                    for n in (b"legs", b"stats", b"config")
                ),
            ]
            if min(fds) < 0:
                raise KernelPathUnavailable("the BPF object lacks its program or maps")
            prog_fd, legs_fd, stats_fd, config_fd = fds
            config = ffi.new("struct config *")
            if not is_wildcard(host):
                config.relay_ip = struct.unpack("=I", socket.inet_aton(host))[0]
            config.relay_port = struct.unpack("=H", struct.pack("!H", port))[0]
            rc = lib.bpf_map_update_elem(config_fd, ffi.new("uint32_t *"), config, _BPF_ANY)
            if rc:
                raise _fail("config map update", rc)
            self = cls(obj, prog_fd, legs_fd, stats_fd, credit_cap=credit_cap, port=port)
        except BaseException:
            lib.bpf_object__close(obj)
            raise
        try:
            for index, name in interfaces if interfaces is not None else interfaces_for(host):
                self._attach(index, name, attach)
        except BaseException:
            self.close()
            raise
        if not self.interfaces:
            self.close()
            raise KernelPathUnavailable(f"no interface carries {host}")
        return self

    def _attach(self, index: int, name: str, attach: str) -> None:
        ffi, lib = _ffi, _lib
        if attach in ("auto", "tcx"):
            fd = lib.bpf_link_create(self.prog_fd, index, _BPF_TCX_INGRESS, ffi.NULL)
            if fd >= 0:
                self.links.append(fd)
                self.interfaces.append(name)
                self.mode = "tcx"
                return
            if attach == "tcx":
                raise _fail(f"tcx attach to {name}", fd)
        hook = ffi.new("struct bpf_tc_hook *")
        hook.sz = ffi.sizeof("struct bpf_tc_hook")
        hook.ifindex = index
        hook.attach_point = _BPF_TC_INGRESS
        rc = lib.bpf_tc_hook_create(hook)
        if rc and rc != -errno.EEXIST:
            raise _fail(f"clsact qdisc on {name}", rc)
        opts = self._tc_opts(self.prog_fd)
        lib.bpf_tc_detach(hook, self._tc_opts(0))  # a filter a dead relay left
        rc = lib.bpf_tc_attach(hook, opts)
        if rc:
            raise _fail(f"cls_bpf attach to {name}", rc)
        self.tc_hooks.append(hook)
        self.interfaces.append(name)
        self.mode = "cls_bpf"

    def _tc_opts(self, prog_fd: int) -> Any:
        opts = _ffi.new("struct bpf_tc_opts *")
        opts.sz = _ffi.sizeof("struct bpf_tc_opts")
        opts.prog_fd = prog_fd
        opts.handle = self.port
        opts.priority = _TC_PRIORITY
        return opts

    def close(self) -> None:
        """Detach everywhere and unload (the maps go with the program)."""
        for fd in self.links:
            os.close(fd)
        for hook in self.tc_hooks:
            _lib.bpf_tc_detach(hook, self._tc_opts(0))
        self.links.clear()
        self.tc_hooks.clear()
        if self.obj is not None:
            _lib.bpf_object__close(self.obj)
            self.obj = None

    def describe(self) -> str:
        return f"{self.mode} on {', '.join(self.interfaces)}"

    # -- Offload -------------------------------------------------------------

    def push(self, session: RelaySession, now: float) -> bool:
        """Write both legs to the map; False (nothing written) when a leg's
        address is not IPv4 or the map is full."""
        entries = []
        for leg in (session.a, session.b):
            if leg.source is None or leg.dest is None:
                return False
            src, dest = _inet(leg.source), _inet(leg.dest)
            if src is None or dest is None:
                return False
            entries.append((leg, src, dest))
        for leg, src, dest in entries:
            value = _ffi.new("struct leg *")
            value.credit = leg.credit
            value.cap = self.credit_cap
            value.src_ip, value.src_port = src
            value.dest_ip, value.dest_port = dest
            value.peer = int.from_bytes(leg.peer.tag, "little")
            stamp = self._stamps.get(leg.tag)
            if stamp is None or leg.seen >= now:
                stamp = self.ktime()
            self._stamps[leg.tag] = stamp
            value.seen_ns = stamp
            value.packets = leg.packets
            value.bytes = leg.bytes
            rc = _lib.bpf_map_update_elem(self.legs_fd, _key(leg.tag), value, _BPF_F_LOCK)
            if rc:
                self.withdraw(session)
                return False
        return True

    def pull(self, session: RelaySession, now: float) -> None:
        """Bring the kernel's counters, credit and last-seen time into the legs."""
        value = _ffi.new("struct leg *")
        for leg in (session.a, session.b):
            if _lib.bpf_map_lookup_elem_flags(self.legs_fd, _key(leg.tag), value, _BPF_F_LOCK):
                continue
            _update(leg, value)
            stamp = int(value.seen_ns)
            if stamp != self._stamps.get(leg.tag):
                self._stamps[leg.tag] = stamp
                age = max(0, self.ktime() - stamp) / 1e9
                leg.seen = max(leg.seen, now - age)

    def withdraw(self, session: RelaySession) -> None:
        for leg in (session.a, session.b):
            _lib.bpf_map_delete_elem(self.legs_fd, _key(leg.tag))
            self._stamps.pop(leg.tag, None)

    def counters(self) -> dict[str, int]:
        """What the kernel counted: RX (datagrams it took), TXB (forwarded),
        ERRNODEST (not owed: credit), TXERROR (could not rewrite); summed
        over CPUs."""
        values = _ffi.new("uint64_t[]", _possible_cpus())
        key = _ffi.new("uint32_t *")
        out = {}
        for i, name in enumerate(_STAT_NAMES):
            key[0] = i
            if _lib.bpf_map_lookup_elem(self.stats_fd, key, values):
                out[name] = 0
                continue
            out[name] = sum(values[j] for j in range(_possible_cpus()))
        return out


def _key(tag: bytes) -> CData:
    key: CData = _ffi.new("uint64_t *", int.from_bytes(tag, "little"))
    return key


def _update(leg: Leg, value: Any) -> None:
    leg.credit = int(value.credit)
    leg.packets = int(value.packets)
    leg.bytes = int(value.bytes)


_POSSIBLE: int | None = None


def _possible_cpus() -> int:
    """Per-CPU map values come one per *possible* CPU."""
    global _POSSIBLE
    if _POSSIBLE is None:
        try:
            with open("/sys/devices/system/cpu/possible") as f:
                text = f.read().strip()
            _POSSIBLE = max(int(part.split("-")[-1]) for part in text.split(",")) + 1
        except (OSError, ValueError):
            _POSSIBLE = os.cpu_count() or 1
    return _POSSIBLE
