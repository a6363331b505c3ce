"""Which redirect URIs a dynamically registered client may have (gateway/auth/redirects.py):
https anywhere, http to a loopback address only; never a fragment, credentials or another scheme."""

from __future__ import annotations

import pytest

from gateway.auth.redirects import check_redirect_uri


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example/callback",
        "https://app.example:8443/cb?x=1",
        "http://127.0.0.1:33418/callback",
        "http://127.0.0.2/cb",
        "http://localhost:8080/cb",
        "HTTP://LOCALHOST/cb",
        "http://[::1]:9000/cb",
    ],
)
def test_allowed(uri: str) -> None:
    assert check_redirect_uri(uri) is None


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("http://app.example/cb", "loopback"),
        ("http://localhost.evil.example/cb", "loopback"),
        ("http://10.0.0.1/cb", "loopback"),
        ("http://127.0.0.1@evil.example/cb", "credentials"),
        ("https://user:pw@app.example/cb", "credentials"),
        ("https://app.example/cb#x", "fragment"),
        ("javascript:alert(1)", "absolute"),
        ("data://text/html,hi", "scheme"),
        ("myapp://callback", "scheme"),
        ("https:///cb", "no host"),
        ("/relative/cb", "absolute"),
        ("", "absolute"),
    ],
)
def test_refused(uri: str, why: str) -> None:
    reason = check_redirect_uri(uri)
    assert reason is not None and why in reason, (uri, reason)
