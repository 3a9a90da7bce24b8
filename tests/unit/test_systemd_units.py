"""deploy/systemd: each unit runs a real `hostplane` command with options that exist, and is hardened."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from api.cli import main

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
             "CapabilityBoundingSet=", "SystemCallFilter=@system-service", "RestrictNamespaces=yes",
             "UMask=0077", "Restart=always")


def _exec_start(text: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if ln.startswith("ExecStart="))
    return line.split("=", 1)[1].split()


@pytest.mark.parametrize("unit", ["hostplane-agent.service", "hostplane-api.service",
                                  "hostplane-controllers.service"])
def test_unit_runs_an_existing_command_with_existing_options(unit: str) -> None:
    """The ExecStart subcommand exists and every --option it passes is one that subcommand takes."""
    text = (UNITS / unit).read_text()
    argv = _exec_start(text)
    assert argv[0].endswith("/hostplane")
    cmd = main.get_command(click.Context(main), argv[1])
    assert cmd is not None, argv[1]
    known = {o for p in cmd.params for o in getattr(p, "opts", [])}
    used = {a for a in argv[2:] if a.startswith("--")}
    assert used <= known, used - known
    assert "--etcd-config" in used


@pytest.mark.parametrize("unit", ["hostplane-agent.service", "hostplane-api.service",
                                  "hostplane-controllers.service"])
def test_unit_is_hardened(unit: str) -> None:
    """Each unit has the sandboxing a network daemon should have and runs as a non-root user."""
    lines = set((UNITS / unit).read_text().splitlines())
    missing = [h for h in HARDENING if h not in lines]
    assert not missing, missing
    assert "User=hostplane" in lines
