"""
Writing a file so that a crash never leaves half of it.

L{write_atomically} is the one way the servers and tools replace a file
they own (secret keys, accounts, Redis configurations, certificates, the
management cookie): the data goes to a fresh temporary file in the same
directory, created with the final mode (never wider, whatever the umask),
is flushed to disk, and is renamed over the target.  A reader sees the old
file or the whole new one; on any failure the temporary file is removed
and the target is left as it was.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

#: What every temporary file's name starts with, so directory scanners can
#: skip one left by a crash (its name also ends in C{TEMP_SUFFIX}).
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def write_atomically(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int,
    *,
    prepare: Callable[[int], None] | None = None,
) -> None:
    """
    Replace C{path} with C{data}, mode C{mode} from the file's creation on.

    @param prepare: called with the temporary file's descriptor before it
        is renamed (to change its group, for example).
    @raise OSError: when the file cannot be written or renamed; C{path} is
        then untouched and no temporary file is left.
    """
    target = os.fspath(path)
    directory, name = os.path.split(target)
    # The temporary file is named relative to the target, never made
    # absolute: inside another mount namespace an absolute path can reach
    # the same directory through another mount, and rename(2) across mounts
    # fails (EXDEV).
    fd, tmp = _create_temporary(directory, name)
    write_then_rename(fd, tmp, target, data, mode, prepare=prepare)


def write_then_rename(
    fd: int,
    tmp: str,
    target: str,
    data: bytes,
    mode: int,
    *,
    prepare: Callable[[int], None] | None = None,
) -> None:
    """
    Fill the new file C{fd} (open at C{tmp}) with C{data}, give it C{mode},
    call C{prepare(fd)}, flush it to disk, close it and rename it over
    C{target}.  On any failure C{tmp} is removed and C{target} untouched.
    L{write_atomically} and the CIG's Maildir writer (whose temporary file
    must be C{tmp/NAME}) both end this way.
    """
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if prepare is not None:
                prepare(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _create_temporary(directory: str, name: str) -> tuple[int, str]:
    """A new, empty, private file next to C{name} in C{directory}."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {os.path.join(directory, name)}")
