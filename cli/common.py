"""What every `agentful` command shares: the consoles, the --config option and the setup that
applies it (cli/main.py and the `agentful keys` commands of gateway/auth/cli.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tasks.errors import ConfigError
from tasks.settings import get_config, get_settings, reset_caches

EXIT_BAD_INPUT = 2  # config, arguments, unknown server or tool

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="JSON config file (else AGENTFUL_CONFIG)", dir_okay=False),
]


def setup(config: Path | None) -> None:
    """Apply CLI options to the environment, then validate settings and config once (exit 2)."""
    if config is not None:
        os.environ["AGENTFUL_CONFIG"] = str(config.resolve())
    reset_caches()
    try:
        get_settings()
        get_config()
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    if get_settings().log_format == "json":  # the CLI's own log records (warnings up) as JSON lines
        from tasks.telemetry.logs import configure

        configure("agentful-cli", fmt="json", level="WARNING")
