"""
User key material files and the CIG keystore (C{.ks.tel:NUMBER}).

One versioned JSON document holds a user's keys for the current and
optionally the next key period: for each period its identifier, the KMS
public keys (KPAK, Z), and the user's SSK, PVT and RSK.  The file is written
0600 and refused when the group or others can read it.  The same document,
base64-encoded on one line, is what C{cryptify-kms cig-keys} prints and
C{cig-cli set-key} takes (L{KeyMaterial.to_blob} / L{KeyMaterial.from_blob}).

Loading validates every period's keys as the RFCs require of a device
(RFC 6507 5.1.2, RFC 6508 6.1.2) unless asked not to.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

import attrs

from cryptify.crypto import eccsi
from cryptify.crypto._util import check_period, os2ip, unhex
from cryptify.crypto.errors import CryptoError, KeyFileError, MalformedInput
from cryptify.crypto.identity import ID_SCHEME_TEL_URI, ID_SCHEME_UID
from cryptify.crypto.sakke import SakkePublicKey, SakkeReceiver
from cryptify.crypto.securefile import read_secret_file, write_secret_file

FORMAT = "cryptify-key-material"
VERSION = 1
KIND_USER = "user"
KIND_CIG = "cig"


@attrs.frozen
class PeriodKeys:
    """A user's keys for one key period."""

    period: str
    identifier: bytes
    kpak: bytes
    z: bytes
    ssk: int = attrs.field(repr=False)
    pvt: bytes
    rsk: bytes = attrs.field(repr=False)
    #: The KMS account's update-file revision the keys were issued at (0: not known).
    revision: int = 0

    @property
    def shown(self) -> str:
        """``YYYY-MM-REVISION``, as ``cig-cli status`` shows a crypto period."""
        return f"{self.period}-{self.revision}"

    def signer(self) -> eccsi.EccsiSigner:
        """The ECCSI signing key (validated)."""
        return eccsi.EccsiSigner(self.kpak, self.identifier, self.ssk, self.pvt)

    def public_key(self) -> SakkePublicKey:
        """The KMS Public Key Z (validated)."""
        return SakkePublicKey.from_bytes(self.z)

    def receiver(self, z: SakkePublicKey | None = None) -> SakkeReceiver:
        """The SAKKE receiver (RSK validated and precomputed)."""
        return SakkeReceiver(z or self.public_key(), self.identifier, self.rsk)

    def validate(self) -> None:
        """Validate SSK/PVT and RSK against the KMS keys and identifier."""
        self.signer()
        self.receiver()


@attrs.frozen
class KeyMaterial:
    """A user's (or the CIG's) key material: one or two key periods."""

    account: str
    uri: str
    periods: tuple[PeriodKeys, ...]
    kind: str = KIND_USER
    id_scheme: int = ID_SCHEME_TEL_URI
    kms_uri: str | None = None

    def __attrs_post_init__(self) -> None:
        if not 1 <= len(self.periods) <= 2:
            raise MalformedInput("key material holds the current and at most the next period")
        if len({p.period for p in self.periods}) != len(self.periods):
            raise MalformedInput("key material lists a key period twice")

    def for_period(self, period: str) -> PeriodKeys:
        """The keys of one period (YYYY-MM)."""
        for keys in self.periods:
            if keys.period == period:
                return keys
        raise KeyFileError(f"no key material for key period {period}")

    def for_identifier(self, identifier: bytes) -> PeriodKeys:
        """The keys whose identifier is C{identifier}."""
        for keys in self.periods:
            if keys.identifier == identifier:
                return keys
        raise KeyFileError("no key material for that identifier")

    def validate(self) -> None:
        """Validate every period's keys."""
        for keys in self.periods:
            keys.validate()

    def to_json(self) -> dict[str, object]:
        """The JSON document (contains secrets)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "account": self.account,
            "uri": self.uri,
            "id_scheme": self.id_scheme,
            "kms_uri": self.kms_uri,
            "periods": [
                {
                    "period": k.period,
                    "identifier": k.identifier.hex(),
                    "kpak": k.kpak.hex(),
                    "z": k.z.hex(),
                    "ssk": f"{k.ssk:064x}",
                    "pvt": k.pvt.hex(),
                    "rsk": k.rsk.hex(),
                    "revision": k.revision,
                }
                for k in self.periods
            ],
        }

    def to_bytes(self) -> bytes:
        """The file contents."""
        return json.dumps(self.to_json(), indent=1).encode("utf-8") + b"\n"

    def to_blob(self) -> str:
        """One base64 line, as C{cig-cli set-key} takes it."""
        return base64.b64encode(json.dumps(self.to_json()).encode("utf-8")).decode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes, validate: bool = True) -> KeyMaterial:
        """
        Parse (and by default validate) key material.

        @raise KeyFileError: for anything wrong with it.
        """
        try:
            doc = json.loads(data.decode("utf-8"))
            material = _from_json(doc)
            if validate:
                material.validate()
            return material
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise KeyFileError("key material is not a JSON document") from None
        except KeyFileError:
            raise
        except CryptoError as e:
            raise KeyFileError(f"key material is invalid: {e}") from None

    @classmethod
    def from_blob(cls, text: str, validate: bool = True) -> KeyMaterial:
        """Parse the one-line base64 form."""
        try:
            data = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError("key material blob is not base64") from None
        return cls.from_bytes(data, validate)


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise KeyFileError(f"key material field {name!r} is missing or mistyped")
    return value


def _revision(entry: dict[str, Any]) -> int:
    """A period's revision; key material written before revisions were kept has none (0)."""
    if "revision" not in entry:
        return 0
    value = entry["revision"]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise KeyFileError("key material field 'revision' is mistyped")
    return value


