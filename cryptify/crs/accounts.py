"""Accounts: one per security domain (CMS) the CRS serves.

On disk, under the accounts directory, each account is a directory named
by its ID::

    ACCOUNTS/acme/secret        the CRS<->CMS shared secret (base64), 0600
    ACCOUNTS/acme/2026-11.json  a month applied from an update file, 0640
    ACCOUNTS/acme/blacklist     URIs the operator blacklisted, one per line

An update file (``crs-cli apply FILE``) is opened with its account's secret
and checked completely before anything is written; each month it carries
is then written atomically.  A refused file changes nothing.  An older
revision of a month than the one applied is refused too.

:class:`AccountStore` keeps the loaded accounts in memory; :meth:`reload`
re-reads the directory, and an account whose files are broken keeps what
was loaded before (the problem is logged).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import attrs
from twisted.logger import Logger

from cryptify.crypto.errors import CryptoError
from cryptify.crypto.updatefile import UpdateFile, open_update_file, peek_account

log = Logger(namespace="cryptify.crs.accounts")

#: Account IDs and admin names: letters, digits, '-' and '_', at most 20.
ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,20}\Z")
#: A month file name.
MONTH_FILE = re.compile(r"(\d{4}-(0[1-9]|1[0-2]))\.json\Z")
#: Longest URI kept in a blacklist.
MAX_URI = 256
#: Largest update file accepted.
MAX_UPDATE_BYTES = 16 * 1024 * 1024
SECRET_FILE = "secret"  # noqa: S105 (a file name)
BLACKLIST_FILE = "blacklist"


class AccountError(Exception):
    """An account action cannot be done; the message says why."""


def check_account_id(account_id: str) -> str:
    """Return ``account_id`` if valid, else raise AccountError saying the rule."""
    if not ACCOUNT_ID.match(account_id):
        raise AccountError(
            f"invalid account ID {account_id!r}: use letters, digits, '-' and '_', "
            "at most 20 characters"
        )
    return account_id


def check_secret(secret: str) -> str:
    """A shared secret must be non-empty base64."""
    try:
        raw = base64.b64decode(secret.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise AccountError("the shared secret must be a base64 string") from exc
    if not raw:
        raise AccountError("the shared secret must not be empty")
    return secret


def check_uri(uri: str) -> str:
    """A blacklist entry: a tel: URI without blanks or control characters."""
    if (
        not uri.startswith("tel:")
        or len(uri) > MAX_URI
        or not uri.isprintable()
        or any(c.isspace() for c in uri)
    ):
        raise AccountError(f"invalid URI {uri!r}: expected tel:+NUMBER")
    return uri


@attrs.frozen
class Month:
    """One applied month of an account: the KMS public keys and its blacklist."""

    period: str
    kpak: bytes = attrs.field(repr=False)
    z: bytes = attrs.field(repr=False)
    revision: int
    created: int
    blacklist: frozenset[str] = frozenset()

    def to_json(self, account: str) -> dict[str, Any]:
        return {
            "account": account,
            "period": self.period,
            "revision": self.revision,
            "created": self.created,
            "kpak": self.kpak.hex(),
            "z": self.z.hex(),
            "blacklist": sorted(self.blacklist),
        }

    @classmethod
    def from_json(cls, doc: Any, account: str, period: str) -> Month:
        if not isinstance(doc, dict) or doc.get("account") != account:
            raise AccountError(f"month {period} does not belong to account {account}")
        if doc.get("period") != period:
            raise AccountError(f"month file {period} names another period")
        try:
            kpak = bytes.fromhex(doc["kpak"])
            z = bytes.fromhex(doc["z"])
            revision = int(doc["revision"])
            created = int(doc.get("created", 0))
            blacklist = frozenset(check_uri(u) for u in doc.get("blacklist", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise AccountError(f"month {period} of {account} is damaged: {exc}") from exc
        return cls(period, kpak, z, revision, created, blacklist)


@attrs.frozen
class Account:
    """A loaded account."""

    id: str
    path: str
    secret: str = attrs.field(repr=False)
    months: dict[str, Month] = attrs.field(factory=dict)
    blacklist: frozenset[str] = frozenset()

    def kpak_for(self, period: str) -> bytes | None:
        """The KPAK of a key period, or None when no update covers it."""
        month = self.months.get(period)
        return None if month is None else month.kpak

    def blacklisted(self, uri: str, period: str) -> bool:
        """Whether ``uri`` is blacklisted by the operator or by the period's update."""
        if uri in self.blacklist:
            return True
        month = self.months.get(period)
        return month is not None and uri in month.blacklist

    def effective_blacklist(self, period: str) -> list[str]:
        """Operator and update blacklists merged, sorted."""
        month = self.months.get(period)
        merged = set(self.blacklist) | (set(month.blacklist) if month else set())
        return sorted(merged)


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _read_secret(path: str) -> str:
    st = os.stat(path)
    if st.st_mode & 0o077:
        raise AccountError(f"{path} is readable by others; chmod 600 it")
    with open(path) as f:
        return check_secret(f.read().strip())


def _read_blacklist(path: str) -> frozenset[str]:
    try:
        with open(path) as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError:
        return frozenset()
    return frozenset(check_uri(line) for line in lines if line and not line.startswith("#"))


