"""Client secrets: hashed with scrypt (hashlib's, OpenSSL's), compared in constant time.

The stored form is `scrypt$<log2 N>$<r>$<p>$<salt>$<hash>` (base64url, no padding), so the cost
can rise later without breaking the hashes already in config files.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

# OWASP's scrypt floor (N=2^17, r=8, p=1) costs 128 MiB and over 0.3 s per token request on a
# small machine; N=2^15 (32 MiB) costs about 0.1 s here, still far out of reach of guessing for
# the 32-byte random secrets `hash-secret` makes. Stored hashes keep their own cost.
LOG2_N, R, P = 15, 8, 1
_DKLEN = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_DKLEN, maxmem=2 * 128 * r * (n + p) + 1024
    )


def new_secret() -> str:
    """A fresh client secret: 32 random bytes, base64url."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, *, log2_n: int = LOG2_N, r: int = R, p: int = P) -> str:
    salt = secrets.token_bytes(16)
    return f"scrypt${log2_n}${r}${p}${_b64(salt)}${_b64(_scrypt(secret, salt, log2_n, r, p))}"


def verify_secret(secret: str, stored: str) -> bool:
    """True if `secret` hashes to `stored`; False for a wrong secret or a malformed hash."""
    try:
        kind, log2_n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt" or not (10 <= int(log2_n) <= 20 and 1 <= int(r) <= 32 and 1 <= int(p) <= 16):
            return False
        expected = _unb64(digest)
        actual = _scrypt(secret, _unb64(salt), int(log2_n), int(r), int(p))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def dummy_hash() -> str:
    """Verifying an unknown client's secret against this keeps the answer time the same as for a
    known client, so the token endpoint does not tell which client ids exist."""
    return hash_secret("not a client secret")
