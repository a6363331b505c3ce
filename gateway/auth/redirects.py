"""Which redirect URIs a client may have, registered (RFC 7591) or in its client ID metadata
document: https anywhere, http to a loopback address only (RFC 8252 7.3, a native client's local
listener); never a fragment (RFC 6749 3.1.2) or credentials. Pure."""

from __future__ import annotations

from ipaddress import ip_address

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


def check_redirect_uri(uri: str) -> str | None:
    """Why `uri` cannot be a registered redirect URI, or None: https anywhere, http only to a
    loopback address (RFC 8252 7.3, a native client's local listener), no fragment (RFC 6749
    3.1.2), no credentials in it. Anything else (javascript:, data:, a custom scheme, plain http to
    another host) would let a registration send codes somewhere a user cannot see."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return "not an absolute URL"
    scheme = scheme.lower()
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    if "#" in uri:
        return "has a fragment"
    if "@" in authority:
        return "carries credentials"
    host = authority.rsplit(":", 1)[0] if not authority.startswith("[") else authority.split("]")[0] + "]"
    host = host.lower()
    if scheme == "https":
        return None if host else "has no host"
    if scheme == "http":
        if host in LOOPBACK_HOSTS:
            return None
        try:
            if ip_address(host.strip("[]")).is_loopback:
                return None
        except ValueError:
            pass
        return "http is allowed to a loopback address only (use https)"
    return f"scheme {scheme!r} is not allowed (https, or http to a loopback address)"
