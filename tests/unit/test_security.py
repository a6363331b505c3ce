"""Pure logic of the transport security: broker TLS URLs, signing settings, the gateway's TLS
arguments, the rate limit's client key, secret masking and the audit line."""

from __future__ import annotations

import json
import logging
import os
import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme
from pydantic import SecretStr, ValidationError

from gateway.security import audit
from gateway.security.ratelimit import Decision, client_key
from gateway.security.redact import RedactFilter, redact
from gateway.security.tls import MINIMUM_VERSION, _tls13_factory, server_context, uvicorn_ssl
from tasks.config_file import ConfigFile, load_config_file
from tasks.config_gateway import GatewayAuditSection, GatewayRateLimitSection, GatewayTlsSection
from tasks.errors import ConfigError
from tasks.settings import Settings, with_redis_tls


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("AGENTFUL_"):
            monkeypatch.delenv(key)


# --- broker TLS -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "settings", "expected"),
    [
        ("redis://h:6379/0", {"broker_ca": Path("/ca.pem")}, "redis://h:6379/0"),
        ("amqp://g:g@h//", {"broker_ca": Path("/ca.pem")}, "amqp://g:g@h//"),
        ("rediss://h:6380/0", {}, "rediss://h:6380/0?ssl_cert_reqs=required"),
        (
            "rediss://h:6380/0",
            {"broker_ca": Path("/etc/ca.pem")},
            "rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
        ),
        (
            "rediss://:pw@h:6380/1",
            {"broker_ca": Path("/a b.pem"), "broker_cert": Path("/c.pem"), "broker_key": Path("/k.pem")},
            "rediss://:pw@h:6380/1?ssl_cert_reqs=required&ssl_ca_certs=/a%20b.pem"
            "&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
        ),
        # What the URL already says wins.
        (
            "rediss://h/0?ssl_cert_reqs=none&ssl_ca_certs=/mine.pem",
            {"broker_ca": Path("/env.pem")},
            "rediss://h/0?ssl_cert_reqs=none&ssl_ca_certs=/mine.pem",
        ),
    ],
)
def test_rediss_urls_carry_the_tls_settings(url: str, settings: dict[str, Any], expected: str) -> None:
    assert with_redis_tls(url, Settings.model_validate(settings)) == expected


def test_broker_cert_needs_its_key() -> None:
    with pytest.raises(ValidationError, match="AGENTFUL_BROKER_CERT and AGENTFUL_BROKER_KEY"):
        Settings(broker_cert=Path("/c.pem"))


# --- message signing settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        {"signing_key": Path("/k")},
        {"signing_key": Path("/k"), "signing_cert": Path("/c")},
        {"signing_cert_store": Path("/s")},
    ],
)
def test_signing_needs_key_cert_and_store(given: dict[str, Path]) -> None:
    with pytest.raises(ValidationError, match="message signing needs"):
        Settings.model_validate(given)


def test_signing_on_with_all_three() -> None:
    s = Settings(signing_key=Path("/k"), signing_cert=Path("/c"), signing_cert_store=Path("/s"))
    assert s.signing_enabled
    assert not Settings().signing_enabled


def test_signing_key_password_is_not_shown() -> None:
    s = Settings(
        signing_key=Path("/k"),
        signing_cert=Path("/c"),
        signing_cert_store=Path("/s"),
        signing_key_password=SecretStr("pw9"),
    )
    assert "pw9" not in repr(s) and "pw9" not in str(s.model_dump())


# --- config sections --------------------------------------------------------------------------


def test_gateway_security_sections_from_json() -> None:
    config = ConfigFile.model_validate(
        {
            "gateway": {
                "tls": {"certFile": "/c.pem", "keyFile": "/k.pem", "clientCaFile": "/ca.pem"},
                "rateLimit": {"enabled": True, "rate": 5, "burst": 10, "redisUrl": "redis://h/3"},
                "audit": {"path": "/var/log/a.jsonl"},
            }
        }
    )
    assert config.gateway.tls.enabled and config.gateway.tls.client_ca_file == "/ca.pem"
    assert config.gateway.rate_limit.rate == 5 and config.gateway.rate_limit.burst == 10
    assert config.gateway.audit.path == "/var/log/a.jsonl" and config.gateway.audit.enabled


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ({"tls": {"clientCaFile": "/ca.pem"}}, "need certFile"),
        ({"tls": {"certfile": "/c.pem"}}, "certfile"),
        ({"rateLimit": {"rate": 0}}, "rate"),
        ({"rateLimit": {"burst": 0}}, "burst"),
        ({"rateLimit": {"rate": "inf"}}, "rate"),
        ({"rateLimit": {"redisUrl": "http://user:hunter2@h"}}, "not scheme 'http'"),
    ],
)
def test_bad_gateway_security_sections(section: dict[str, Any], fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"gateway": section}))
    with pytest.raises(ConfigError, match=fragment) as caught:
        load_config_file(path)
    assert "gateway." in str(caught.value) and "hunter2" not in str(caught.value)


# --- gateway TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    paths = {"ca": tmp / "ca.pem", "cert": tmp / "cert.pem", "key": tmp / "key.pem", "junk": tmp / "junk.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    leaf.private_key_pem.write_to_path(str(paths["key"]))
    paths["junk"].write_text("not a certificate\n")
    return paths


def test_no_certificate_no_tls() -> None:
    assert uvicorn_ssl(GatewayTlsSection()) == {}


