"""OAuth 2.1 for the gateway: client credentials, JWT access tokens, keys, roles and scopes.

docs/security-auth.md describes it for users. The seams the gateway calls:
`verifier.build_token_verifier`, `routes.auth_routes`, `scopes.may_call`, `guard.ScopeGuard`.
"""