def load_account(path: str) -> Account:
    """Read one account directory; raise AccountError naming the problem."""
    account_id = check_account_id(os.path.basename(path))
    try:
        secret = _read_secret(os.path.join(path, SECRET_FILE))
        months = {}
        for name in sorted(os.listdir(path)):
            match = MONTH_FILE.match(name)
            if not match:
                continue
            with open(os.path.join(path, name)) as f:
                doc = json.load(f)
            months[match.group(1)] = Month.from_json(doc, account_id, match.group(1))
        blacklist = _read_blacklist(os.path.join(path, BLACKLIST_FILE))
    except OSError as exc:
        raise AccountError(f"cannot read account {account_id}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise AccountError(f"account {account_id} has a damaged month file: {exc}") from exc
    return Account(account_id, path, secret, months, blacklist)


@attrs.frozen
class Applied:
    """What ``apply`` did."""

    account: str
    revision: int
    periods: tuple[str, ...]


class AccountStore:
    """The accounts directory and the accounts loaded from it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.accounts: dict[str, Account] = {}

    def get(self, account_id: str) -> Account | None:
        return self.accounts.get(account_id)

    def __iter__(self) -> Iterator[Account]:
        return iter(sorted(self.accounts.values(), key=lambda a: a.id))

    def _dir(self, account_id: str) -> str:
        return os.path.join(self.directory, check_account_id(account_id))

    def reload(self) -> list[str]:
        """Re-read every account; return the problems (broken accounts keep their old state)."""
        problems = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            names = []
        except OSError as exc:
            return [f"cannot read {self.directory}: {exc.strerror}"]
        loaded: dict[str, Account] = {}
        for name in names:
            path = os.path.join(self.directory, name)
            if not os.path.isdir(path) or not ACCOUNT_ID.match(name):
                continue
            try:
                loaded[name] = load_account(path)
            except AccountError as exc:
                problems.append(str(exc))
                log.warn("account {account} not reloaded: {why}", account=name, why=str(exc))
                if name in self.accounts:
                    loaded[name] = self.accounts[name]
        self.accounts = loaded
        log.info("accounts loaded: {count}", count=len(loaded))
        return problems

    def create(self, account_id: str, secret: str) -> Account:
        """Create an account with its shared secret (files 0600/0750)."""
        path = self._dir(account_id)
        check_secret(secret)
        if os.path.exists(path):
            raise AccountError(f"account {account_id} already exists")
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        os.mkdir(path, 0o750)
        _write_atomically(os.path.join(path, SECRET_FILE), secret.encode("ascii") + b"\n", 0o600)
        account = Account(account_id, path, secret)
        self.accounts[account_id] = account
        log.info("account {account} created", account=account_id)
        return account

    def delete(self, account_id: str) -> None:
        """Remove an account and its files."""
        path = self._dir(account_id)
        if not os.path.isdir(path):
            raise AccountError(f"no account {account_id}")
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)
        self.accounts.pop(account_id, None)
        log.info("account {account} deleted", account=account_id)

    def open_update(self, data: bytes) -> tuple[Account, UpdateFile]:
        """Open an update file with its account's secret; nothing is written."""
        if len(data) > MAX_UPDATE_BYTES:
            raise AccountError("update file too large")
        try:
            account_id = peek_account(data)
        except CryptoError as exc:
            raise AccountError(f"not an update file: {exc}") from exc
        account = self.accounts.get(account_id) if ACCOUNT_ID.match(account_id) else None
        if account is None:
            raise AccountError(f"the update file is for account {account_id!r}, which is unknown")
        try:
            update = open_update_file(data, account.secret, account=account.id)
        except CryptoError as exc:
            raise AccountError(f"update file refused: {exc}") from exc
        for month in update.months:
            for uri in month.blacklist:
                check_uri(uri)
            applied = account.months.get(month.period)
            if applied is not None and update.revision < applied.revision:
                raise AccountError(
                    f"update file revision {update.revision} for {month.period} is older than "
                    f"the applied revision {applied.revision}"
                )
        return account, update

    def apply(self, data: bytes) -> Applied:
        """Check an update file completely, then store its months and reload the account."""
        account, update = self.open_update(data)
        created = update.created or int(time.time())
        for month in update.months:
            entry = Month(
                month.period,
                month.kpak,
                month.z,
                update.revision,
                created,
                frozenset(month.blacklist),
            )
            doc = json.dumps(entry.to_json(account.id), indent=1, sort_keys=True)
            path = os.path.join(account.path, f"{month.period}.json")
            _write_atomically(path, doc.encode("utf-8") + b"\n", 0o640)
        self.accounts[account.id] = load_account(account.path)
        periods = tuple(m.period for m in update.months)
        log.info(
            "update applied to {account}: revision {revision}, {periods}",
            account=account.id,
            revision=update.revision,
            periods=", ".join(periods),
        )
        return Applied(account.id, update.revision, periods)

    def set_blacklisted(self, account_id: str, uri: str, listed: bool) -> Account:
        """Add ``uri`` to, or remove it from, the operator blacklist (persisted)."""
        account = self.accounts.get(account_id)
        if account is None:
            raise AccountError(f"no account {account_id}")
        check_uri(uri)
        entries = set(account.blacklist)
        if listed:
            entries.add(uri)
        elif uri in entries:
            entries.remove(uri)
        else:
            raise AccountError(f"{uri} is not on the blacklist of {account_id}")
        text = "".join(f"{u}\n" for u in sorted(entries))
        _write_atomically(os.path.join(account.path, BLACKLIST_FILE), text.encode(), 0o640)
        updated = attrs.evolve(account, blacklist=frozenset(entries))
        self.accounts[account_id] = updated
        return updated
