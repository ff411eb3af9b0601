"""JSON Web Tokens the providers want (RFC 7519, compact form).

- APNs provider tokens: ES256 (RFC 7518 section 3.4: the signature is
  ``r || s``, 32 bytes each, not DER), header ``{alg, kid}``, claims
  ``{iss: team id, iat}``.
- Google OAuth2 service-account assertions: RS256, claims ``{iss, scope,
  aud, iat, exp}``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


class TokenKeyError(ValueError):
    """A signing key is not of the kind the provider needs."""


def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The inverse of :func:`b64url` (raises ValueError on bad input)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _part(value: Mapping[str, object]) -> str:
    return b64url(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def es256_jwt(key: object, key_id: str, team_id: str, issued: int) -> str:
    """An APNs provider token signed with the P-256 ``key``."""
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise TokenKeyError("the APNs key must be a P-256 (ES256) private key")
    header, claims = {"alg": "ES256", "kid": key_id}, {"iss": team_id, "iat": issued}
    signing_input = f"{_part(header)}.{_part(claims)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def rs256_jwt(key: object, claims: Mapping[str, object], key_id: str | None = None) -> str:
    """A JWT signed with the RSA ``key`` (Google service-account assertions)."""
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TokenKeyError("the service-account key must be an RSA private key")
    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if key_id:
        header["kid"] = key_id
    signing_input = f"{_part(header)}.{_part(claims)}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def unverified_claims(token: str) -> dict[str, object]:
    """The claims of a compact JWT, not verified (raises ValueError)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWT")
    claims = json.loads(b64url_decode(parts[1]))
    if not isinstance(claims, dict):
        raise ValueError("JWT claims are not an object")
    return claims
