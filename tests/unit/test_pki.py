"""The PKI: a P-256 CA, client certificates named by identity, a server certificate, 0600 files."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from api.cli import main
from reconcile.pki import PKI, PKIError, check_identity, common_name, identity_for


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_is_p256_and_files_are_private(tmp_path: Path) -> None:
    """init makes an ECDSA P-256 CA; every file is 0600 and the directory 0700."""
    p = PKI(tmp_path / "pki")
    assert p.init() is True
    p.issue("api")
    ca = _load(p.ca_cert)
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert stat.S_IMODE(p.dir.stat().st_mode) == 0o700
    for f in p.dir.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_init_and_issue_reuse_what_exists(tmp_path: Path) -> None:
    """A second init keeps the CA; a second issue keeps the certificate; force replaces it."""
    p = PKI(tmp_path / "pki")
    p.init()
    ca_before = p.ca_cert.read_bytes()
    first = p.issue("controllers").cert.read_bytes()
    assert p.init() is False and p.ca_cert.read_bytes() == ca_before
    assert p.issue("controllers").cert.read_bytes() == first
    assert p.issue("controllers", force=True).cert.read_bytes() != first


def test_client_cert_cn_is_identity_and_signed_by_ca(tmp_path: Path) -> None:
    """A node certificate carries CN node-NAME, client-auth usage only, and verifies against the CA."""
    p = PKI(tmp_path / "pki")
    p.init()
    pair = p.issue(identity_for("node", "hv1"))
    cert = _load(pair.cert)
    assert common_name(pair.cert) == "node-hv1"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(_load(p.ca_cert))


def test_server_cert_sans(tmp_path: Path) -> None:
    """The server certificate names 127.0.0.1, localhost and the given names, for server and client auth."""
    p = PKI(tmp_path / "pki")
    p.init()
    cert = _load(p.server(["cp.example.net", "10.1.2.3"]).cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "cp.example.net"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"),
                                                             ipaddress.ip_address("10.1.2.3")}
    eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert eku == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}


@pytest.mark.parametrize("kind,name", [("node", None), ("node", "Bad_Name"), ("node", "../x"),
                                       ("api", "extra"), ("admin", None), ("operator", "")])
def test_bad_identities_refused(kind: str, name: str | None) -> None:
    """Identity names outside the scheme are refused (no path tricks, no unknown kinds)."""
    with pytest.raises(PKIError):
        identity_for(kind, name)


def test_check_identity_round_trip() -> None:
    """Every identity the scheme makes passes check_identity unchanged."""
    for ident in ("root", "api", "controllers", "fleet", "node-a1", "operator-alice"):
        assert check_identity(ident) == ident


def test_issue_without_ca_is_an_error(tmp_path: Path) -> None:
    """Issuing before init names the missing CA."""
    with pytest.raises(PKIError, match="pki init"):
        PKI(tmp_path / "pki").issue("api")


def test_cli_init_and_issue(tmp_path: Path) -> None:
    """`hostplane pki init` then `pki issue node hv1` writes node-hv1.crt; a bad name exits 2."""
    r = CliRunner()
    out = r.invoke(main, ["pki", "init", "--data-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    out = r.invoke(main, ["pki", "issue", "node", "hv1", "--data-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert common_name(tmp_path / "pki" / "node-hv1.crt") == "node-hv1"
    out = r.invoke(main, ["pki", "issue", "node", "--data-dir", str(tmp_path)])
    assert out.exit_code == 2 and "NAME" in out.output


def test_cli_issues_a_node_endpoint_certificate(tmp_path: Path) -> None:
    """`pki issue node-endpoint hv1 --name 10.0.0.7`: a server certificate with CN node-hv1 and that address."""
    from cryptography import x509

    r = CliRunner()
    assert r.invoke(main, ["pki", "init", "--data-dir", str(tmp_path)]).exit_code == 0
    out = r.invoke(main, ["pki", "issue", "node-endpoint", "hv1", "--name", "10.0.0.7", "--data-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    path = tmp_path / "pki" / "node-hv1-server.crt"
    assert common_name(path) == "node-hv1"
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sans = [str(v) for v in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            .get_values_for_type(x509.IPAddress)]
    assert "10.0.0.7" in sans
    assert r.invoke(main, ["pki", "issue", "node-endpoint", "--data-dir", str(tmp_path)]).exit_code == 2

