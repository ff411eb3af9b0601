"""
Other security domains' public KMS parameters (C{cryptify-kms export}).

A client that calls or writes to a user of another security domain
(another account, typically another operator's, docs/interworking.md)
needs that domain's public KMS parameters: the KMS Public Key Z to
encapsulate the SSV to the callee (SAKKE), and the KPAK to verify what
that domain's users sign (ECCSI).  One JSON document per domain holds
them, per key period, and no secret::

    {"format": "cryptify-kms-domain", "version": 1, "account": "beta",
     "periods": [{"period": "2026-12", "kpak": HEX, "z": HEX}, ...]}

Parsing is strict (every field checked, at most :data:`MAX_FILE` octets
and :data:`MAX_PERIODS` periods, KPAK and Z validated as points) and
every failure is a :class:`DomainFileError` naming what is wrong.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

import attrs

from cryptify.crypto import eccsi
from cryptify.crypto._util import check_period, unhex
from cryptify.crypto.errors import CryptoError, KeyFileError
from cryptify.crypto.sakke import SakkePublicKey

FORMAT = "cryptify-kms-domain"
VERSION = 1
#: Account ids as the CRS manual allows them (as cryptify.kms.store checks).
_ACCOUNT = re.compile(r"\A[A-Za-z0-9_-]{1,20}\Z")
#: At most this many octets in a domain file.
MAX_FILE = 64 * 1024
#: At most this many key periods in one domain file.
MAX_PERIODS = 24
#: At most this many domains a client loads.
MAX_DOMAINS = 64


class DomainFileError(KeyFileError):
    """A domain file that cannot be used: the message says why."""


@attrs.frozen
class DomainPeriod:
    """One key period of a domain: its KPAK and KMS Public Key Z."""

    period: str
    kpak: bytes
    z: bytes


@attrs.frozen
class PeerDomain:
    """A security domain's public KMS parameters."""

    account: str
    periods: tuple[DomainPeriod, ...]

    def for_period(self, period: str) -> DomainPeriod:
        """The parameters of ``period`` (DomainFileError: none)."""
        for entry in self.periods:
            if entry.period == period:
                return entry
        raise DomainFileError(f"security domain {self.account} has no keys for {period}")

    def public_key(self, period: str) -> SakkePublicKey:
        """The domain's Z of ``period``, validated."""
        return SakkePublicKey.from_bytes(self.for_period(period).z)

    def to_json(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "account": self.account,
            "periods": [
                {"period": p.period, "kpak": p.kpak.hex(), "z": p.z.hex()} for p in self.periods
            ],
        }

    def to_bytes(self) -> bytes:
        """The file contents (public: no secret)."""
        return json.dumps(self.to_json(), indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> PeerDomain:
        """Parse and validate a domain file.

        @raise DomainFileError: for anything wrong with it.
        """
        if len(data) > MAX_FILE:
            raise DomainFileError(f"a domain file is at most {MAX_FILE} octets")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise DomainFileError("a domain file is a JSON document") from None
        try:
            return _from_json(doc)
        except DomainFileError:
            raise
        except CryptoError as exc:
            raise DomainFileError(f"domain file: {exc}") from None


def _field(doc: dict[str, object], name: str, kind: type) -> object:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DomainFileError(f"domain file field {name!r} is missing or mistyped")
    return value


def _from_json(doc: object) -> PeerDomain:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DomainFileError("not a cryptify KMS domain document")
    if doc.get("version") != VERSION:
        raise DomainFileError("unsupported domain file version")
    account = str(_field(doc, "account", str))
    if not _ACCOUNT.match(account):
        raise DomainFileError("account id must be 1-20 characters from A-Z a-z 0-9 - _")
    entries = _field(doc, "periods", list)
    assert isinstance(entries, list)
    if not 1 <= len(entries) <= MAX_PERIODS:
        raise DomainFileError(f"a domain file holds 1 to {MAX_PERIODS} key periods")
    periods = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise DomainFileError("a domain file's period entry is not an object")
        if set(entry) != {"period", "kpak", "z"}:
            raise DomainFileError("a period entry holds exactly period, kpak and z")
        kpak = unhex(str(_field(entry, "kpak", str)), "KPAK")
        z = unhex(str(_field(entry, "z", str)), "Z")
        eccsi.decode_point(kpak, "KPAK")
        SakkePublicKey.from_bytes(z)
        periods.append(DomainPeriod(check_period(entry["period"]), kpak, z))
    if len({p.period for p in periods}) != len(periods):
        raise DomainFileError("a domain file lists a key period twice")
    return PeerDomain(account, tuple(periods))


def load_domain(path: str | os.PathLike[str]) -> PeerDomain:
    """Read a domain file (DomainFileError: unreadable or invalid)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise DomainFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return PeerDomain.from_bytes(data)
    except DomainFileError as exc:
        raise DomainFileError(f"{path}: {exc}") from None


def by_account(domains: Iterable[PeerDomain], own: str | None = None) -> dict[str, PeerDomain]:
    """Domains keyed by account (DomainFileError: one twice, our own, or too many)."""
    out: dict[str, PeerDomain] = {}
    for domain in domains:
        if domain.account in out:
            raise DomainFileError(f"security domain {domain.account} given twice")
        if domain.account == own:
            raise DomainFileError(f"{domain.account} is our own security domain")
        out[domain.account] = domain
    if len(out) > MAX_DOMAINS:
        raise DomainFileError(f"at most {MAX_DOMAINS} other security domains")
    return out
