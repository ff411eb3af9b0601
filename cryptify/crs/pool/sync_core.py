"""The synchronization link (port 8091) and ``db-backup``: the parts without I/O.

- :func:`sync_psk`: the link's TLS-PSK key, derived from the ``[GLOBAL]``
  ``key`` under its own label (the pool link on 8090 derives another).
- :func:`backup_peer`: whose ``redis_low`` an instance keeps a replica of:
  the next member of ``[POOL]`` after itself, in configuration order,
  wrapping round (in a pool of two, the other one).
- :class:`ReplicationFilter`: what the server end of the tunnel lets
  through to ``redis_low``.  A peer that knows the key may replicate and
  nothing else: the stream it sends must be RESP commands among
  :data:`REPLICATION_COMMANDS`, each within :data:`MAX_ARGS` arguments of
  at most :data:`MAX_ARG_BYTES`.  Anything else is refused with
  :class:`FilterError` (the connection is then closed).
- :func:`parse_replication_info` / :class:`ReplicaStatus`: the replica's
  ``INFO replication``, as ``show services`` prints it.
- :func:`check_backup_message`: one message hash read from
  ``redis_backup`` for ``db-backup read-from``, validated before it is
  stored again locally.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re

import attrs

#: What the derivation of the synchronization link's PSK mixes in.
PSK_LABEL = b"crs pool sync psk"

#: Commands a Redis replica sends its master (Redis 5 to 7); AUTH is the
#: tunnel's own business at the far end and is not let through.
REPLICATION_COMMANDS = frozenset({b"PING", b"REPLCONF", b"PSYNC", b"SYNC"})
#: At most this many arguments (command name included) in one command.
MAX_ARGS = 8
#: At most this many octets in one argument.
MAX_ARG_BYTES = 256
#: A header line (``*N`` or ``$N``) longer than this is refused.
MAX_LINE = 32


def sync_psk(key: str) -> bytes:
    """
    The synchronization link's TLS-PSK key: HMAC-SHA-256 of
    :data:`PSK_LABEL` under the ``[GLOBAL]`` ``key`` (32 octets).
    """
    return hmac.new(key.encode("utf-8"), PSK_LABEL, "sha256").digest()


def backup_peer(names: tuple[str, ...], me: str) -> str | None:
    """
    The member whose ``redis_low`` ``me`` replicates: the next one after
    ``me`` in configuration order, wrapping round; None outside a pool.
    """
    if me not in names or len(names) < 2:
        return None
    return names[(names.index(me) + 1) % len(names)]


class FilterError(Exception):
    """The peer sent something that is not a replication command."""


@attrs.define
class ReplicationFilter:
    """
    Incremental check of the replica-to-master stream.

    :meth:`feed` takes octets as they arrive and returns the octets of the
    complete commands it accepted (unchanged, in order); an incomplete
    command stays buffered.  It never buffers more than one command's worth.
    """

    _buffer: bytes = b""

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        accepted = []
        while True:
            end = self._command_end()
            if end is None:
                break
            accepted.append(self._buffer[:end])
            self._buffer = self._buffer[end:]
        if len(self._buffer) > MAX_ARGS * (MAX_ARG_BYTES + MAX_LINE) + MAX_LINE:
            raise FilterError("command too long")
        return b"".join(accepted)

    def _line(self, start: int) -> tuple[bytes, int] | None:
        end = self._buffer.find(b"\r\n", start, start + MAX_LINE + 2)
        if end < 0:
            if len(self._buffer) - start > MAX_LINE:
                raise FilterError("header line too long")
            return None
        return self._buffer[start:end], end + 2

    def _number(self, line: bytes, prefix: bytes, low: int, high: int) -> int:
        if not line.startswith(prefix) or not (line[1:].isascii() and line[1:].isdigit()):
            raise FilterError(f"expected {prefix.decode()}N, got {line[:MAX_LINE]!r}")
        value = int(line[1:])
        if not low <= value <= high:
            raise FilterError(f"{prefix.decode()}{value} out of range {low} to {high}")
        return value

    def _command_end(self) -> int | None:
        """Where the first buffered command ends, if it is complete and allowed."""
        if not self._buffer:
            return None
        found = self._line(0)
        if found is None:
            return None
        header, at = found
        count = self._number(header, b"*", 1, MAX_ARGS)
        for index in range(count):
            found = self._line(at)
            if found is None:
                return None
            header, at = found
            size = self._number(header, b"$", 0, MAX_ARG_BYTES)
            if len(self._buffer) < at + size + 2:
                return None
            if self._buffer[at + size : at + size + 2] != b"\r\n":
                raise FilterError("argument not followed by CRLF")
            if index == 0:
                name = self._buffer[at : at + size].upper()
                if name not in REPLICATION_COMMANDS:
                    raise FilterError(f"command {name[:32]!r} is not a replication command")
            at += size + 2
        return at


@attrs.frozen
class ReplicaStatus:
    """The replica's view of its link to the master (``INFO replication``)."""

    #: ``up`` or ``down`` (``master_link_status``)
    link: str
    #: seconds since the master last sent anything (``master_last_io_seconds_ago``)
    last_io: int | None = None
    #: seconds the link has been down (``master_link_down_since_seconds``)
    down_for: int | None = None
    #: whether a full copy is being transferred (``master_sync_in_progress``)
    syncing: bool = False
    #: the replication offset reached (``slave_repl_offset``)
    offset: int | None = None

    @property
    def up(self) -> bool:
        return self.link == "up"

    def describe(self) -> str:
        """One line for ``show services``."""
        if self.up:
            lag = "?" if self.last_io is None else f"{self.last_io}s"
            return f"link up, lag {lag}, offset {self.offset if self.offset is not None else '?'}"
        parts = ["link down"]
        if self.down_for is not None:
            parts.append(f"for {self.down_for}s")
        if self.syncing:
            parts.append("full sync in progress")
        return ", ".join(parts)


