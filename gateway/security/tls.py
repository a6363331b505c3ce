"""TLS for the gateway's HTTP endpoint: TLS 1.3 minimum, and optional mTLS.

`uvicorn_ssl(config.gateway.tls)` gives the keyword arguments of `uvicorn.Config` (or
`uvicorn.run`); `{}` when no certificate is configured (plain HTTP).

How TLS 1.3 is forced. uvicorn builds its own `ssl.SSLContext` from its `ssl_*` arguments
(uvicorn/config.py `create_ssl_context`): `SSLContext(ssl_version)`, `load_cert_chain`,
`verify_mode = ssl_cert_reqs`, `load_verify_locations(ssl_ca_certs)`, `set_ciphers`. None of
them sets a minimum version: `ssl_version` is the *protocol* handed to `SSLContext()` and there is
no `PROTOCOL_TLSv1_3` (the per-version protocols are deprecated; `PROTOCOL_TLS_SERVER` negotiates),
and `ssl_ciphers` only restricts TLS <= 1.2 suites. The minimum is an attribute of the context,
`SSLContext.minimum_version`. uvicorn >= 0.47 takes `ssl_context_factory(config, default_factory)`:
we let uvicorn build its context as usual (so it keeps its ALPN setup and every other default)
and set `minimum_version = TLSVersion.TLSv1_3` on it. A TLS 1.2-only client then fails the
handshake with a protocol-version alert, before any HTTP is read.

mTLS: `clientCaFile` set -> `ssl_cert_reqs=CERT_REQUIRED` and `ssl_ca_certs=clientCaFile`: a client
without a certificate, or with one no CA of that file signed, fails the handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.config_gateway import GatewayTlsSection
from tasks.errors import ConfigError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_3


def _readable(field: str, path: str) -> str:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"gateway.tls.{field}: {path} is not a readable file")
    return str(p)


def server_context(tls: GatewayTlsSection) -> ssl.SSLContext:
    """The gateway's server-side context, built as uvicorn builds it plus the TLS 1.3 floor.

    Used to check the files before uvicorn starts (a bad cert, key or CA file is a ConfigError
    naming the field), and by anything serving the gateway outside uvicorn.
    """
    if tls.cert_file is None:
        raise ConfigError("gateway.tls.certFile is not set: TLS is off")
    cert = _readable("certFile", tls.cert_file)
    key = _readable("keyFile", tls.key_file) if tls.key_file else None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"gateway.tls: cannot load certFile/keyFile: {exc}") from exc
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(_readable("clientCaFile", tls.client_ca_file))
        except ssl.SSLError as exc:
            raise ConfigError(f"gateway.tls.clientCaFile: not a PEM CA bundle: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = MINIMUM_VERSION
    return ctx


def _tls13_factory(config: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's own context, with TLS 1.3 as the lowest version it will negotiate."""
    ctx = default_factory()
    ctx.minimum_version = MINIMUM_VERSION
    return ctx


def uvicorn_ssl(tls: GatewayTlsSection) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config`: TLS 1.3 minimum, mTLS when clientCaFile is set."""
    if not tls.enabled:
        return {}
    server_context(tls)  # fail now, with the field's name, rather than inside uvicorn's startup
    kwargs: dict[str, Any] = {
        "ssl_certfile": str(Path(str(tls.cert_file)).expanduser()),
        "ssl_keyfile": str(Path(tls.key_file).expanduser()) if tls.key_file else None,
        "ssl_context_factory": _tls13_factory,
    }
    if tls.client_ca_file:
        kwargs["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        kwargs["ssl_ca_certs"] = str(Path(tls.client_ca_file).expanduser())
    return kwargs
