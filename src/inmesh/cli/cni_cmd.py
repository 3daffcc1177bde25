"""The `inmesh cni` sub-commands (wiring only: parse arguments, build settings, call run)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this process's commands to the root app (filled in as the process is built)."""
    del app
