"""Accounts: one per security domain (CMS) the CRS serves.

On disk, under the accounts directory, each account is a directory named
by its ID::

    ACCOUNTS/acme/secret        the CRS<->CMS shared secret (base64), 0600
    ACCOUNTS/acme/2026-11.json  a month applied from an update file, 0640
    ACCOUNTS/acme/blacklist     URIs the operator blacklisted, one per line
    ACCOUNTS/acme/2026-11.upd   an update file dropped here (CMS older than 3.2.0)

An update file (``crs-cli apply FILE``, or one dropped into the account's
directory and picked up by ``reload account``) is opened with its
account's secret and checked completely before anything is written; each
month it carries is then written atomically.  A refused file changes
nothing.  An older revision of a month than the one applied is refused
too.  A picked-up file is renamed ``NAME.upd.applied`` once its months
are stored; a refused one stays where it is and is reported on every
reload.

:class:`AccountStore` keeps the loaded accounts in memory; :meth:`reload`
re-reads the directory.  Every file is read with a bound on its size and
checked completely; an account whose files are broken keeps what was
loaded before, and the problem, naming the file, is reported and logged.
One broken account never stops the others from loading.

The CRS owns these files.  The manuals' own procedures loosen their modes
(a restore runs ``chmod -R 644``, a monthly update ``chmod -R og+rw``):
when a file belongs to the CRS's user, a secret open to the group or others
is set back to 0600, and a month file, blacklist or directory that the
group or others could write loses those write bits, with a warning naming
the file.  A loose file or directory that belongs to another user cannot
be made safe by the CRS and makes its account fail to load.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from typing import TypeGuard

import attrs
from twisted.logger import Logger

from cryptify.crypto.errors import CryptoError
from cryptify.crypto.securefile import DATA_RISK, Repaired, read_owned_file
from cryptify.crypto.updatefile import UpdateFile, open_update_file, peek_account
from cryptify.files import write_atomically

log = Logger(namespace="cryptify.crs.accounts")

#: Account IDs and admin names: letters, digits, '-' and '_', at most 20.
ACCOUNT_ID = re.compile(r"[A-Za-z0-9_-]{1,20}\Z")
#: A month file name.
MONTH_FILE = re.compile(r"(\d{4}-(0[1-9]|1[0-2]))\.json\Z")
#: Longest URI kept in a blacklist.
MAX_URI = 256
#: Largest update file accepted.
MAX_UPDATE_BYTES = 16 * 1024 * 1024
#: Largest secret file read, in octets.
MAX_SECRET_BYTES = 4096
#: Largest month or blacklist file read, in octets.
MAX_DATA_BYTES = MAX_UPDATE_BYTES
#: Longest excerpt of a bad value quoted in an error, in characters.
MAX_EXCERPT = 40
SECRET_FILE = "secret"  # noqa: S105 (a file name)
BLACKLIST_FILE = "blacklist"
#: An update file dropped into an account's directory (CMS older than 3.2.0).
UPDATE_SUFFIX = ".upd"
#: Added to a picked-up update file's name once its months are stored.
APPLIED_SUFFIX = ".applied"


class AccountError(Exception):
    """An account action cannot be done; the message says why."""


def excerpt(value: object) -> str:
    """A short, printable quotation of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= MAX_EXCERPT else text[: MAX_EXCERPT - 3] + "..."


