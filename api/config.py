"""Where the CLI finds its server and token: flags, then environment, then a config file.

The file is `$XDG_CONFIG_HOME/hostplane/config.yaml` (default `~/.config/hostplane/`), with
keys `server`, `token` and `ca` (the CA file an https server's certificate is checked against;
absent: the system's trust store), written by `hostplane up` like kind writes a kubeconfig. It holds
a credential, so it is written with mode 0600. This module must never print a token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SERVER = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class CliConfig:
    server: str
    token: str | None
    ca: str | None = None


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.environ.get("HOME") or str(Path.home()), ".config")
    return Path(base) / "hostplane" / "config.yaml"


def load_config_file(path: Path | None = None) -> dict[str, Any]:
    p = path or config_path()
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{p}: cannot read the CLI config: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the CLI config must be a mapping with keys server and token")
    return data


def resolve(server: str | None = None, token: str | None = None, ca: str | None = None) -> CliConfig:
    """Flags win over HOSTPLANE_SERVER/HOSTPLANE_TOKEN/HOSTPLANE_CA, which win over the config file.

    The file's `ca` is used only with the file's own server (a CA is trusted for the server it came with).
    """
    server = server or os.environ.get("HOSTPLANE_SERVER") or None
    token = token or os.environ.get("HOSTPLANE_TOKEN") or None
    ca = ca or os.environ.get("HOSTPLANE_CA") or None
    if server is None or token is None or ca is None:
        data = load_config_file()
        file_server = str(data["server"]) if data.get("server") else None
        if ca is None and data.get("ca") and (server is None or server.rstrip("/") == (file_server or "").rstrip("/")):
            ca = str(data["ca"])
        server = server or file_server
        token = token or (str(data["token"]) if data.get("token") else None)
    return CliConfig(server=(server or DEFAULT_SERVER).rstrip("/"), token=token, ca=ca)


def write_cli_config(server: str, token: str, ca: str | Path | None = None) -> Path:
    """Write the CLI config (server, token, and the CA to trust) with mode 0600; return its path."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        doc: dict[str, str] = {"server": server, "token": token}
        if ca is not None:
            doc["ca"] = str(ca)
        os.write(fd, yaml.safe_dump(doc, sort_keys=False).encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path
