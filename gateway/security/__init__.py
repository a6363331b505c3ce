"""Transport security and limits of the gateway: TLS 1.3 and mTLS (tls), the per-client rate
limit shared through Redis (ratelimit), the audit log (audit), secrets masked in logs (redact).
docs/security-transport.md says how to switch each on."""
