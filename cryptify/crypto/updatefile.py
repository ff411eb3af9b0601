"""
The monthly update file, as C{cryptify-kms update} writes it and
C{crs-cli apply} takes it.

Layout (all lengths in octets)::

    magic "CRYPTIFY-UPD" (12) | version (1) = 1 | account length (1) |
    account (UTF-8) | salt (16) | nonce (12) | AES-256-GCM ciphertext + tag

The key is HKDF-SHA-256 over the account's CRS shared secret (its octets as
configured, UTF-8 when given as text), with the file's salt and the info
C{"cryptify update file v1" 0x00 account}.  Everything before the ciphertext
is authenticated as associated data.  The plaintext is a JSON document with
the account, the revision, and one or two months (current, optional next),
each with its period (YYYY-MM), KPAK, Z and blacklist.

A wrong secret, any altered or truncated octet, or another account's file is
refused with an L{UpdateFileError} that says which.
"""

from __future__ import annotations

import json
import os
import secrets

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cryptify.crypto import eccsi
from cryptify.crypto._util import check_period, unhex
from cryptify.crypto.errors import CryptoError, UpdateFileError
from cryptify.crypto.sakke import SakkePublicKey

MAGIC = b"CRYPTIFY-UPD"
VERSION = 1
SALT_LENGTH = 16
NONCE_LENGTH = 12
INFO_LABEL = b"cryptify update file v1\x00"
FORMAT = "cryptify-update"
MAX_FILE = 16 * 1024 * 1024


@attrs.frozen
class MonthKeys:
    """One month of an update file: the KMS public keys and the blacklist."""

    period: str
    kpak: bytes
    z: bytes
    blacklist: tuple[str, ...] = ()

    def public_key(self) -> SakkePublicKey:
        """Z, decoded and validated."""
        return SakkePublicKey.from_bytes(self.z)


@attrs.frozen
class UpdateFile:
    """The contents of a monthly update file."""

    account: str
    revision: int
    months: tuple[MonthKeys, ...]
    #: When the KMS made the file, seconds since the epoch (0: unknown).
    created: int = 0

    def __attrs_post_init__(self) -> None:
        if not 1 <= len(self.months) <= 2:
            raise UpdateFileError("an update file holds the current and at most the next month")

    @property
    def current(self) -> MonthKeys:
        """The month the file is for."""
        return self.months[0]

    @property
    def next(self) -> MonthKeys | None:
        """The following month, when the file carries it."""
        return self.months[1] if len(self.months) > 1 else None

    def to_json(self) -> dict[str, object]:
        """The plaintext document."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "account": self.account,
            "revision": self.revision,
            "created": self.created,
            "months": [
                {
                    "period": m.period,
                    "kpak": m.kpak.hex(),
                    "z": m.z.hex(),
                    "blacklist": list(m.blacklist),
                }
                for m in self.months
            ],
        }


def _secret_octets(secret: str | bytes) -> bytes:
    octets = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not octets:
        raise UpdateFileError("the account's shared secret is empty")
    return octets


def _key(secret: str | bytes, salt: bytes, account: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=INFO_LABEL + account)
    return hkdf.derive(_secret_octets(secret))


def seal_update_file(update: UpdateFile, secret: str | bytes) -> bytes:
    """Encrypt and authenticate an update file with the account's secret."""
    account = update.account.encode("utf-8")
    if not 0 < len(account) < 256:
        raise UpdateFileError("account id must be 1 to 255 octets")
    salt = secrets.token_bytes(SALT_LENGTH)
    nonce = secrets.token_bytes(NONCE_LENGTH)
    head = MAGIC + bytes([VERSION, len(account)]) + account + salt + nonce
    plaintext = json.dumps(update.to_json()).encode("utf-8")
    return head + AESGCM(_key(secret, salt, account)).encrypt(nonce, plaintext, head)


def peek_account(data: bytes) -> str:
    """The account an update file says it is for (unauthenticated)."""
    return _split(data)[1]


