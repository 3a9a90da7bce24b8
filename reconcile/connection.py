"""How a process reaches etcd: endpoints, the CA that signed etcd's certificate, and its own
client certificate and key (whose common name is its etcd user). There is no plaintext mode.

Given on the command line (`--etcd --etcd-ca --etcd-cert --etcd-key`) or in a TOML file
(`--etcd-config FILE`, relative paths taken from the file's directory):

    endpoints = "127.0.0.1:2379,127.0.0.1:22379"
    ca = "pki/ca.crt"
    cert = "pki/node-hv1.crt"
    key = "pki/node-hv1.key"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from reconcile.pki import PKI, common_name


class EtcdConfigError(ValueError):
    """An etcd connection setting that is missing or unreadable (names the setting)."""


@dataclass(frozen=True)
class EtcdConnection:
    endpoints: tuple[str, ...]
    ca: Path
    cert: Path
    key: Path

    @staticmethod
    def make(endpoints: str | list[str] | tuple[str, ...], *, ca: str | Path, cert: str | Path,
             key: str | Path) -> EtcdConnection:
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        flat = tuple(e.strip().removeprefix("https://") for part in eps for e in part.split(",") if e.strip())
        if not flat:
            raise EtcdConfigError("etcd endpoints: none given")
        for e in flat:
            if e.startswith("http://"):
                raise EtcdConfigError(f"etcd endpoint {e}: plaintext is not supported (TLS only)")
        return EtcdConnection(flat, Path(ca), Path(cert), Path(key))

    @staticmethod
    def for_identity(endpoints: str | list[str] | tuple[str, ...], pki: PKI, identity: str) -> EtcdConnection:
        """The connection of `identity` with certificates from `pki` (issued if missing)."""
        pair = pki.issue(identity)
        return EtcdConnection.make(endpoints, ca=pki.ca_cert, cert=pair.cert, key=pair.key)

    @staticmethod
    def from_file(path: str | Path) -> EtcdConnection:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise EtcdConfigError(f"{p}: {exc}") from exc
        missing = [k for k in ("endpoints", "ca", "cert", "key") if not isinstance(data.get(k), str | list)]
        if missing:
            raise EtcdConfigError(f"{p}: missing or not a string: {', '.join(missing)}")
        base = p.parent
        return EtcdConnection.make(data["endpoints"], ca=base / data["ca"], cert=base / data["cert"],
                                   key=base / data["key"])

    def to_toml(self) -> str:
        return (f'endpoints = "{",".join(self.endpoints)}"\nca = "{self.ca}"\n'
                f'cert = "{self.cert}"\nkey = "{self.key}"\n')

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(CA, certificate, key) PEM bytes; a missing file raises naming the setting."""
        out = []
        for name, path in (("etcd CA", self.ca), ("etcd client certificate", self.cert), ("etcd client key", self.key)):
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                raise EtcdConfigError(f"{name} {path}: {exc.strerror or exc}") from exc
        return out[0], out[1], out[2]

    @property
    def identity(self) -> str:
        return common_name(self.cert)

    def args(self) -> list[str]:
        """The command-line flags that give a child process this connection."""
        return ["--etcd", ",".join(self.endpoints), "--etcd-ca", str(self.ca),
                "--etcd-cert", str(self.cert), "--etcd-key", str(self.key)]
