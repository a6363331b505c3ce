"""Access tokens: JWTs (RFC 9068 profile) signed and checked with PyJWT.

Signature, algorithm, audience, issuer and required claims are PyJWT's; the time claims are
checked here (`check_times`) against a clock passed in, so tests move time instead of waiting.
Every refusal is a `RejectedTokenError` with a short reason for the log; the token itself is never
logged, nor its claims beyond the kid and client id.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.auth.keys import KeyRing

REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")


class RejectedTokenError(Exception):
    """A bearer token that must be refused; the message is safe to log (no token content)."""


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    scopes: list[str]
    kid: str


def issue_token(
    ring: KeyRing,
    *,
    issuer: str,
    audience: str,
    client_id: str,
    roles: Iterable[str],
    scopes: Iterable[str],
    ttl_s: int,
    now: float,
    subject: str | None = None,
) -> Issued:
    """A signed access token; `sub` is `subject` (the user who logged in) or else the client."""
    key, private = ring.signer()
    iat = int(now)
    scope_list = list(scopes)
    claims = {
        "iss": issuer,
        "sub": subject or client_id,
        "client_id": client_id,
        "aud": audience,
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl_s,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(scope_list),
        "roles": list(roles),
    }
    token = jwt.encode(claims, private, algorithm=key.alg, headers={"kid": key.kid, "typ": "at+jwt"})
    return Issued(token, ttl_s, scope_list, key.kid)


def check_times(claims: Mapping[str, Any], now: float, leeway_s: float) -> None:
    """exp, nbf and iat against `now`, with `leeway_s` of clock skew. Pure."""
    for name in ("exp", "iat"):
        if not isinstance(claims.get(name), int | float) or isinstance(claims.get(name), bool):
            raise RejectedTokenError(f"claim {name} missing or not a number")
    if now >= claims["exp"] + leeway_s:
        raise RejectedTokenError("expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if not isinstance(nbf, int | float) or isinstance(nbf, bool):
            raise RejectedTokenError("claim nbf not a number")
        if now + leeway_s < nbf:
            raise RejectedTokenError("not yet valid (nbf)")
    if now + leeway_s < claims["iat"]:
        raise RejectedTokenError("issued in the future (iat)")


def unverified_header(token: str, max_bytes: int) -> dict[str, Any]:
    """The JOSE header, after the cheap checks: size and shape."""
    if len(token) > max_bytes:
        raise RejectedTokenError(f"oversized ({len(token)} bytes, limit {max_bytes})")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise RejectedTokenError(f"malformed: {type(exc).__name__}") from None
    return header


def decode(
    token: str,
    key: Any,
    *,
    algorithms: list[str],
    issuer: str,
    audience: str,
    now: float,
    leeway_s: float,
) -> dict[str, Any]:
    """Verified claims, or RejectedTokenError. `algorithms` never holds none or HS*: a token that says
    `alg: none`, or HS256 keyed with our public key, fails PyJWT's algorithm check."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=audience,
            issuer=issuer,
            options={
                "require": list(REQUIRED_CLAIMS),
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidAudienceError:
        raise RejectedTokenError("wrong audience") from None
    except jwt.InvalidIssuerError:
        raise RejectedTokenError("wrong issuer") from None
    except jwt.InvalidAlgorithmError:
        raise RejectedTokenError("algorithm not allowed") from None
    except jwt.InvalidSignatureError:
        raise RejectedTokenError("bad signature") from None
    except jwt.MissingRequiredClaimError as exc:
        raise RejectedTokenError(f"claim {exc.claim} missing") from None
    except jwt.PyJWTError as exc:
        raise RejectedTokenError(f"invalid: {type(exc).__name__}") from None
    check_times(claims, now, leeway_s)
    return claims


def claim_path(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by dotted path (`realm_access.roles`), or None."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def scopes_claim(claims: Mapping[str, Any]) -> list[str]:
    """`scope` (a space-separated string, RFC 9068) or `scp` (a list, some providers)."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return scope.split()
    scp = claims.get("scp")
    if isinstance(scp, list):
        return [s for s in scp if isinstance(s, str)]
    if isinstance(scp, str):
        return scp.split()
    return []


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
