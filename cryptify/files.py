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
import tempfile
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
    directory = os.path.dirname(os.path.abspath(target))
    name = os.path.basename(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{TEMP_PREFIX}{name}.", suffix=TEMP_SUFFIX)
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
        except FileNotFoundError:
            pass
        raise
