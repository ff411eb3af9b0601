"""``cryptify-push``'s configuration file (``docs/push.md``).

One setting a line, words separated by blanks, ``#`` starts a comment::

    listen HOST PORT
    tls-certificate CERT KEY
    client ID SECRET-FILE
    apns key P8-FILE key-id KEY-ID team-id TEAM-ID topic BUNDLE-ID
    apns endpoint URL
    fcm service-account JSON-FILE
    fcm endpoint URL
    trust CA-FILE

Every problem is a :class:`PushConfigError` ``FILE:LINE: problem``.  Secret
and key files are read by :func:`read_secret_file`, which refuses files that
others may read.
"""

from __future__ import annotations

import os
import re
import stat
from urllib.parse import urlsplit

import attrs

from cryptify.push import apns, fcm

#: Largest configuration file read.
MAX_FILE = 64 * 1024
#: Most clients (CRS pools) one push server serves.
MAX_CLIENTS = 1000
#: Largest secret or key file read.
MAX_SECRET_FILE = 16 * 1024

_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_APPLE_ID = re.compile(r"[A-Z0-9]{10}")
_TOPIC = re.compile(r"[A-Za-z0-9.-]{1,200}")


APNS_USAGE = "apns key P8-FILE key-id KEY-ID team-id TEAM-ID topic BUNDLE-ID"


class PushConfigError(ValueError):
    """A configuration problem, with its place."""


@attrs.frozen
class ApnsSettings:
    key_file: str
    key_id: str
    team_id: str
    topic: str
    endpoint: str = apns.PRODUCTION


@attrs.frozen
class PushConfig:
    """What ``cryptify-push`` runs with."""

    host: str = "127.0.0.1"
    port: int = 5230
    certificate: str | None = None
    key: str | None = None
    #: client id -> secret file
    clients: dict[str, str] = attrs.field(factory=dict)
    apns: ApnsSettings | None = None
    fcm_account: str | None = None
    fcm_endpoint: str = fcm.PRODUCTION
    trust: str | None = None


def _url(value: str, where: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
        raise PushConfigError(f"{where}: {value!r} is not an https://HOST[:PORT] origin")
    return value.rstrip("/")


def _port(value: str, where: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 65536:
        raise PushConfigError(f"{where}: port {value!r} is not 1..65535")
    return int(value)


def parse(text: str, path: str = "push.conf") -> PushConfig:
    """Parse a whole configuration text (raises PushConfigError)."""
    config = PushConfig()
    clients: dict[str, str] = {}
    apns_endpoint = apns.PRODUCTION
    apns_words: list[str] | None = None
    apns_where = ""
    for number, raw in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        head, args = words[0], words[1:]

        def want(n: int, usage: str, args: list[str] = args, where: str = where) -> None:
            if len(args) != n:
                raise PushConfigError(f"{where}: expected {usage}")

        if head == "listen":
            want(2, "listen HOST PORT")
            config = attrs.evolve(config, host=args[0], port=_port(args[1], where))
        elif head == "tls-certificate":
            want(2, "tls-certificate CERT KEY")
            config = attrs.evolve(config, certificate=args[0], key=args[1])
        elif head == "client":
            want(2, "client ID SECRET-FILE")
            if not _ID.fullmatch(args[0]):
                raise PushConfigError(
                    f"{where}: client id {args[0]!r} is not 1..64 of A-Z a-z 0-9 _ . -"
                )
            if args[0] in clients:
                raise PushConfigError(f"{where}: client {args[0]} listed twice")
            if len(clients) >= MAX_CLIENTS:
                raise PushConfigError(f"{where}: more than {MAX_CLIENTS} clients")
            clients[args[0]] = args[1]
        elif head == "apns" and args[:1] == ["endpoint"]:
            want(2, "apns endpoint URL")
            apns_endpoint = _url(args[1], where)
        elif head == "apns" and args[:1] == ["key"]:
            want(8, APNS_USAGE)
            if args[2::2] != ["key-id", "team-id", "topic"]:
                raise PushConfigError(f"{where}: expected {APNS_USAGE}")
            apns_words, apns_where = args, where
        elif head == "fcm" and args[:1] == ["service-account"]:
            want(2, "fcm service-account JSON-FILE")
            config = attrs.evolve(config, fcm_account=args[1])
        elif head == "fcm" and args[:1] == ["endpoint"]:
            want(2, "fcm endpoint URL")
            config = attrs.evolve(config, fcm_endpoint=_url(args[1], where))
        elif head == "trust":
            want(1, "trust CA-FILE")
            config = attrs.evolve(config, trust=args[0])
        else:
            raise PushConfigError(f"{where}: unknown setting {head!r}")
    if apns_words is not None:
        _, key_id, _, team_id, _, topic = apns_words[2:]
        for value, pattern, what in (
            (key_id, _APPLE_ID, "key-id"),
            (team_id, _APPLE_ID, "team-id"),
            (topic, _TOPIC, "topic"),
        ):
            if not pattern.fullmatch(value):
                raise PushConfigError(f"{apns_where}: {what} {value!r} is not valid")
        apns_settings = ApnsSettings(apns_words[1], key_id, team_id, topic, apns_endpoint)
        config = attrs.evolve(config, apns=apns_settings)
    if not clients:
        raise PushConfigError(f"{path}: no client line: nobody could log in")
    return attrs.evolve(config, clients=clients)


def load(path: str) -> PushConfig:
    """Read and parse ``path`` (raises PushConfigError)."""
    try:
        if os.path.getsize(path) > MAX_FILE:
            raise PushConfigError(f"{path}: larger than {MAX_FILE} bytes")
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PushConfigError(f"{path}: cannot read: {exc}") from exc
    return parse(text, path)


def read_secret_file(path: str, what: str) -> bytes:
    """A secret or key file's bytes; refused unless only its owner may read it."""
    try:
        info = os.stat(path)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PushConfigError(f"{path}: {what} must be readable by its owner only (chmod 600)")
        if info.st_size > MAX_SECRET_FILE:
            raise PushConfigError(f"{path}: {what} larger than {MAX_SECRET_FILE} bytes")
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise PushConfigError(f"{path}: cannot read {what}: {exc.strerror}") from exc