def test_uvicorn_arguments_force_tls13(pki: dict[str, Path]) -> None:
    kwargs = uvicorn_ssl(GatewayTlsSection(cert_file=str(pki["cert"]), key_file=str(pki["key"])))
    assert kwargs["ssl_certfile"] == str(pki["cert"]) and kwargs["ssl_keyfile"] == str(pki["key"])
    assert "ssl_cert_reqs" not in kwargs
    made = _tls13_factory(None, lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert made.minimum_version == MINIMUM_VERSION == ssl.TLSVersion.TLSv1_3


def test_uvicorn_arguments_for_mtls(pki: dict[str, Path]) -> None:
    section = GatewayTlsSection(
        cert_file=str(pki["cert"]), key_file=str(pki["key"]), client_ca_file=str(pki["ca"])
    )
    kwargs = uvicorn_ssl(section)
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED and kwargs["ssl_ca_certs"] == str(pki["ca"])
    ctx = server_context(section)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"cert_file": "/nonexistent/cert.pem"}, "certFile: /nonexistent/cert.pem is not a readable file"),
        ({"cert_file": "junk"}, "cannot load certFile/keyFile"),
        ({"cert_file": "cert", "key_file": "/nonexistent/k.pem"}, "keyFile"),
        ({"cert_file": "cert", "key_file": "key", "client_ca_file": "junk"}, "clientCaFile"),
    ],
)
def test_bad_tls_files_are_config_errors(pki: dict[str, Path], fields: dict[str, str], fragment: str) -> None:
    resolved = {k: str(pki[v]) if v in pki else v for k, v in fields.items()}
    with pytest.raises(ConfigError, match=fragment):
        uvicorn_ssl(GatewayTlsSection(**resolved))


# --- rate limit: whose bucket -----------------------------------------------------------------


def test_client_key_is_the_token_client_else_the_peer() -> None:
    user = SimpleNamespace(access_token=SimpleNamespace(client_id="ci-bot"), is_authenticated=True)
    assert client_key({"type": "http", "user": user, "client": ("10.0.0.1", 5)}) == "client:ci-bot"
    anonymous = SimpleNamespace(is_authenticated=False)
    assert client_key({"type": "http", "user": anonymous, "client": ("10.0.0.1", 5)}) == "peer:10.0.0.1"
    assert client_key({"type": "http", "client": ("::1", 5)}) == "peer:::1"
    assert client_key({"type": "http"}) == "peer:unknown"


@pytest.mark.parametrize(
    ("wait_s", "header"), [(0.0, "1"), (0.01, "1"), (1.0, "1"), (1.2, "2"), (30.5, "31")]
)
def test_retry_after_is_whole_seconds_at_least_one(wait_s: float, header: str) -> None:
    assert Decision(False, 0.0, wait_s).retry_after_header == header


def test_rate_limit_defaults() -> None:
    section = GatewayRateLimitSection()
    assert not section.enabled and section.rate > 0 and section.burst >= 1 and section.fail_open


# --- secrets never logged ---------------------------------------------------------------------

JWT = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJjaS1ib3QifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Authorization: Bearer {JWT}", JWT),
        ("Authorization: Basic Y2ktYm90Omh1bnRlcjI=", "Y2ktYm90Omh1bnRlcjI="),
        (f"token {JWT} rejected", JWT),
        ("grant_type=client_credentials&client_secret=hunter2", "hunter2"),
        ('{"client_secret": "hunter2", "x": 1}', "hunter2"),
        ("GET /mcp?access_token=abc123xyz HTTP/1.1", "abc123xyz"),
        ("broker rediss://agent:s3cr3t@broker:6380/0 down", "s3cr3t"),
        ("password=pa55word", "pa55word"),
    ],
)
def test_redact_masks_secrets(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned and "***" in cleaned


def test_redact_keeps_plain_text() -> None:
    line = "tools/call git__git_status by ci-bot: ok in 12.3 ms (task 4bf92f35)"
    assert redact(line) == line


def test_redact_filter_masks_args_and_exceptions() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "header %s", (f"Bearer {JWT}",), None)
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    RedactFilter().filter(record)
    formatted = logging.Formatter().format(record)
    assert JWT not in formatted and "Bearer ***" in formatted and "ValueError" in formatted


# --- the audit line ---------------------------------------------------------------------------


def test_audit_line_fields(tmp_path: Path) -> None:
    path = audit.configure(GatewayAuditSection(path=str(tmp_path / "a" / "audit.jsonl")), tmp_path)
    try:
        assert path == tmp_path / "a" / "audit.jsonl"
        audit.record("ci-bot", "git", "git_status", "ok", 12.34567, "t-1")
        audit.record(None, "git", "git_log", "failed", 3, "t-2", error=ConnectionError(f"Bearer {JWT}"))
    finally:
        audit.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {
        "event": "tools/call",
        "client_id": "ci-bot",
        "server": "git",
        "tool": "git_status",
        "outcome": "ok",
        "ok": True,
        "duration_ms": 12.346,
        "trace_id": "t-1",
        "ts": lines[0]["ts"],
    }
    assert lines[0]["ts"].endswith("+00:00")
    assert lines[1]["client_id"] == "anonymous" and lines[1]["ok"] is False
    assert lines[1]["error"] == "ConnectionError"  # the class only: messages may quote secrets
    assert JWT not in path.read_text()


def test_audit_default_path_and_off(tmp_path: Path) -> None:
    assert audit.audit_path(GatewayAuditSection(), tmp_path) == tmp_path / "logs" / "audit.jsonl"
    assert audit.configure(GatewayAuditSection(enabled=False), tmp_path) is None
    audit.record("x", "s", "t", "ok", 1.0)  # off: a no-op, no file
    assert not (tmp_path / "logs").exists()