_INFO_LINE = re.compile(r"^([a-z_0-9]{1,64}):(.{0,256})$")
#: ``INFO replication`` answers longer than this are refused.
MAX_INFO = 64 * 1024


class InfoError(ValueError):
    """An ``INFO replication`` answer that is not a replica's."""


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("-") and value[1:].isascii() and value[1:].isdigit():
        return -int(value[1:])
    return int(value) if value.isascii() and value.isdigit() else None


def parse_replication_info(text: str) -> ReplicaStatus:
    """
    The replica's link state from its ``INFO replication`` text.

    @raise InfoError: if it is too long or is not a replica's answer.
    """
    if len(text) > MAX_INFO:
        raise InfoError("INFO answer too long")
    fields: dict[str, str] = {}
    for raw in text.splitlines():
        match = _INFO_LINE.match(raw.strip())
        if match:
            fields.setdefault(match.group(1), match.group(2))
    if fields.get("role") != "slave":
        raise InfoError(f"not a replica (role {fields.get('role', 'missing')[:16]!r})")
    link = fields.get("master_link_status", "down")
    return ReplicaStatus(
        link="up" if link == "up" else "down",
        last_io=_int(fields.get("master_last_io_seconds_ago")),
        down_for=_int(fields.get("master_link_down_since_seconds")),
        syncing=fields.get("master_sync_in_progress") == "1",
        offset=_int(fields.get("slave_repl_offset")),
    )


#: Message kinds that may be imported (those of the message store).
IMPORT_KINDS = ("content", "ack", "system")
#: Largest content imported, octets (the store's limit).
IMPORT_MAX_CONTENT = 48 * 1024
#: Longest URI, account or sender accepted from the backup.
IMPORT_MAX_NAME = 256


class BadBackupMessage(ValueError):
    """A message hash in ``redis_backup`` that cannot be imported."""


@attrs.frozen
class BackupMessage:
    """One message read from ``redis_backup``, checked."""

    id: str
    sender: str
    recipient: str
    inbox: str
    account: str
    kind: str
    time_ms: int
    data: bytes


_ID = re.compile(r"^[0-9a-f]{1,16}-[0-9a-f]{16}$")


def _name(fields: dict[str, str], field: str) -> str:
    value = fields.get(field)
    if not value or len(value) > IMPORT_MAX_NAME or not value.isprintable() or " " in value:
        raise BadBackupMessage(f"field {field} missing or unusable")
    return value


def check_backup_message(message_id: str, fields: dict[str, str]) -> BackupMessage:
    """
    The message ``msg:{message_id}`` of the backup, checked field by field.

    @raise BadBackupMessage: naming the first field that is wrong.
    """
    if not _ID.match(message_id):
        raise BadBackupMessage("unusable message ID")
    kind = fields.get("kind", "")
    if kind not in IMPORT_KINDS:
        raise BadBackupMessage("unknown kind")
    time = fields.get("time", "")
    if not time.isascii() or not time.isdigit() or len(time) > 16:
        raise BadBackupMessage("unusable time")
    encoded = fields.get("data", "")
    if len(encoded) > (IMPORT_MAX_CONTENT * 4) // 3 + 4:
        raise BadBackupMessage("content too large")
    try:
        data = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise BadBackupMessage("content is not base64") from exc
    if len(data) > IMPORT_MAX_CONTENT:
        raise BadBackupMessage("content too large")
    account = fields.get("account", "")
    if len(account) > IMPORT_MAX_NAME or not account.isprintable():
        raise BadBackupMessage("field account unusable")
    return BackupMessage(
        id=message_id,
        sender=_name(fields, "from"),
        recipient=_name(fields, "to"),
        inbox=_name(fields, "inbox"),
        account=account,
        kind=kind,
        time_ms=int(time),
        data=data,
    )
