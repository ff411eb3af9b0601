"""
The KMS store: each account's master secrets (ECCSI KSAK, SAKKE z) and its
update-file revision counter, one 0600 JSON file per account in a 0700
directory.  It stands in for the management server's key database.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import attrs

from cryptify.crypto._util import next_period, os2ip, unhex
from cryptify.crypto.eccsi import EccsiKms
from cryptify.crypto.errors import CryptoError, KeyFileError
from cryptify.crypto.identity import tel_identifier
from cryptify.crypto.keymaterial import KIND_USER, KeyMaterial, PeriodKeys
from cryptify.crypto.sakke import SakkeKms
from cryptify.crypto.securefile import read_secret_file, write_secret_file
from cryptify.crypto.updatefile import MonthKeys, UpdateFile

FORMAT = "cryptify-kms-account"
VERSION = 1
_ACCOUNT = re.compile(r"\A[A-Za-z0-9_-]{1,20}\Z")


def check_account(account: str) -> str:
    """Account ids as the CRS manual allows them: [A-Za-z0-9_-], at most 20."""
    if not _ACCOUNT.match(account):
        raise KeyFileError("account id must be 1-20 characters from A-Z a-z 0-9 - _")
    return account


@attrs.frozen
class KmsAccount:
    """One security domain's master secrets."""

    account: str
    eccsi: EccsiKms = attrs.field(repr=False)
    sakke: SakkeKms = attrs.field(repr=False)
    revision: int = 0

    @classmethod
    def generate(cls, account: str) -> KmsAccount:
        """New random master secrets for C{account}."""
        return cls(check_account(account), EccsiKms.generate(), SakkeKms.generate())

    @property
    def kpak(self) -> bytes:
        """The account's KPAK."""
        return self.eccsi.kpak

    @property
    def z(self) -> bytes:
        """The account's KMS Public Key Z."""
        return self.sakke.public_key().to_bytes()

    def period_keys(self, identifier: bytes, period: str) -> PeriodKeys:
        """Issue ECCSI and SAKKE keys for one identifier."""
        ssk, pvt = self.eccsi.issue(identifier)
        return PeriodKeys(
            period=period,
            identifier=identifier,
            kpak=self.kpak,
            z=self.z,
            ssk=ssk,
            pvt=pvt,
            rsk=self.sakke.issue_rsk(identifier),
            revision=self.revision,
        )

    def issue(
        self, uri: str, period: str, with_next: bool = False, kind: str = KIND_USER
    ) -> KeyMaterial:
        """Key material (ID scheme 1) for C{uri}, for C{period} and optionally the next."""
        periods = [period, next_period(period)] if with_next else [period]
        return KeyMaterial(
            account=self.account,
            uri=uri,
            periods=tuple(self.period_keys(tel_identifier(uri, p), p) for p in periods),
            kind=kind,
        )

    def update(
        self, period: str, with_next: bool = False, blacklist: tuple[str, ...] = ()
    ) -> UpdateFile:
        """The update file contents for C{period} (revision already bumped by the caller)."""
        periods = [period, next_period(period)] if with_next else [period]
        months = tuple(MonthKeys(p, self.kpak, self.z, blacklist) for p in periods)
        return UpdateFile(self.account, self.revision, months, int(time.time()))

    def to_json(self) -> dict[str, object]:
        """The store document (contains the master secrets)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "account": self.account,
            "ksak": f"{self.eccsi.ksak:064x}",
            "z": f"{self.sakke.z:0256x}",
            "revision": self.revision,
        }


class KmsStore:
    """A directory of account files."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, account: str) -> Path:
        """The file holding C{account}."""
        return self.directory / f"{check_account(account)}.kms"

    def exists(self, account: str) -> bool:
        """Whether C{account} has been created."""
        return self.path(account).exists()

    def save(self, account: KmsAccount) -> None:
        """Write an account, creating the store directory 0700."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise KeyFileError(f"cannot create {self.directory}: {e.strerror}") from None
        data = json.dumps(account.to_json(), indent=1).encode("utf-8") + b"\n"
        write_secret_file(self.path(account.account), data)

    def load(self, account: str) -> KmsAccount:
        """
        Read an account.

        @raise KeyFileError: if it is missing, malformed, or accessible by others.
        """
        path = self.path(account)
        if not path.exists():
            raise KeyFileError(f"account {account!r} does not exist in {self.directory}")
        data = read_secret_file(path)
        try:
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != FORMAT:
                raise KeyFileError(f"{path} is not a KMS account file")
            if doc.get("version") != VERSION or doc.get("account") != account:
                raise KeyFileError(f"{path} has the wrong version or account")
            revision = doc.get("revision")
            if not isinstance(revision, int) or revision < 0:
                raise KeyFileError(f"{path} has a bad revision")
            return KmsAccount(
                account,
                EccsiKms(os2ip(unhex(str(doc.get("ksak")), "KSAK"))),
                SakkeKms(os2ip(unhex(str(doc.get("z")), "z"))),
                revision,
            )
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise KeyFileError(f"{path} is not a JSON document") from None
        except KeyFileError:
            raise
        except CryptoError as e:
            raise KeyFileError(f"{path} is invalid: {e}") from None
