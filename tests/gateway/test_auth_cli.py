"""`agentful keys`: hash-secret, rotate, list, remove, as a user runs them (real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gateway.auth.passwords import verify_secret
from tasks.config_gateway import SECRET_HASH_PATTERN


def agentful(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        check=False,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_hash_secret() -> None:
    made = agentful("keys", "hash-secret")
    assert made.returncode == 0, made.stderr
    lines = dict(line.split(":", 1) for line in made.stdout.strip().splitlines())
    secret, hashed = lines["secret"].strip(), lines["secretHash"].strip()
    assert SECRET_HASH_PATTERN.match(hashed) and verify_secret(secret, hashed)
    given = agentful("keys", "hash-secret", "--stdin", stdin="my own secret\n")
    assert given.returncode == 0 and verify_secret("my own secret", given.stdout.strip())
    assert agentful("keys", "hash-secret", "--stdin", stdin="\n").returncode == 2


def test_rotate_list_remove(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    config = tmp_path / "c.json"
    config.write_text(
        json.dumps({"gateway": {"auth": {"enabled": True, "keyStore": str(keys), "keyPassphraseEnv": "KP"}}})
    )
    env = {"KP": "a passphrase"}
    first = agentful("keys", "rotate", "-c", str(config), env=env)
    assert first.returncode == 0, first.stderr
    second = agentful("keys", "rotate", "-c", str(config), env=env)
    assert second.returncode == 0 and "retired" in second.stdout, second.stdout
    listing = agentful("keys", "list", "--json", "-c", str(config), env=env)
    rows = json.loads(listing.stdout)["keys"]
    assert [r["state"] for r in rows] == ["verifying", "signing"], rows
    assert all("ENCRYPTED" in p.read_text() for p in keys.glob("*.json"))  # at rest, under the passphrase
    # A kid is base64url: one in 64 starts with '-', which only `--` keeps from being an option.
    gone = agentful("keys", "remove", "-c", str(config), "--", rows[0]["kid"], env=env)
    assert gone.returncode == 0, gone.stderr
    rows = json.loads(agentful("keys", "list", "--json", "-c", str(config), env=env).stdout)["keys"]
    assert [r["state"] for r in rows] == ["signing"]
    missing = agentful("keys", "remove", "no-such-kid", "-c", str(config), env=env)
    assert missing.returncode == 2 and "no key no-such-kid" in missing.stderr
    no_pass = agentful("keys", "rotate", "-c", str(config), env={"KP": ""})
    assert no_pass.returncode == 2 and "KP is not set" in no_pass.stderr


def test_bad_config_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"gateway": {"auth": {"roles": {"r": ["everything"]}}}}))
    out = agentful("keys", "list", "-c", str(config))
    assert out.returncode == 2 and "gateway.auth.roles" in out.stderr
