"""
What C{crs.conf} says, as frozen objects (read and written by
L{cryptify.config.crs}).
"""

from __future__ import annotations

import ipaddress
import os.path

import attrs

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FEATURES = ("push",)
KEEP_ALIVE_METHODS = ("tcp", "ws")
APNS_TYPES = ("cps", "direct")
REDIS_MODES = ("managed", "external")
MAX_KEEP_ALIVE_MS = 24 * 60 * 60 * 1000
MAX_NOTIFY_TIMEOUT_SECONDS = 3600.0
#: Where C{metrics PORT} (no address) serves: loopback only.
METRICS_HOST = "127.0.0.1"


@attrs.frozen
class Endpoint:
    """
    A host (IP address or DNS name) and a port.
    """

    host: str
    port: int


@attrs.frozen
class Cps:
    """
    The Cryptify Push Server connection: C{cps HOST PORT ID SECRET}.
    """

    host: str
    port: int
    id: str
    secret: str


@attrs.frozen
class KeepAlive:
    """
    C{keep-alive CIDR tcp|ws MS}: how clients from C{network} are pinged.
    """

    network: IPNetwork
    method: str
    interval_ms: int


@attrs.frozen
class AddressMap:
    """
    C{addr-map ORIGINAL MAPPED}: connect to / send media to C{mapped}
    wherever C{original} would be used.
    """

    original: str
    mapped: str


@attrs.frozen
class RedisSettings:
    """
    Where the CRS keeps its state.

    C{managed}: the CRS runs C{binary} itself, one server per role, on the
    given loopback endpoints, with a password it generates. C{external}:
    the servers already run there; C{password_file} holds their password.
    """

    mode: str = "managed"
    binary: str = "redis-server"
    high: Endpoint = Endpoint("127.0.0.1", 6390)
    low: Endpoint = Endpoint("127.0.0.1", 6391)
    backup: Endpoint = Endpoint("127.0.0.1", 6392)
    password_file: str | None = None


@attrs.frozen
class CrsGlobal:
    """
    The C{[GLOBAL]} section.

    C{tls_certificate}/C{tls_key} of C{None} mean C{crs.crt}/C{crs.key}
    in C{data_dir}.
    """

    key: str | None = None
    features: tuple[str, ...] = ()
    cps: Cps | None = None
    apns_type: str = "cps"
    #: CA files trusted for the push server's and APNs' certificates
    #: (C{push-config cps|apns trust FILE}); None: the platform's CAs.
    cps_trust: str | None = None
    apns_trust: str | None = None
    keep_alive: tuple[KeepAlive, ...] = ()
    #: Client listener limits (docs/umsg.md, "Limits").
    client_max_message: int = 64 * 1024
    client_attach_timeout: float = 10.0
    client_max_unattached_per_address: int = 64
    client_max_unattached: int = 8192
    client_max_handshakes: int = 128
    addr_map: tuple[AddressMap, ...] = ()
    listen: Endpoint = Endpoint("0.0.0.0", 5223)
    tls_certificate: str | None = None
    tls_key: str | None = None
    #: The remote admin interface (HTTPS); None: off (docs/admin.md).
    admin_listen: Endpoint | None = None
    relay: Endpoint = Endpoint("0.0.0.0", 146)
    relay_control: str = "/run/crs/relay.sock"
    pool_port: int = 8090
    sync_port: int = 8091
    iw_port: int = 8080
    management: str = "/run/crs/crs.sock"
    management_group: str = "crsuser"
    data_dir: str = "/opt/crs/data"
    accounts_dir: str = "/opt/crs/accounts"
    log_dir: str = "/var/log/crs"
    notify: str = "/opt/crs/scripts/notify.sh"
    notify_timeout: float = 10.0
    redis: RedisSettings = RedisSettings()
    #: C{metrics [ADDR] PORT}: the Prometheus endpoint (C{None}: off).
    metrics: Endpoint | None = None

    def tls_paths(self) -> tuple[str, str]:
        """
        Certificate and key files, relative names resolved under C{data_dir}.
        """
        cert = self.tls_certificate or "crs.crt"
        key = self.tls_key or "crs.key"
        return (
            os.path.join(self.data_dir, cert),
            os.path.join(self.data_dir, key),
        )

    @property
    def push(self) -> bool:
        """
        Whether push notifications are on (C{features push}).
        """
        return "push" in self.features

    def keep_alive_for(self, address: str) -> KeepAlive | None:
        """
        The first C{keep-alive} rule whose range holds C{address}, if any.
        """
        ip = ipaddress.ip_address(address)
        for rule in self.keep_alive:
            if ip.version == rule.network.version and ip in rule.network:
                return rule
        return None

    def map_address(self, address: str) -> str:
        """
        Apply C{addr-map}: the address to use in place of C{address}.
        """
        for entry in self.addr_map:
            if entry.original == address:
                return entry.mapped
        return address


@attrs.frozen
class PoolHost:
    """
    One CRS instance of the pool: C{host NAME} plus C{ip NAME ADDR}.
    """

    name: str
    ip: str


@attrs.frozen
class Pool:
    """
    The C{[POOL]} section: instances in slot order.
    """

    hosts: tuple[PoolHost, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)

    def host(self, name: str) -> PoolHost | None:
        for h in self.hosts:
            if h.name == name:
                return h
        return None


@attrs.frozen
class CrsConfig:
    """
    All of C{crs.conf}.
    """

    global_: CrsGlobal = CrsGlobal()
    pool: Pool = Pool()
    warnings: tuple[str, ...] = attrs.field(default=(), eq=False)
    """
    What the file holds that is accepted but not needed, one
    C{FILE:LINE:COLUMN: warning: ...} line each (not part of equality).
    """
