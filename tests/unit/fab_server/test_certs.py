"""Development certificates: a CA, a server certificate for its hosts, client certificates."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fab_server.certs import LEAF_VALIDITY, make_dev_certs


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_the_server_certificate_names_its_hosts_and_chains_to_the_ca(tmp_path: Path) -> None:
    certs = make_dev_certs(tmp_path / "pki", hosts=("fab.example", "localhost", "10.0.0.7"))
    ca, server = _cert(certs.ca.cert), _cert(certs.server.cert)

    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fab.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert server.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]

    now = datetime.now(UTC)
    assert server.not_valid_before_utc <= now
    assert server.not_valid_after_utc - now == pytest.approx(LEAF_VALIDITY, abs=timedelta(1))
    assert ca.not_valid_after_utc > server.not_valid_after_utc


def test_client_certificates_carry_the_node_id_and_private_keys_are_0600(tmp_path: Path) -> None:
    certs = make_dev_certs(tmp_path, clients=("edge-01", "edge-02"))
    ca = _cert(certs.ca.cert)
    assert sorted(certs.clients) == ["edge-01", "edge-02"]
    for node_id, pair in certs.clients.items():
        cert = _cert(pair.cert)
        cert.verify_directly_issued_by(ca)
        assert _cn(cert) == node_id
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        key = load_pem_private_key(pair.key.read_bytes(), password=None)
        assert key.public_key() == cert.public_key()

    for pair in (certs.ca, certs.server, *certs.clients.values()):
        assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600, pair.key
        assert pair.cert.parent == tmp_path and pair.key.parent == tmp_path


def test_an_existing_ca_is_reused_so_earlier_certificates_stay_valid(tmp_path: Path) -> None:
    first = make_dev_certs(tmp_path, clients=("edge-01",))
    old_client = _cert(first.clients["edge-01"].cert)
    first.server.key.chmod(0o644)  # a rewritten key is tightened again

    second = make_dev_certs(tmp_path, clients=("edge-02",))
    assert second.ca == first.ca
    ca = _cert(second.ca.cert)
    old_client.verify_directly_issued_by(ca)
    _cert(second.clients["edge-02"].cert).verify_directly_issued_by(ca)
    assert stat.S_IMODE(second.server.key.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("hosts", "clients", "field"),
    [
        ((), ("edge-01",), "hosts"),
        (("",), ("edge-01",), "hosts"),
        (("localhost",), ("../escape",), "clients"),
        (("localhost",), ("ca",), "clients"),
        (("localhost",), ("edge-01", "edge-01"), "clients"),
    ],
)
def test_bad_hosts_or_client_ids_are_refused(
    tmp_path: Path, hosts: tuple[str, ...], clients: tuple[str, ...], field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        make_dev_certs(tmp_path / "pki", hosts=hosts, clients=clients)
    assert not (tmp_path / "pki").exists()  # nothing written
