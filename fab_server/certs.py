"""A development certificate authority and the certificates of a fab server and its edge nodes.

For a test bench or a single-machine installation: production fabs issue these from their own
PKI. Keys are EC P-256, written as unencrypted PKCS#8 PEM with mode 0600. The server
certificate names its hosts in subjectAltName (DNS names and IP addresses); an edge node's
client certificate carries the node id as its common name.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = timedelta(days=5 * 365)
LEAF_VALIDITY = timedelta(days=397)  # the longest lifetime browsers accept for a leaf
# Certificates are valid a little before they are made, for clocks that lag the issuer's.
CLOCK_SKEW = timedelta(minutes=5)
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED = {"ca", "server"}


@dataclass(frozen=True)
class CertPair:
    """A PEM certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DevCerts:
    """Where :func:`make_dev_certs` wrote the CA, the server's and the clients' certificates."""

    ca: CertPair
    server: CertPair
    clients: Mapping[str, CertPair]


def _write_private(path: Path, data: bytes) -> None:
    # Created 0600 from the start (no window in which the key is world-readable), and
    # chmod-ed again in case the file existed with wider permissions.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _save(pair: CertPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    _write_private(
        pair.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wafer-platform development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, validity: timedelta
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _load_or_make_ca(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if pair.cert.is_file() and pair.key.is_file():
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{pair.key} is not an EC private key")
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("wafer-platform development CA")
    cert = (
        _builder(name, name, key, CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _save(pair, cert, key)
    return cert, key


def _issue(
    pair: CertPair,
    *,
    common_name: str,
    usage: x509.ObjectIdentifier,
    san: Sequence[x509.GeneralName],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        _builder(_name(common_name), ca_cert.subject, key, LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    _save(pair, builder.sign(ca_key, hashes.SHA256()), key)


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_dev_certs(
    out_dir: Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    clients: Sequence[str] = ("edge-dev",),
) -> DevCerts:
    """Write a development CA, a server certificate and one client certificate per edge node.

    Files in ``out_dir``: ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and
    ``{client}.pem``/``{client}.key``. A CA already in ``out_dir`` is reused, so certificates
    for new edge nodes can be added later without invalidating the existing ones; the server
    and client certificates named are always issued anew.

    Args:
        out_dir: where to write (created if missing).
        hosts: the server's DNS names and IP addresses (subjectAltName); at least one.
        clients: edge node ids, each the common name of a client certificate.

    Returns:
        The paths of everything written.

    Raises:
        ValueError: no host, an empty host, or a client id that is not a plain file name
            (letters, digits, ``.``, ``_``, ``-``; not ``ca`` or ``server``) or is repeated.
    """
    if not hosts or any(not h.strip() for h in hosts):
        raise ValueError(f"hosts: need at least one non-empty host name, got {list(hosts)}")
    for client in clients:
        _check_client(client, "clients")
    if len(set(clients)) != len(clients):
        raise ValueError(f"clients: repeated node ids in {list(clients)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ca = CertPair(out_dir / "ca.pem", out_dir / "ca.key")
    ca_cert, ca_key = _load_or_make_ca(ca)
    server = CertPair(out_dir / "server.pem", out_dir / "server.key")
    _issue(
        server,
        common_name=hosts[0],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[_host_name(h) for h in hosts],
        ca_cert=ca_cert,
        ca_key=ca_key,
    )
    pairs = {client: _issue_client(out_dir, client, ca_cert, ca_key) for client in clients}
    return DevCerts(ca=ca, server=server, clients=pairs)


def _check_client(node_id: str, setting: str) -> None:
    if not _FILE_NAME.match(node_id) or node_id in _RESERVED:
        raise ValueError(f"{setting}: {node_id!r} is not usable as a node id and file name")


def _issue_client(
    out_dir: Path, node_id: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> CertPair:
    pair = CertPair(out_dir / f"{node_id}.pem", out_dir / f"{node_id}.key")
    _issue(
        pair,
        common_name=node_id,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=[],
        ca_cert=ca_cert,
        ca_key=ca_key,
    )
    return pair


def issue_client_cert(out_dir: Path, node_id: str, *, ca: CertPair) -> CertPair:
    """Issue one edge node a client certificate from an existing CA (``wafer-fab nodes add``).

    Writes ``{node_id}.pem`` and ``{node_id}.key`` (mode 0600) in ``out_dir``, replacing a
    previous pair of that node.

    Args:
        out_dir: where to write (created if missing).
        node_id: the certificate's common name; a plain file name as in `make_dev_certs`.
        ca: the CA's certificate and unencrypted private key (from `make_dev_certs`).

    Returns:
        The paths of the certificate and key.

    Raises:
        ValueError: a node id that is not a plain file name, or a CA that cannot be read or
            whose key does not match its certificate.
    """
    _check_client(node_id, "node_id")
    if not (ca.cert.is_file() and ca.key.is_file()):
        raise ValueError(f"CA: {ca.cert} and {ca.key} must both exist")
    try:
        ca_cert, ca_key = _load_or_make_ca(ca)  # both files exist: loads, never makes
    except (ValueError, TypeError) as exc:
        raise ValueError(f"CA: cannot use {ca.cert} with {ca.key}: {exc}") from None
    if ca_cert.public_key() != ca_key.public_key():
        # Certificates signed with another key would fail every handshake: say so now.
        raise ValueError(f"CA: {ca.key} is not the key of {ca.cert}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return _issue_client(out_dir, node_id, ca_cert, ca_key)
