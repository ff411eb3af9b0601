"""
The crypto package's typed errors.

Everything that can go wrong with hostile input (a MIKEY message, a key file,
a keystore, an update file) surfaces as a L{CryptoError} subclass with a
message that says what was wrong.  Messages never carry secret values.
"""


class CryptoError(Exception):
    """Base class of every error the crypto package raises on purpose."""


class MalformedInput(CryptoError):
    """Octets that do not parse: wrong length, bad encoding, bad field."""


class InvalidPoint(MalformedInput):
    """An encoded point that is not on its curve or not in the right group."""


class KeyValidationError(CryptoError):
    """Key material that fails the RFC's validation equations."""


class SignatureInvalid(CryptoError):
    """An ECCSI signature that does not verify."""


class DecapsulationFailed(CryptoError):
    """SAKKE Encapsulated Data that fails the receiver's integrity check."""


class MikeyError(MalformedInput):
    """A MIKEY message that is malformed or not what the caller expects."""


class ReplayError(CryptoError):
    """A MIKEY message outside the time window, or a repeated RAND."""


class IdentityError(CryptoError):
    """An identifier that cannot be formed or does not match the message."""


class KeyFileError(CryptoError):
    """A key material file, keystore or KMS store that cannot be used."""


class InsecurePermissions(KeyFileError):
    """A secret file readable by its group or by others."""


class UpdateFileError(CryptoError):
    """A monthly update file that is malformed, altered, or not ours."""
