"""``iw-crs.conf`` as the running CRS keeps it: read at start, changed by
``crs-cli add|delete iw-crs`` (on every instance of a pool, as pool
changes), written back atomically with mode 0600 (it holds the shared
secrets), and each change handed to the link at once (no restart)."""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs

from cryptify.config import ConfigError
from cryptify.config.iw_crs import (
    IwCrs,
    IwCrsConfig,
    load_iw_crs_config,
    parse_iw_crs_config,
    render_iw_crs_config,
)
from cryptify.files import write_atomically

#: Inter-working CRS instances one CRS may trust.
MAX_PEERS = 256


class IwPeerError(ValueError):
    """A change to iw-crs.conf that is refused; the message says why."""


def check_peer(ip: str, secret: str, comment: str | None) -> IwCrs:
    """The peer as ``iw-crs.conf`` would hold it; raises
    :class:`IwPeerError` naming what is wrong (the address, the secret's
    characters, the comment), never the secret itself."""
    peer = IwCrs(ip, secret, comment or None)
    _checked(IwCrsConfig((peer,)), "iw-crs")
    return peer


def _checked(config: IwCrsConfig, where: str) -> IwCrsConfig:
    # What is written must read back as the same peers: the file's own
    # parser is the check.
    try:
        return parse_iw_crs_config(render_iw_crs_config(config), where)
    except ConfigError as exc:
        message = str(exc).split(": ", 1)[-1]
        raise IwPeerError(message.splitlines()[0]) from None


@attrs.define
class IwPeers:
    """The peers of ``path`` (absent file: none) and who hears of changes."""

    path: str
    config: IwCrsConfig = attrs.field(factory=IwCrsConfig)
    listeners: list[Callable[[IwCrsConfig], None]] = attrs.field(factory=list)

    @classmethod
    def load(cls, path: str) -> IwPeers:
        """Read ``path``; raises :class:`~cryptify.config.ConfigError`."""
        if not os.path.lexists(path):
            return cls(path)
        return cls(path, load_iw_crs_config(path))

    def add(self, ip: str, secret: str, comment: str | None) -> bool:
        """Add (or change) the peer at ``ip``; False when it is already so."""
        peer = check_peer(ip, secret, comment)
        if self.config.get(ip) == peer:
            return False
        others = [p for p in self.config.instances if p.ip != ip]
        if len(others) >= MAX_PEERS:
            raise IwPeerError(f"at most {MAX_PEERS} inter-working CRS instances")
        self._store(IwCrsConfig((*others, peer)))
        return True

    def delete(self, ip: str) -> bool:
        """Remove the peer at ``ip``; False when there is none."""
        if self.config.get(ip) is None:
            return False
        self._store(IwCrsConfig(tuple(p for p in self.config.instances if p.ip != ip)))
        return True

    def _store(self, config: IwCrsConfig) -> None:
        checked = _checked(config, self.path)
        write_atomically(self.path, render_iw_crs_config(checked).encode("utf-8"), 0o600)
        self.config = checked
        for listener in self.listeners:
            listener(checked)


__all__ = ["MAX_PEERS", "IwPeerError", "IwPeers", "check_peer"]
