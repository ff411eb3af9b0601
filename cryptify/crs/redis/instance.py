"""
The CRS's own Redis servers: what each one is and the files it runs from.

By default the CRS runs ``redis_high`` (volatile state, no persistence),
``redis_low`` (durable state, append-only file fsynced every second) and, with
``db-backup replicate-from-peer``, ``redis_backup`` (a replica of the pool
peer's durable store) as child processes (:mod:`cryptify.crs.redis.supervisor`
runs them).  Each gets a ``redis.conf`` written into its own directory under
the data dir, listens on loopback or a UNIX socket only and requires a
password generated once and kept next to it.

L{render_conf} is pure; L{write_conf} and L{load_password} do the file I/O.
"""

from __future__ import annotations

import enum
import ipaddress
import secrets
from pathlib import Path

import attrs

from cryptify.files import write_atomically

HIGH = "redis_high"
LOW = "redis_low"
BACKUP = "redis_backup"
NAMES = (HIGH, LOW, BACKUP)

#: UNIX socket paths longer than this do not fit in sockaddr_un
MAX_SOCKET_PATH = 107

PASSWORD_FILE = "password"  # noqa: S105 (a file name)
CONF_FILE = "redis.conf"
PID_FILE = "redis.pid"


class Role(enum.Enum):
    """What a Redis instance keeps across restarts."""

    #: nothing: live state that is rebuilt when clients come back
    VOLATILE = "volatile"
    #: everything: append-only file, fsynced every second
    DURABLE = "durable"


@attrs.frozen
class ReplicaOf:
    """The master a replica (``redis_backup``) copies, and its password
    (None: the master needs none, e.g. the sync tunnel logs in itself)."""

    host: str
    port: int
    password: str | None = attrs.field(default=None, repr=False)


def _default_role(instance: RedisInstance) -> Role:
    return Role.VOLATILE if instance.name == HIGH else Role.DURABLE


def _check_loopback(instance: RedisInstance, attribute: attrs.Attribute[str], value: str) -> None:
    if not ipaddress.ip_address(value).is_loopback:
        raise ValueError(f"{instance.name}: host {value} is not a loopback address")


@attrs.frozen
class RedisInstance:
    """
    One supervised Redis server: where it listens, its password, its role.

    Exactly one of C{port} (TCP on C{host}, a loopback address) and
    C{unix_socket} is set.  Its files live in C{data_dir}/C{name}/, its log
    is C{log_dir}/C{name}.log.
    """

    name: str = attrs.field(validator=attrs.validators.in_(NAMES))
    password: str = attrs.field(repr=False)
    data_dir: Path = attrs.field(converter=Path)
    log_dir: Path = attrs.field(converter=Path)
    host: str = attrs.field(default="127.0.0.1", validator=_check_loopback)
    port: int | None = None
    unix_socket: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    role: Role = attrs.field(default=attrs.Factory(_default_role, takes_self=True))
    replica_of: ReplicaOf | None = None

    def __attrs_post_init__(self) -> None:
        if (self.port is None) == (self.unix_socket is None):
            raise ValueError(f"{self.name}: give either a port or a unix socket path")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"{self.name}: port {self.port} out of range")
        if self.unix_socket is not None and len(bytes(self.unix_socket)) > MAX_SOCKET_PATH:
            raise ValueError(f"{self.name}: unix socket path too long: {self.unix_socket}")
        if not self.password:
            raise ValueError(f"{self.name}: empty password")

    @property
    def dir(self) -> Path:
        return self.data_dir / self.name

    @property
    def conf_path(self) -> Path:
        return self.dir / CONF_FILE

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.dir / PID_FILE

    @property
    def address(self) -> str:
        """Where it listens, for humans."""
        if self.unix_socket is not None:
            return f"unix:{self.unix_socket}"
        return f"{self.host}:{self.port}"


def _quote(value: str | Path) -> str:
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def render_conf(instance: RedisInstance) -> str:
    """The redis.conf text for C{instance}.  Pure: no I/O."""
    lines = [
        f"# {instance.name}: written by the CRS at each start; edits are overwritten",
        "daemonize no",
        "supervised no",
        "protected-mode yes",
    ]
    if instance.unix_socket is not None:
        lines += [
            "port 0",
            f"unixsocket {_quote(instance.unix_socket)}",
            "unixsocketperm 700",
        ]
    else:
        lines += [f"bind {instance.host}", f"port {instance.port}"]
    lines += [
        f"requirepass {_quote(instance.password)}",
        f"dir {_quote(instance.dir)}",
        f"logfile {_quote(instance.log_path)}",
        f"pidfile {_quote(instance.pid_path)}",
        "databases 16",
    ]
    if instance.role is Role.DURABLE:
        lines += [
            "appendonly yes",
            "appendfsync always",
            "save 3600 1 300 100 60 10000",
        ]
    else:
        lines += ["appendonly no", 'save ""']
    if instance.replica_of is not None:
        master = instance.replica_of
        lines += [f"replicaof {master.host} {master.port}"]
        if master.password is not None:
            lines += [f"masterauth {_quote(master.password)}"]
        lines += ["replica-read-only yes"]
    return "\n".join(lines) + "\n"


def load_password(data_dir: Path | str, name: str) -> str:
    """
    The password of instance C{name}: read from its directory under
    C{data_dir}, or generated there (mode 0600) on first use.
    """
    directory = Path(data_dir) / name
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / PASSWORD_FILE
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    if not password:
        password = secrets.token_urlsafe(32)
        write_atomically(path, (password + "\n").encode(), 0o600)
    return password


def write_conf(instance: RedisInstance) -> Path:
    """Write C{instance}'s redis.conf (mode 0600) and create its directories."""
    instance.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    instance.log_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(instance.conf_path, render_conf(instance).encode(), 0o600)
    return instance.conf_path
