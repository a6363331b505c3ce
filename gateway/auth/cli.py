"""`agentful keys`: client secret hashes and the gateway's signing keys."""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import ConfigOpt, console, err
from cli.common import setup as _setup
from tasks.errors import ConfigError
from tasks.settings import get_config, get_settings

keys_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Client secret hashes and the gateway's signing keys."
)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@keys_app.command("hash-secret")
def hash_secret_cmd(
    stdin: Annotated[bool, typer.Option("--stdin", help="hash the secret read from stdin")] = False,
) -> None:
    """Make a client secret (or read one, or a user's password, from stdin) and print its hash
    for `secretHash` (clients) or `passwordHash` (users)."""
    from gateway.auth.passwords import hash_secret, new_secret

    if stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            err.print("[red]error:[/] empty secret on stdin")
            raise typer.Exit(2)
        print(hash_secret(secret))
        return
    secret = new_secret()
    print(f"secret:     {secret}")
    print(f"secretHash: {hash_secret(secret)}")
    err.print("Give the secret to the client; put only the hash in the config file.")


@keys_app.command("rotate")
def rotate_cmd(config: ConfigOpt = None) -> None:
    """Make a new signing key now; the previous one verifies until its tokens expire."""
    _setup(config)
    from gateway.auth.rotation import rotate_now

    try:
        done = rotate_now(force=True)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    except Exception as exc:  # the store: Redis down, a directory not writable
        err.print(f"[red]error:[/] cannot rotate the keys: {type(exc).__name__}: {exc}")
        raise typer.Exit(3) from None
    console.print(f"new signing key {done['new']} in {done['store']}")
    for kid in done["retired"]:
        console.print(f"retired {kid} (verifies until its tokens expire)")
    for kid in done["removed"]:
        console.print(f"removed {kid}")


@keys_app.command("list")
def list_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False, config: ConfigOpt = None
) -> None:
    """The signing keys: which signs, which still verify and until when."""
    _setup(config)
    from gateway.auth.keys import open_key_store, signing_key_of

    auth = get_config().gateway.auth
    store = open_key_store(auth, get_settings())
    try:
        keys = sorted(store.load(), key=lambda k: k.created)
    except Exception as exc:
        err.print(f"[red]error:[/] cannot read keys from {store.where}: {exc}")
        raise typer.Exit(3) from None
    signing = signing_key_of(keys)
    now = time.time()
    rows: list[dict[str, Any]] = []
    for k in keys:
        until = k.verify_until(auth.token_ttl, auth.leeway_s)
        state = (
            "signing"
            if signing is not None and k.kid == signing.kid
            else ("verifying" if until is None or now < until else "expired")
        )
        rows.append({"kid": k.kid, "alg": k.alg, "created": k.created, "state": state, "verify_until": until})
    if as_json:
        print(json.dumps({"store": store.where, "keys": rows}))
        return
    table = Table("kid", "alg", "created", "state", "verifies until", title=f"signing keys in {store.where}")
    for r in rows:
        until = r["verify_until"]
        table.add_row(r["kid"], r["alg"], _when(r["created"]), r["state"], _when(until) if until else "-")
    console.print(table)


@keys_app.command("remove")
def remove_cmd(kid: str, config: ConfigOpt = None) -> None:
    """Remove a key at once (a leaked key): tokens it signed are refused within seconds. A kid
    that starts with '-' goes after `--`: agentful keys remove -- -uQ2..."""
    _setup(config)
    from gateway.auth.keys import open_key_store

    store = open_key_store(get_config().gateway.auth, get_settings())
    try:
        with store.lock():
            removed = store.remove(kid)
    except Exception as exc:  # the store: Redis down, a directory not writable
        err.print(f"[red]error:[/] cannot reach the keys in {store.where}: {type(exc).__name__}: {exc}")
        raise typer.Exit(3) from None
    if not removed:
        err.print(f"[red]error:[/] no key {kid} in {store.where}")
        raise typer.Exit(2)
    console.print(f"removed {kid}; a new signing key is made on the next token if it was the signing one")
