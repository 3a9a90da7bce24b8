"""A small PKI for the control plane: one CA, a certificate per identity, server certificates.

Layout under `<data-dir>/pki/` (every file 0600, the directory 0700):

    ca.crt ca.key                 the CA (ECDSA P-256, self-signed, 10 years)
    <identity>.crt <identity>.key a client certificate whose common name is the identity
    server.crt server.key         etcd's and the API's server certificate (SAN 127.0.0.1,
                                  localhost and given names; also valid for client auth,
                                  as etcd members present it to each other)

The identity is the etcd user name (etcd takes it from the CN under `--client-cert-auth`):
`api`, `controllers`, `fleet`, `node-<name>`, `operator-<name>`, and `root` (bootstrap only).
Existing files are reused: `init` and `issue` never replace a certificate that is there, so a
restart keeps the CA and every identity. This module must never talk to etcd.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Identities that are not per-node or per-operator.
FIXED_IDENTITIES = ("root", "api", "controllers", "fleet")
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
CA_DAYS = 3650
CERT_DAYS = 825


class PKIError(Exception):
    """A PKI operation that cannot be done (no CA yet, a bad identity name)."""


def identity_for(kind: str, name: str | None = None) -> str:
    """The identity (certificate CN, etcd user) of `kind` ("api", "node", ...) and `name`."""
    if kind in ("node", "operator"):
        if not name or not _NAME.match(name):
            raise PKIError(f"{kind} needs a NAME of lowercase letters, digits and '-' (got {name!r})")
        return f"{kind}-{name}"
    if name:
        raise PKIError(f"{kind} takes no NAME")
    if kind not in FIXED_IDENTITIES:
        raise PKIError(f"unknown identity kind {kind!r}: one of api, controllers, node NAME, operator NAME")
    return kind


def check_identity(identity: str) -> str:
    """Return `identity` if it is one the PKI issues, else raise PKIError."""
    kind, _, name = identity.partition("-")
    if kind in ("node", "operator") and name:
        return identity_for(kind, name)
    return identity_for(identity)


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` with mode 0600 from the first byte (no window at a wider mode)."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class PKI:
    """The CA and certificates in one directory (`<data-dir>/pki`)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    def pair(self, identity: str) -> CertPair:
        return CertPair(self.dir / f"{identity}.crt", self.dir / f"{identity}.key")

    def exists(self) -> bool:
        return self.ca_cert.exists() and self.ca_key.exists()

    def init(self) -> bool:
        """Create the CA if there is none; True if it was created."""
        if self.exists():
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostplane-ca"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hostplane")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_private(self.ca_key, _key_pem(key))
        write_private(self.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
        return True

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not self.exists():
            raise PKIError(f"no CA in {self.dir}: run `hostplane pki init` first")
        cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{self.ca_key} is not an ECDSA key")
        return cert, key

    def _issue(self, filename: str, common_name: str, *, server_names: list[str] | None) -> CertPair:
        ca, ca_key = self._load_ca()
        pair = CertPair(self.dir / f"{filename}.crt", self.dir / f"{filename}.key")
        key = _new_key()
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
        )
        if server_names is not None:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            sans: list[x509.GeneralName] = []
            for n in dict.fromkeys(["127.0.0.1", "localhost", *server_names]):
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False).sign(ca_key, hashes.SHA256())
        write_private(pair.key, _key_pem(key))
        write_private(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
        return pair

    def issue(self, identity: str, *, force: bool = False) -> CertPair:
        """A client certificate with CN = `identity` (reused if it exists, unless `force`)."""
        check_identity(identity)
        pair = self.pair(identity)
        if pair.cert.exists() and pair.key.exists() and not force:
            return pair
        return self._issue(identity, identity, server_names=None)

    def sign_csr(self, csr_pem: bytes, identity: str) -> bytes:
        """Sign a client CSR for exactly `identity` (its CN must be that, its signature valid);
        nothing else of the CSR is copied. Returns the certificate PEM."""
        check_identity(identity)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PKIError(f"not a PEM certificate request: {exc}") from None
        if not csr.is_signature_valid:
            raise PKIError("the certificate request's signature is not valid")
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if len(cns) != 1 or cns[0].value != identity:
            raise PKIError(f"the certificate request must name CN={identity}")
        key = csr.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise PKIError("the certificate request's key must be ECDSA P-256")
        ca, ca_key = self._load_ca()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
            .issuer_name(ca.subject).public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def node_server(self, node: str, names: list[str] | tuple[str, ...] = (), *, force: bool = False) -> CertPair:
        """A node endpoint's server certificate: CN `node-<node>` (the API checks it), SAN 127.0.0.1,
        localhost and `names`; reused if it exists."""
        identity = identity_for("node", node)
        pair = CertPair(self.dir / f"{identity}-server.crt", self.dir / f"{identity}-server.key")
        if pair.cert.exists() and pair.key.exists() and not force:
            return pair
        return self._issue(f"{identity}-server", identity, server_names=list(names))

    def server(self, names: list[str] | tuple[str, ...] = (), *, force: bool = False) -> CertPair:
        """The server certificate (SAN 127.0.0.1, localhost and `names`); reused if it exists."""
        pair = CertPair(self.dir / "server.crt", self.dir / "server.key")
        if pair.cert.exists() and pair.key.exists() and not force:
            return pair
        return self._issue("server", "hostplane-server", server_names=list(names))


def ca_hash(ca_pem: bytes) -> str:
    """`sha256:<hex>` of a CA certificate's DER: what a joining node pins before it trusts a server."""
    import hashlib

    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def new_key_and_csr(identity: str) -> tuple[bytes, bytes]:
    """(private key PEM, CSR PEM) with CN = identity: made where the key stays."""
    key = _new_key()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
           .sign(key, hashes.SHA256()))
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def common_name(cert_path: str | Path) -> str:
    """The CN of a PEM certificate (the identity it carries)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""
