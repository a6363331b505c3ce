"""Signing, claims checks and secret hashes of gateway/auth (pure parts; keys in a tmp dir)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.auth.keys import DirKeyStore, KeyRing, generate_key, jwk_thumbprint
from gateway.auth.passwords import hash_secret, verify_secret
from gateway.auth.tokens import RejectedTokenError, check_times, claim_path, issue_token, scopes_claim
from gateway.auth.verifier import LocalVerifier
from tasks.config_gateway import SECRET_HASH_PATTERN, GatewayAuthSection

ISS, AUD = "http://127.0.0.1:9/", "http://127.0.0.1:9/mcp"
T0 = 1_800_000_000.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("claims", "now", "error"),
    [
        ({"exp": T0 + 60, "iat": T0}, T0, None),
        ({"exp": T0 + 60, "iat": T0}, T0 + 60 + 29, None),  # inside the 30 s leeway
        ({"exp": T0 + 60, "iat": T0}, T0 + 60 + 30, "expired"),
        ({"exp": T0 + 60, "iat": T0, "nbf": T0 + 100}, T0, "not yet valid"),
        ({"exp": T0 + 600, "iat": T0 + 100}, T0, "issued in the future"),
        ({"exp": T0 + 60, "iat": T0, "nbf": T0 + 20}, T0, None),
        ({"iat": T0}, T0, "exp missing"),
        ({"exp": "soon", "iat": T0}, T0, "exp missing or not a number"),
        ({"exp": True, "iat": T0}, T0, "exp missing"),
        ({"exp": T0 + 60, "iat": T0, "nbf": "x"}, T0, "nbf not a number"),
    ],
)
def test_check_times(claims: dict[str, object], now: float, error: str | None) -> None:
    if error is None:
        check_times(claims, now, 30)
    else:
        with pytest.raises(RejectedTokenError, match=error):
            check_times(claims, now, 30)


def test_claim_helpers() -> None:
    assert scopes_claim({"scope": "a b"}) == ["a", "b"]
    assert scopes_claim({"scp": ["a", 3, "b"]}) == ["a", "b"]
    assert scopes_claim({}) == []
    assert claim_path({"realm_access": {"roles": ["r"]}}, "realm_access.roles") == ["r"]
    assert claim_path({"realm_access": ["x"]}, "realm_access.roles") is None


def test_secret_hash_round_trip() -> None:
    h = hash_secret("s3cret", log2_n=10)
    assert SECRET_HASH_PATTERN.match(h)
    assert "s3cret" not in h
    assert verify_secret("s3cret", h)
    assert not verify_secret("s3cret ", h)
    assert not verify_secret("s3cret", h.replace("scrypt$10", "scrypt$11"))
    assert not verify_secret("s3cret", "scrypt$99$8$1$AAAA$BBBB")  # cost out of range: refused, not run
    assert not verify_secret("s3cret", "plain")


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 7638 section 3.1's example key and thumbprint.
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
        "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMi"
        "cAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XP"
        "ksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _ring(tmp_path: Path, clock: list[float]) -> tuple[KeyRing, GatewayAuthSection]:
    auth = GatewayAuthSection(enabled=True, token_ttl=600)
    return KeyRing(DirKeyStore(tmp_path / "keys"), auth, clock=lambda: clock[0]), auth


@pytest.mark.anyio
async def test_issue_and_verify(tmp_path: Path) -> None:
    clock = [T0]
    ring, auth = _ring(tmp_path, clock)
    issued = issue_token(
        ring,
        issuer=ISS,
        audience=AUD,
        client_id="ci",
        roles=["reader"],
        scopes=["tools:call:git/*"],
        ttl_s=600,
        now=T0,
    )
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "ES256", "kid": issued.kid, "typ": "at+jwt"}
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(claims) >= {"iss", "aud", "exp", "iat", "jti", "scope", "roles", "client_id", "sub"}
    assert claims["exp"] - claims["iat"] == 600
    verifier = LocalVerifier(ring, issuer=ISS, audience=AUD, auth=auth)
    token = await verifier.verify_token(issued.token)
    assert token is not None and token.client_id == "ci" and token.scopes == ["tools:call:git/*"]
    assert token.claims is not None and token.claims["roles"] == ["reader"]
    clock[0] = T0 + 600 + auth.leeway_s
    assert await verifier.verify_token(issued.token) is None  # expired, by the clock passed in
    assert (
        await LocalVerifier(ring, issuer=ISS, audience=AUD + "x", auth=auth).verify_token(issued.token)
        is None
    )


@pytest.mark.anyio
async def test_forgeries_are_refused(tmp_path: Path) -> None:
    clock = [T0]
    ring, auth = _ring(tmp_path, clock)
    issued = issue_token(
        ring, issuer=ISS, audience=AUD, client_id="ci", roles=[], scopes=[], ttl_s=600, now=T0
    )
    verifier = LocalVerifier(ring, issuer=ISS, audience=AUD, auth=auth)
    head, payload, sig = issued.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["scope"] = "tools:call:*"
    tampered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert await verifier.verify_token(f"{head}.{tampered}.{sig}") is None
    none_token = jwt.encode(claims, None, algorithm="none", headers={"kid": issued.kid})  # type: ignore[arg-type]
    assert await verifier.verify_token(none_token) is None
    other = ec.generate_private_key(ec.SECP256R1())
    assert (
        await verifier.verify_token(jwt.encode(claims, other, "ES256", headers={"kid": issued.kid})) is None
    )
    assert await verifier.verify_token("x" * (auth.max_token_bytes + 1)) is None
    assert await verifier.verify_token("not a jwt") is None
    key = ring.keys()[0]
    pem = jwt.PyJWK(key.public_jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # HS256 keyed with the public key: PyJWT refuses to build it, so sign by hand.
    import hashlib
    import hmac

    h = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": issued.kid}).encode()).rstrip(b"=")
    body = f"{h.decode()}.{payload}".encode()
    mac = base64.urlsafe_b64encode(hmac.new(pem, body, hashlib.sha256).digest()).rstrip(b"=").decode()
    assert await verifier.verify_token(f"{body.decode()}.{mac}") is None


def test_generated_keys_are_encrypted_with_a_passphrase() -> None:
    key = generate_key("RS256", time.time(), b"pass")
    assert "ENCRYPTED" in key.private_pem
    assert key.public_jwk["kty"] == "RSA" and key.kid == key.public_jwk["kid"]


@pytest.mark.anyio
async def test_a_checked_token_is_remembered_until_it_expires_or_its_key_leaves(tmp_path: Path) -> None:
    clock = [T0]
    ring, auth = _ring(tmp_path, clock)
    issued = issue_token(
        ring, issuer=ISS, audience=AUD, client_id="ci", roles=[], scopes=["s"], ttl_s=600, now=T0
    )
    verifier = LocalVerifier(ring, issuer=ISS, audience=AUD, auth=auth)
    first = await verifier.verify_token(issued.token)
    assert first is not None and await verifier.verify_token(issued.token) is first  # not checked again
    clock[0] = T0 + 600 + auth.leeway_s - 1
    assert await verifier.verify_token(issued.token) is first
    clock[0] = T0 + 600 + auth.leeway_s
    assert await verifier.verify_token(issued.token) is None  # expired: remembered no more
    clock[0] = T0
    other = issue_token(
        ring, issuer=ISS, audience=AUD, client_id="ci", roles=[], scopes=["s"], ttl_s=600, now=T0
    )
    assert await verifier.verify_token(other.token) is not None
    assert ring.store.remove(other.kid)  # its key withdrawn from the ring
    ring.invalidate()
    assert await verifier.verify_token(other.token) is None
    forged = other.token[:-4] + ("AAAA" if not other.token.endswith("AAAA") else "BBBB")
    assert await verifier.verify_token(forged) is None  # a different string: checked, refused
