"""gRPC transport security of the fab server and the cloud's CloudSync: TLS, mutual TLS when a
client CA is configured.

Clients (edge nodes, fab servers) authenticate with client certificates signed by the
server's ``tls_client_ca``; the server proves itself with its ``tls_cert``. Files are read and
checked once, at start-up, so a misconfigured server fails to start with a message naming the
setting instead of failing every handshake later.
"""

from __future__ import annotations

from pathlib import Path

import grpc  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from exc


def _certificates(path: Path, setting: str) -> bytes:
    data = _read(path, setting)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{setting}: {path} holds no PEM certificate") from exc
    return data


def _key_pair(cert: Path, key: Path, *, names: tuple[str, str]) -> tuple[bytes, bytes]:
    cert_setting, key_setting = names
    cert_pem = _certificates(cert, cert_setting)
    key_pem = _read(key, key_setting)
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{key_setting}: {key} holds no unencrypted PEM private key") from exc
    # gRPC would only report a failed handshake; say which file is wrong instead.
    leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    if leaf.public_key() != private.public_key():
        raise ValueError(f"{key_setting}: {key} does not belong to the certificate {cert}")
    return cert_pem, key_pem


def server_credentials(
    *, tls_cert: Path | None, tls_key: Path | None, tls_client_ca: Path | None
) -> grpc.ServerCredentials | None:
    """The gRPC server's TLS credentials, or None for a plaintext (development) server.

    Args:
        tls_cert: the server certificate (PEM); with ``tls_key``, or neither (plaintext).
        tls_key: its private key.
        tls_client_ca: when set, every client must present a certificate this CA signed.

    Raises:
        ValueError: an incomplete configuration, an unreadable file, or a key that does not
            match the certificate (the message names the setting).
    """
    if tls_cert is None and tls_key is None:
        if tls_client_ca is not None:
            raise ValueError("tls_client_ca: client certificates need tls_cert and tls_key too")
        return None
    if tls_cert is None or tls_key is None:
        raise ValueError("tls_cert, tls_key: set both or neither")
    cert_pem, key_pem = _key_pair(tls_cert, tls_key, names=("tls_cert", "tls_key"))
    client_ca = _certificates(tls_client_ca, "tls_client_ca") if tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(
    *, ca: Path, cert: Path | None = None, key: Path | None = None, prefix: str = ""
) -> grpc.ChannelCredentials:
    """TLS credentials of a channel to a server of the platform (an edge node's to its fab, a
    fab's to the cloud, a tool's). Errors name the settings ``{prefix}ca``, ``{prefix}cert``
    and ``{prefix}key`` (``tls_``: the edge's ``tls_ca``, ...).

    Args:
        ca: the CA that signed the server's certificate.
        cert: the client certificate (mutual TLS); with ``key``, or neither.
        key: the client certificate's private key.

    Raises:
        ValueError: only one of ``cert`` and ``key``, an unreadable file, or a mismatched key.
    """
    ca_pem = _certificates(ca, f"{prefix}ca")
    if cert is None and key is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    if cert is None or key is None:
        raise ValueError(f"{prefix}cert, {prefix}key: set both or neither")
    cert_pem, key_pem = _key_pair(cert, key, names=(f"{prefix}cert", f"{prefix}key"))
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
