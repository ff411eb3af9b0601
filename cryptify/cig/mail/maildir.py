"""Maildir files (sans Twisted): write one the Maildir way, name it, the mail group.

A Maildir is ``new/``, ``cur/`` and ``tmp/``; a writer writes into
``tmp/``, fsyncs, and renames into ``new/``, where readers look
(the CIG manual's "Message format").
"""

from __future__ import annotations

import grp
import os
import socket

from cryptify.protocols.message_payload import OpenedMessage

#: The group that shares the mailboxes with the external mail system.
MAIL_GROUP = "cigmail"
#: Mode of every file the CIG writes into a mailbox.
FILE_MODE = 0o660


def shown(path: str) -> str:
    """``path`` for a log line: a file name is the external program's, so its
    control characters are escaped (no forged log lines)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in path)


def mail_group() -> int | None:
    """The gid of :data:`MAIL_GROUP`, or None where there is no such group."""
    try:
        return grp.getgrnam(MAIL_GROUP).gr_gid
    except KeyError:
        return None


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_maildir(path: str, name: str, data: bytes, gid: int | None) -> str:
    """Write ``data`` as ``path/new/name`` the Maildir way: ``tmp/name``
    (mode 0660, group ``gid``), fsync, rename into ``new/``, fsync ``new/``.

    @return: the path of the file in ``new/``.
    @raise OSError: nothing is left in ``tmp/`` then.
    """
    tmp = os.path.join(path, "tmp", name)
    new = os.path.join(path, "new", name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
    try:
        try:
            if gid is not None and os.fstat(fd).st_gid != gid:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, new)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.join(path, "new"))
    return new


def _host() -> str:
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "cig"


def file_name(opened: OpenedMessage) -> str:
    """A Maildir name for a message: the same for every delivery of one
    sealed message (a message written again replaces its own file in
    ``new/``), unique between messages."""
    return f"{opened.time}.cig{opened.fingerprint.hex()[:32]}.{_host()}"
