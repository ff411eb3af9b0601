"""
Secret files: written 0600 (atomically), refused on read when the group or
others have any access to them.

:func:`read_owned_file` is for the files a server keeps for itself (the
CRS's accounts): procedures that loosen their permissions (a restore with
``chmod -R 644``, an update step with ``chmod og+rw``) are repaired rather
than refused when the file belongs to the running process; a file another
user owns is refused, since only its owner can make it safe.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import attrs

from cryptify.crypto.errors import InsecurePermissions, KeyFileError
from cryptify.files import write_atomically

MAX_SECRET_FILE = 4 * 1024 * 1024
#: Mode bits that must be clear on a file holding a secret: any group or other access.
SECRET_RISK = 0o077
#: Mode bits that must be clear on a file others may read: group or other write.
DATA_RISK = 0o022


def read_at_most(fd: int, limit: int) -> bytes:
    """Read from ``fd`` until its end or ``limit`` octets, in bounded pieces."""
    chunks = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(65536, remaining))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def write_secret_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write C{data} to C{path} with mode 0600, replacing it atomically."""
    try:
        write_atomically(path, data, 0o600)
    except OSError as e:
        raise KeyFileError(f"cannot write {Path(path)}: {e.strerror}") from None


def read_secret_file(path: str | os.PathLike[str], max_size: int = MAX_SECRET_FILE) -> bytes:
    """
    Read a secret file, refusing one that the group or others can access.

    @raise InsecurePermissions: for a group- or world-accessible file.
    @raise KeyFileError: if it cannot be read or is too large.
    """
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise KeyFileError(f"cannot open {target}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{target} is not a regular file")
        if st.st_mode & 0o077:
            raise InsecurePermissions(
                f"{target} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o});"
                " it holds secrets: chmod 600 it"
            )
        if st.st_size > max_size:
            raise KeyFileError(f"{target} is too large to be a key file")
        data = read_at_most(fd, max_size + 1)
        if len(data) > max_size:
            raise KeyFileError(f"{target} is too large to be a key file")
        return data
    except OSError as e:
        raise KeyFileError(f"cannot read {target}: {e.strerror}") from None
    finally:
        os.close(fd)


@attrs.frozen
class Repaired:
    """A permission repair :func:`read_owned_file` made: the file's old and new mode."""

    path: str
    old_mode: int
    new_mode: int


def read_owned_file(
    path: str | os.PathLike[str], max_size: int, private: bool, owner: int | None = None
) -> tuple[bytes, Repaired | None]:
    """
    Read a file this process keeps for itself, tightening loose permissions.

    A C{private} file (a secret) must give the group and others no access;
    another file must not be writable by them.  When it is and the file
    belongs to this process's user, its mode is set right (0600 for a
    secret, the write bits for group and others removed otherwise) and the
    repair is returned for the caller to log.  C{owner} is that user's
    uid (default: this process's effective uid).  Symbolic links, devices,
    FIFOs and files larger than C{max_size} are refused.

    @raise InsecurePermissions: for a loose file another user owns.
    @raise KeyFileError: if it cannot be read, is not a regular file or is too large.
    """
    target = Path(path)
    owner = os.geteuid() if owner is None else owner
    try:
        # O_NONBLOCK: a FIFO planted under the expected name must not hang us.
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise KeyFileError(f"cannot open {target}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{target} is not a regular file")
        if st.st_size > max_size:
            raise KeyFileError(f"{target} is too large ({st.st_size} octets, at most {max_size})")
        mode = stat.S_IMODE(st.st_mode)
        risk = SECRET_RISK if private else DATA_RISK
        repaired = None
        if mode & risk:
            if st.st_uid != owner:
                what = "accessible" if private else "writable"
                raise InsecurePermissions(
                    f"{target} is {what} by group or others (mode {mode:04o}) and belongs to"
                    f" uid {st.st_uid}, not to this server (uid {owner}):"
                    f" chown it to the server's user or chmod {'600' if private else 'go-w'} it"
                )
            new_mode = 0o600 if private else mode & ~DATA_RISK
            os.fchmod(fd, new_mode)
            repaired = Repaired(str(target), mode, new_mode)
        data = read_at_most(fd, max_size + 1)
        if len(data) > max_size:
            raise KeyFileError(f"{target} is too large (at most {max_size} octets)")
        return data, repaired
    except OSError as e:
        raise KeyFileError(f"cannot read {target}: {e.strerror}") from None
    finally:
        os.close(fd)
