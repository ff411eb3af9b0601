"""Who may do what on the admin interface: challenges, sessions and rights (sans-IO).

The rules (docs/admin.md draws them):

- An admin proves it holds its secret (an Ed25519 private key) in one of
  two ways.  ``cryptify-admin`` asks for a challenge (:meth:`Gate.challenge`:
  a random nonce, single use, valid :data:`CHALLENGE_TTL`) and signs
  :func:`login_message` with it (:meth:`Gate.login_signed`): the secret
  never travels and a captured login cannot be replayed, since the nonce
  is consumed by the first attempt, right or wrong.  The web console's
  form sends the secret itself over TLS (:meth:`Gate.login_secret`); the
  CRS derives the public key and compares it with the stored one in
  constant time, and forgets the secret.
- A login opens a session: a random 256-bit token, valid
  :data:`SESSION_LIFETIME` from the login and never extended.  The gate
  keeps only the token's SHA-256, so finding a session compares no secret
  octet by octet, and a copy of the gate's memory opens nothing.
- Every request is checked against the admins as they are *now*: a
  deleted admin (or one deleted and created again, with a new key) loses
  its sessions at their next use; a taken account or authorization is
  refused at the next request.
- Rights are per account and per authorization (``statistics``,
  ``update``); everything else is refused.  Each refusal carries a
  :class:`Refused` reason for the log and the HTTP status.

Time is given as ``now`` (seconds); nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
from collections.abc import Callable

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cryptify.crs.remote_admin.store import (
    KEY_BYTES,
    Admin,
    AdminError,
    AdminStore,
    decode_secret,
    public_key_of,
)

SECOND = 1.0
MINUTE = 60 * SECOND
#: How long a challenge may be answered.
CHALLENGE_TTL = 1 * MINUTE
#: How long a session lasts from its login (never extended).
SESSION_LIFETIME = 30 * MINUTE
#: Most challenges outstanding (the oldest is dropped beyond).
MAX_CHALLENGES = 1024
#: Most sessions open, in all and per admin (the oldest is closed beyond).
MAX_SESSIONS = 1024
MAX_SESSIONS_PER_ADMIN = 8
#: Octets of randomness in a nonce and in a session token.
NONCE_BYTES = 32
TOKEN_BYTES = 32
#: Longest token or nonce text accepted (longer cannot be ours).
MAX_TOKEN_TEXT = 64
LOGIN_CONTEXT = b"cryptify-admin-login-v1"


class Refused(enum.Enum):
    """Why a request was refused: (log word, HTTP status)."""

    NO_CREDENTIAL = ("no-credential", 401)
    BAD_CREDENTIAL = ("bad-credential", 401)
    UNKNOWN_CHALLENGE = ("unknown-or-used-challenge", 401)
    EXPIRED_CHALLENGE = ("expired-challenge", 401)
    UNKNOWN_SESSION = ("unknown-session", 401)
    EXPIRED_SESSION = ("expired-session", 401)
    ADMIN_GONE = ("admin-deleted", 401)
    NOT_YOUR_ACCOUNT = ("not-your-account", 403)
    NOT_AUTHORIZED = ("not-authorized", 403)
    BAD_CSRF = ("bad-csrf-token", 403)

    @property
    def word(self) -> str:
        return self.value[0]

    @property
    def status(self) -> int:
        return self.value[1]


class Denied(Exception):
    """A request the gate refuses; ``reason`` says why, ``admin`` who asked (if known)."""

    def __init__(self, reason: Refused, admin: str | None = None) -> None:
        super().__init__(reason.word)
        self.reason = reason
        self.admin = admin


def login_message(admin: str, nonce: str) -> bytes:
    """What ``cryptify-admin`` signs to answer a challenge."""
    return b"\0".join((LOGIN_CONTEXT, admin.encode("utf-8"), nonce.encode("ascii")))


def _token(random: Callable[[int], bytes], size: int) -> str:
    return base64.urlsafe_b64encode(random(size)).decode("ascii").rstrip("=")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@attrs.frozen
class Challenge:
    admin: str
    expires: float


@attrs.frozen
class Session:
    """An open session: whose, with which key, until when, and its CSRF token."""

    admin: str
    key: bytes = attrs.field(repr=False)
    expires: float
    csrf: str = attrs.field(repr=False)


@attrs.define
class Gate:
    """Challenges, sessions and the rights check of the admin interface."""

    store: AdminStore
    random: Callable[[int], bytes] = os.urandom
    challenges: dict[str, Challenge] = attrs.field(factory=dict)
    #: SHA-256 of the token -> session, oldest first.
    sessions: dict[str, Session] = attrs.field(factory=dict)

    # -- login ---------------------------------------------------------------

    def challenge(self, admin: str, now: float) -> tuple[str, float]:
        """A nonce for ``admin`` to sign, and when it expires.

        Given to any name, known or not, so that the answer does not tell
        which admins exist.
        """
        self._prune(now)
        while len(self.challenges) >= MAX_CHALLENGES:
            del self.challenges[next(iter(self.challenges))]
        nonce = _token(self.random, NONCE_BYTES)
        expires = now + CHALLENGE_TTL
        self.challenges[nonce] = Challenge(admin, expires)
        return nonce, expires

    def login_signed(
        self, admin: str, nonce: str, signature: str, now: float
    ) -> tuple[str, Session]:
        """Open a session for an admin that signed its challenge; Denied otherwise."""
        issued = self.challenges.pop(nonce, None) if len(nonce) <= MAX_TOKEN_TEXT else None
        if issued is None or not hmac.compare_digest(issued.admin.encode(), admin.encode()):
            raise Denied(Refused.UNKNOWN_CHALLENGE, admin)
        if now >= issued.expires:
            raise Denied(Refused.EXPIRED_CHALLENGE, admin)
        found = self.store.get(admin)
        if found is None:
            raise Denied(Refused.BAD_CREDENTIAL, admin)
        try:
            raw = base64.b64decode(signature.encode("ascii"), validate=True)
            Ed25519PublicKey.from_public_bytes(found.key).verify(raw, login_message(admin, nonce))
        except (binascii.Error, UnicodeEncodeError, ValueError, InvalidSignature):
            raise Denied(Refused.BAD_CREDENTIAL, admin) from None
        return self._open(found, now)

    def login_secret(self, admin: str, secret: str, now: float) -> tuple[str, Session]:
        """Open a session for an admin that gave its secret (the console's form)."""
        found = self.store.get(admin)
        try:
            offered = public_key_of(decode_secret(secret))
        except (AdminError, ValueError):
            offered = b"\0" * KEY_BYTES
        expected = found.key if found is not None else b"\xff" * KEY_BYTES
        if not hmac.compare_digest(offered, expected) or found is None:
            raise Denied(Refused.BAD_CREDENTIAL, admin)
        return self._open(found, now)

    def _open(self, admin: Admin, now: float) -> tuple[str, Session]:
        self._prune(now)
        mine = [d for d, s in self.sessions.items() if s.admin == admin.name]
        for digest in mine[: max(0, len(mine) - MAX_SESSIONS_PER_ADMIN + 1)]:
            del self.sessions[digest]
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[next(iter(self.sessions))]
        token = _token(self.random, TOKEN_BYTES)
        session = Session(
            admin.name, admin.key, now + SESSION_LIFETIME, _token(self.random, TOKEN_BYTES)
        )
        self.sessions[_digest(token)] = session
        return token, session

    def _prune(self, now: float) -> None:
        for nonce in [n for n, c in self.challenges.items() if now >= c.expires]:
            del self.challenges[nonce]
        for digest in [d for d, s in self.sessions.items() if now >= s.expires]:
            del self.sessions[digest]

    # -- each request ----------------------------------------------------------

    def session(self, token: str | None, now: float) -> tuple[Session, Admin]:
        """The live session of ``token`` and its admin as it is now; Denied otherwise."""
        if not token:
            raise Denied(Refused.NO_CREDENTIAL)
        digest = _digest(token) if len(token) <= MAX_TOKEN_TEXT else ""
        found = self.sessions.get(digest)
        if found is None:
            raise Denied(Refused.UNKNOWN_SESSION)
        if now >= found.expires:
            del self.sessions[digest]
            raise Denied(Refused.EXPIRED_SESSION, found.admin)
        admin = self.store.get(found.admin)
        if admin is None or not hmac.compare_digest(admin.key, found.key):
            del self.sessions[digest]
            raise Denied(Refused.ADMIN_GONE, found.admin)
        return found, admin

    def authorize(self, token: str | None, account: str, authorization: str, now: float) -> Admin:
        """The admin of ``token`` if it holds ``authorization`` on ``account``; Denied otherwise."""
        _, admin = self.session(token, now)
        if account not in admin.accounts:
            raise Denied(Refused.NOT_YOUR_ACCOUNT, admin.name)
        if not admin.may(account, authorization):
            raise Denied(Refused.NOT_AUTHORIZED, admin.name)
        return admin

    def check_csrf(self, session: Session, offered: str) -> None:
        """A console form must carry its session's CSRF token."""
        if not hmac.compare_digest(session.csrf.encode(), offered.encode("utf-8", "replace")):
            raise Denied(Refused.BAD_CSRF, session.admin)

    def logout(self, token: str) -> None:
        self.sessions.pop(_digest(token), None)