def _from_json(doc: object) -> KeyMaterial:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyFileError("not a cryptify key material document")
    if doc.get("version") != VERSION:
        raise KeyFileError(f"unsupported key material version {doc.get('version')!r}")
    kind = _field(doc, "kind", str)
    if kind not in (KIND_USER, KIND_CIG):
        raise KeyFileError(f"unknown key material kind {kind!r}")
    scheme = _field(doc, "id_scheme", int)
    if scheme not in (ID_SCHEME_TEL_URI, ID_SCHEME_UID):
        raise KeyFileError(f"unknown identifier scheme {scheme}")
    kms_uri = doc.get("kms_uri")
    if kms_uri is not None and not isinstance(kms_uri, str):
        raise KeyFileError("key material field 'kms_uri' is mistyped")
    periods_doc = _field(doc, "periods", list)
    periods = []
    for entry in periods_doc:
        if not isinstance(entry, dict):
            raise KeyFileError("key material period entry is not an object")
        ssk_text = _field(entry, "ssk", str)
        periods.append(
            PeriodKeys(
                period=check_period(_field(entry, "period", str)),
                identifier=unhex(_field(entry, "identifier", str), "identifier"),
                kpak=unhex(_field(entry, "kpak", str), "KPAK"),
                z=unhex(_field(entry, "z", str), "Z"),
                ssk=os2ip(unhex(ssk_text, "SSK")),
                pvt=unhex(_field(entry, "pvt", str), "PVT"),
                rsk=unhex(_field(entry, "rsk", str), "RSK"),
                revision=_revision(entry),
            )
        )
    return KeyMaterial(
        account=_field(doc, "account", str),
        uri=_field(doc, "uri", str),
        periods=tuple(periods),
        kind=kind,
        id_scheme=scheme,
        kms_uri=kms_uri,
    )


def write_key_material(path: str | os.PathLike[str], material: KeyMaterial) -> None:
    """Write a key material file, mode 0600."""
    write_secret_file(path, material.to_bytes())


def load_key_material(path: str | os.PathLike[str], validate: bool = True) -> KeyMaterial:
    """
    Load a key material file.

    @raise InsecurePermissions: if the group or others can access it.
    @raise KeyFileError: if it is unreadable, malformed or fails validation.
    """
    return KeyMaterial.from_bytes(read_secret_file(path), validate)


def keystore_path(directory: str | os.PathLike[str], uri: str) -> Path:
    """The CIG keystore file for C{uri}: C{DIRECTORY/.ks.tel:NUMBER}."""
    if "/" in uri or not uri:
        raise KeyFileError("keystore URI must not contain '/'")
    return Path(directory) / f".ks.{uri}"


def write_keystore(directory: str | os.PathLike[str], material: KeyMaterial) -> Path:
    """Write the CIG keystore for C{material.uri}; returns its path."""
    path = keystore_path(directory, material.uri)
    write_key_material(path, material)
    return path


def load_keystore(
    directory: str | os.PathLike[str], uri: str, validate: bool = True
) -> KeyMaterial:
    """Load the CIG keystore for C{uri}."""
    material = load_key_material(keystore_path(directory, uri), validate)
    if material.uri != uri:
        raise KeyFileError("keystore holds key material for another URI")
    return material