def check_account_id(account_id: str) -> str:
    """Return ``account_id`` if valid, else raise AccountError saying the rule."""
    if not ACCOUNT_ID.match(account_id):
        raise AccountError(
            f"invalid account ID {excerpt(account_id)}: use letters, digits, '-' and '_', "
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
        raise AccountError(f"invalid URI {excerpt(uri)}: expected tel:+NUMBER")
    return uri


def _count(value: object) -> TypeGuard[int]:
    """A JSON non-negative integer (not a boolean, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@attrs.frozen
class Month:
    """One applied month of an account: the KMS public keys and its blacklist."""

    period: str
    kpak: bytes = attrs.field(repr=False)
    z: bytes = attrs.field(repr=False)
    revision: int
    created: int
    blacklist: frozenset[str] = frozenset()

    def to_json(self, account: str) -> dict[str, object]:
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
    def from_json(cls, doc: object, account: str, period: str) -> Month:
        """A month from its parsed file; AccountError says what is wrong."""
        if not isinstance(doc, dict):
            raise AccountError("not a JSON object")
        if doc.get("account") != account:
            raise AccountError(f"belongs to another account than {account}")
        if doc.get("period") != period:
            raise AccountError(f"names another period than {period}")
        kpak, z = doc.get("kpak"), doc.get("z")
        revision, created = doc.get("revision"), doc.get("created", 0)
        blacklist = doc.get("blacklist", [])
        if not _count(revision) or not _count(created):
            raise AccountError("revision and created must be non-negative integers")
        if not isinstance(blacklist, list) or not all(isinstance(u, str) for u in blacklist):
            raise AccountError("blacklist must be a list of URIs")
        try:
            if not isinstance(kpak, str) or not isinstance(z, str):
                raise ValueError
            kpak_octets, z_octets = bytes.fromhex(kpak), bytes.fromhex(z)
        except ValueError:
            raise AccountError("kpak and z must be hexadecimal strings") from None
        blacklisted = frozenset(map(check_uri, blacklist))
        return cls(period, kpak_octets, z_octets, revision, created, blacklisted)


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


def _log_repair(repaired: Repaired) -> None:
    log.warn(
        "{path} had mode {old}, open to other users; the CRS owns it and set it to {new}",
        path=repaired.path,
        old=format(repaired.old_mode, "04o"),
        new=format(repaired.new_mode, "04o"),
    )


def _read_file(path: str, max_bytes: int, private: bool, owner: int) -> bytes:
    """A file of an account, bounded, with loose permissions repaired when it is ours."""
    try:
        data, repaired = read_owned_file(path, max_bytes, private, owner)
    except CryptoError as exc:
        raise AccountError(str(exc)) from None
    if repaired is not None:
        _log_repair(repaired)
    return data


def check_directory(path: str, owner: int) -> None:
    """A directory of accounts must not be writable by the group or others.

    One that belongs to ``owner`` loses those write bits (with a warning);
    one that belongs to another user is refused.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise AccountError(f"cannot read {path}: {exc.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if not mode & DATA_RISK:
        return
    if st.st_uid != owner:
        raise AccountError(
            f"{path} is writable by group or others (mode {mode:04o}) and belongs to uid"
            f" {st.st_uid}, not to the CRS (uid {owner}): chown it or chmod go-w it"
        )
    try:
        os.chmod(path, mode & ~DATA_RISK)
    except OSError as exc:
        raise AccountError(f"cannot chmod {path}: {exc.strerror}") from None
    _log_repair(Repaired(path, mode, mode & ~DATA_RISK))


def read_secret(path: str, owner: int) -> str:
    """An account's ``secret`` file: base64 text, private (repaired when ours)."""
    data = _read_file(path, MAX_SECRET_BYTES, True, owner)
    try:
        return check_secret(data.decode("ascii").strip())
    except UnicodeDecodeError:
        raise AccountError(f"{path}: the shared secret is not base64 text") from None
    except AccountError as exc:
        raise AccountError(f"{path}: {exc}") from None


def _text(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AccountError(f"{path}: not UTF-8 text (octet {exc.start})") from None


def read_month(path: str, account_id: str, period: str, owner: int) -> Month:
    """A ``YYYY-MM.json`` month file, checked completely."""
    text = _text(path, _read_file(path, MAX_DATA_BYTES, False, owner))
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AccountError(
            f"{path}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise AccountError(f"{path}: not a month file (JSON nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer with too many digits
        raise AccountError(f"{path}: not a month file ({excerpt(str(exc))})") from None
    try:
        return Month.from_json(doc, account_id, period)
    except AccountError as exc:
        raise AccountError(f"{path}: {exc}") from None


def read_blacklist(path: str, owner: int) -> frozenset[str]:
    """The operator's ``blacklist`` file (absent: empty)."""
    if not os.path.lexists(path):
        return frozenset()
    text = _text(path, _read_file(path, MAX_DATA_BYTES, False, owner))
    entries = set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            entries.add(check_uri(line))
        except AccountError as exc:
            raise AccountError(f"{path} line {number}: {exc}") from None
    return frozenset(entries)


def load_account(path: str, owner: int | None = None) -> Account:
    """Read one account directory; raise AccountError naming the file and the problem.

    ``owner`` is the CRS's user (default: this process's), who may repair
    loose permissions.
    """
    owner = os.geteuid() if owner is None else owner
    account_id = check_account_id(os.path.basename(path))
    check_directory(path, owner)
    secret = read_secret(os.path.join(path, SECRET_FILE), owner)
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise AccountError(f"cannot read {path}: {exc.strerror}") from None
    months = {}
    for name in names:
        match = MONTH_FILE.match(name)
        if match:
            period = match.group(1)
            months[period] = read_month(os.path.join(path, name), account_id, period, owner)
    blacklist = read_blacklist(os.path.join(path, BLACKLIST_FILE), owner)
    return Account(account_id, path, secret, months, blacklist)


@attrs.frozen
class Applied:
    """What ``apply`` did."""

    account: str
    revision: int
    periods: tuple[str, ...]


class AccountStore:
    """The accounts directory and the accounts loaded from it.

    ``owner`` is the uid of the CRS's user, whose files may have their
    permissions repaired (default: this process's effective uid);
    ``clock`` stamps a month applied from an update file that carries no
    creation time.
    """

    def __init__(
        self,
        directory: str,
        owner: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.owner = os.geteuid() if owner is None else owner
        self.clock = clock
        self.accounts: dict[str, Account] = {}
        #: Called after every change made through this store (and after a
        #: reload): the instance's worker processes read the accounts again.
        self.on_change: list[Callable[[], object]] = []

    def _changed(self) -> None:
        for hook in self.on_change:
            hook()

    def get(self, account_id: str) -> Account | None:
        return self.accounts.get(account_id)

    def __iter__(self) -> Iterator[Account]:
        return iter(sorted(self.accounts.values(), key=lambda a: a.id))

    def _dir(self, account_id: str) -> str:
        return os.path.join(self.directory, check_account_id(account_id))

    def reload(self) -> list[str]:
        """Re-read every account and pick up dropped update files; return the problems.

        An account that cannot be loaded keeps what was loaded before (or
        stays unloaded if it never was); every other account is reloaded.
        """
        problems: list[str] = []
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            names = []
        except OSError as exc:
            return [f"cannot read {self.directory}: {exc.strerror}"]
        if names:
            try:
                check_directory(self.directory, self.owner)
            except AccountError as exc:
                problems.append(str(exc))
                log.warn("{why}", why=str(exc))
        loaded: dict[str, Account] = {}
        for name in names:
            path = os.path.join(self.directory, name)
            if not ACCOUNT_ID.match(name) or not os.path.isdir(path):
                continue
            try:
                account = load_account(path, self.owner)
            except AccountError as exc:
                problems.append(str(exc))
                self._keep(name, loaded, str(exc))
                continue
            except Exception as exc:  # one account must never stop the others
                log.failure("account {account} could not be read", account=name)
                problems.append(f"{path}: unexpected {type(exc).__name__} (see the log)")
                self._keep(name, loaded, type(exc).__name__)
                continue
            loaded[name], found = self._pick_up_updates(account)
            problems.extend(found)
        self.accounts = loaded
        log.info("accounts loaded: {count}", count=len(loaded))
        self._changed()
        return problems

    def _keep(self, name: str, loaded: dict[str, Account], why: str) -> None:
        previous = self.accounts.get(name)
        if previous is not None:
            loaded[name] = previous
        log.warn(
            "account {account} not reloaded ({kept}): {why}",
            account=name,
            kept="keeps what it had" if previous is not None else "not loaded",
            why=why,
        )

    def _pick_up_updates(self, account: Account) -> tuple[Account, list[str]]:
        """Apply the update files dropped into the account's directory (CMS < 3.2.0).

        Each is checked completely before its months are written; a stored
        one is renamed ``NAME.upd.applied``, a refused one stays and is reported.
        """
        problems = []
        try:
            names = sorted(n for n in os.listdir(account.path) if n.endswith(UPDATE_SUFFIX))
        except OSError as exc:
            return account, [f"cannot read {account.path}: {exc.strerror}"]
        for name in names:
            path = os.path.join(account.path, name)
            try:
                data = _read_file(path, MAX_UPDATE_BYTES, False, self.owner)
                update = self._check_update(account, data)
                account = self._store_months(account, update)
            except (AccountError, OSError) as exc:
                why = str(exc) if isinstance(exc, AccountError) else exc.strerror or str(exc)
                problem = why if why.startswith(path) else f"{path}: {why}"
                problems.append(problem)
                log.warn("update file not applied: {why}", why=problem)
                continue
            try:
                os.replace(path, path + APPLIED_SUFFIX)
            except OSError as exc:
                problems.append(f"{path}: applied, but cannot rename it: {exc.strerror}")
            log.info(
                "update file {path} applied to {account}: revision {revision}, {periods}",
                path=path,
                account=account.id,
                revision=update.revision,
                periods=", ".join(m.period for m in update.months),
            )
        return account, problems

    def create(self, account_id: str, secret: str) -> Account:
        """Create an account with its shared secret (files 0600/0750)."""
        path = self._dir(account_id)
        check_secret(secret)
        if os.path.exists(path):
            raise AccountError(f"account {account_id} already exists")
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        os.mkdir(path, 0o750)
        write_atomically(os.path.join(path, SECRET_FILE), secret.encode("ascii") + b"\n", 0o600)
        account = Account(account_id, path, secret)
        self.accounts[account_id] = account
        log.info("account {account} created", account=account_id)
        self._changed()
        return account

    def set_secret(self, account_id: str, secret: str) -> Account:
        """Replace a loaded account's shared secret (the pool's conflict
        rule: a later ``create account`` of the same ID wins)."""
        account = self.accounts.get(account_id)
        if account is None:
            raise AccountError(f"no account {account_id}")
        check_secret(secret)
        write_atomically(
            os.path.join(account.path, SECRET_FILE), secret.encode("ascii") + b"\n", 0o600
        )
        updated = attrs.evolve(account, secret=secret)
        self.accounts[account_id] = updated
        log.info("account {account}: shared secret replaced", account=account_id)
        self._changed()
        return updated

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
        self._changed()

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
            raise AccountError(
                f"the update file is for account {excerpt(account_id)}, which is unknown"
            )
        return account, self._check_update(account, data)

    def _check_update(self, account: Account, data: bytes) -> UpdateFile:
        """Open an update file for ``account`` and check it against what is applied."""
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
        return update

    def _store_months(self, account: Account, update: UpdateFile) -> Account:
        """Write each month of a checked update file; the account with them applied."""
        created = update.created or int(self.clock())
        months = dict(account.months)
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
            write_atomically(path, doc.encode("utf-8") + b"\n", 0o640)
            months[month.period] = entry
        return attrs.evolve(account, months=months)

    def apply(self, data: bytes) -> Applied:
        """Check an update file completely, then store its months."""
        account, update = self.open_update(data)
        self.accounts[account.id] = self._store_months(account, update)
        periods = tuple(m.period for m in update.months)
        log.info(
            "update applied to {account}: revision {revision}, {periods}",
            account=account.id,
            revision=update.revision,
            periods=", ".join(periods),
        )
        self._changed()
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
        write_atomically(os.path.join(account.path, BLACKLIST_FILE), text.encode(), 0o640)
        updated = attrs.evolve(account, blacklist=frozenset(entries))
        self.accounts[account_id] = updated
        self._changed()
        return updated
