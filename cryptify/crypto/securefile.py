"""
Secret files: written 0600 (atomically), refused on read when the group or
others have any access to them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptify.crypto.errors import InsecurePermissions, KeyFileError

MAX_SECRET_FILE = 4 * 1024 * 1024


def write_secret_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Write C{data} to C{path} with mode 0600, replacing it atomically."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise KeyFileError(f"cannot write {target}: {e.strerror}") from None


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
        chunks = []
        remaining = max_size + 1
        while remaining > 0:
            chunk = os.read(fd, min(65536, remaining))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_size:
            raise KeyFileError(f"{target} is too large to be a key file")
        return data
    except OSError as e:
        raise KeyFileError(f"cannot read {target}: {e.strerror}") from None
    finally:
        os.close(fd)