def _split(data: bytes) -> tuple[bytes, str, bytes, bytes, bytes]:
    if not isinstance(data, bytes | bytearray):
        raise UpdateFileError("update file must be octets")
    data = bytes(data)
    if len(data) > MAX_FILE:
        raise UpdateFileError("update file is too large")
    if not data.startswith(MAGIC):
        raise UpdateFileError("not a cryptify update file (bad magic)")
    pos = len(MAGIC)
    if len(data) < pos + 2:
        raise UpdateFileError("update file is truncated")
    if data[pos] != VERSION:
        raise UpdateFileError(f"unsupported update file version {data[pos]}")
    alen = data[pos + 1]
    pos += 2
    end = pos + alen + SALT_LENGTH + NONCE_LENGTH
    if alen == 0 or len(data) < end + 16:
        raise UpdateFileError("update file is truncated")
    try:
        account = data[pos : pos + alen].decode("utf-8")
    except UnicodeDecodeError:
        raise UpdateFileError("update file account id is not UTF-8") from None
    salt = data[pos + alen : pos + alen + SALT_LENGTH]
    nonce = data[pos + alen + SALT_LENGTH : end]
    return data[:end], account, salt, nonce, data[end:]


def open_update_file(
    data: bytes, secret: str | bytes, account: str | None = None, validate: bool = True
) -> UpdateFile:
    """
    Decrypt, authenticate and parse an update file.

    @param account: the account the caller expects; another account's file
        is refused.
    @param validate: check that every KPAK and Z is a valid public key.
    @raise UpdateFileError: for every failure, with a clear message.
    """
    head, file_account, salt, nonce, ciphertext = _split(data)
    if account is not None and file_account != account:
        raise UpdateFileError(f"update file is for account {file_account!r}, not {account!r}")
    key = _key(secret, salt, file_account.encode("utf-8"))
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, head)
    except InvalidTag:
        raise UpdateFileError(
            "update file does not authenticate: wrong shared secret, or the file was altered"
        ) from None
    try:
        update = _parse(json.loads(plaintext.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise UpdateFileError("update file content is not a JSON document") from None
    except UpdateFileError:
        raise
    except CryptoError as e:
        raise UpdateFileError(f"update file content is invalid: {e}") from None
    if update.account != file_account:
        raise UpdateFileError("update file content names another account")
    if validate:
        try:
            for month in update.months:
                eccsi.decode_point(month.kpak, "KPAK")
                month.public_key()
        except CryptoError as e:
            raise UpdateFileError(f"update file carries an invalid key: {e}") from None
    return update


def load_update_file(
    path: str | os.PathLike[str], secret: str | bytes, account: str | None = None
) -> UpdateFile:
    """Read and open an update file from disk."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise UpdateFileError(f"cannot read {path}: {e.strerror}") from None
    return open_update_file(data, secret, account)


def _parse(doc: object) -> UpdateFile:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise UpdateFileError("update file content is not a version 1 update document")
    account = doc.get("account")
    revision = doc.get("revision")
    months_doc = doc.get("months")
    if not isinstance(account, str) or not isinstance(months_doc, list):
        raise UpdateFileError("update file content lacks account or months")
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        raise UpdateFileError("update file revision must be a non-negative integer")
    months = []
    for m in months_doc:
        if not isinstance(m, dict):
            raise UpdateFileError("update file month entry is not an object")
        period, kpak, z, blacklist = m.get("period"), m.get("kpak"), m.get("z"), m.get("blacklist")
        if not isinstance(kpak, str) or not isinstance(z, str) or not isinstance(blacklist, list):
            raise UpdateFileError("update file month entry lacks kpak, z or blacklist")
        if not all(isinstance(u, str) for u in blacklist):
            raise UpdateFileError("update file blacklist entries must be URIs")
        months.append(
            MonthKeys(check_period(period), unhex(kpak, "KPAK"), unhex(z, "Z"), tuple(blacklist))
        )
    created = doc.get("created", 0)
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise UpdateFileError("update file creation time must be a non-negative integer")
    return UpdateFile(account, revision, tuple(months), created)
