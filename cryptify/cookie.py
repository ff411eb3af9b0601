"""
The management cookie file: the secret a local operator's CLI presents on
the management socket (L{cryptify.protocols.mgmt.Authenticate}).

The server creates it at start (mode 0640, in the management group, written
atomically) unless it exists; the CLIs read it and refuse a file anyone may
read.
"""

from __future__ import annotations

import os
import secrets
import stat

from twisted.logger import Logger

from cryptify.files import write_atomically
from cryptify.protocols.mgmt import COOKIE_BYTES, MAX_COOKIE_CHARS

log = Logger(namespace="cryptify.mgmt")


class CookieError(Exception):
    """The cookie file is missing, unreadable or unsafe."""


def read_cookie(path: str) -> str:
    """Read a management cookie; refuse a file anyone may read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise CookieError(f"cookie file {path} does not exist") from exc
    except PermissionError as exc:
        raise CookieError(f"cannot read cookie file {path}: permission denied") from exc
    except OSError as exc:
        raise CookieError(f"cannot read cookie file {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if st.st_mode & stat.S_IROTH or st.st_mode & stat.S_IWOTH:
            raise CookieError(f"cookie file {path} is world-accessible; chmod 0640 it")
        data = os.read(fd, MAX_COOKIE_CHARS + 1)
    finally:
        os.close(fd)
    text = data.decode("ascii", "replace").strip()
    if not text or len(text) > MAX_COOKIE_CHARS:
        raise CookieError(f"cookie file {path} does not hold a cookie")
    return text


def ensure_cookie(path: str, group: str | None = None) -> str:
    """Return the cookie in ``path``, creating it (mode 0640) if missing."""
    try:
        return read_cookie(path)
    except CookieError:
        if os.path.lexists(path):
            raise
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o750, exist_ok=True)
    cookie = secrets.token_hex(COOKIE_BYTES)

    def give_to_group(fd: int) -> None:
        if group:
            import grp

            try:
                os.fchown(fd, -1, grp.getgrnam(group).gr_gid)
            except (KeyError, PermissionError):
                log.info("cookie {path} keeps the service's own group", path=path)

    write_atomically(path, cookie.encode("ascii") + b"\n", 0o640, prepare=give_to_group)
    return cookie
