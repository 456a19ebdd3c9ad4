"""Certificates for every transport: PEM chains from disk, the --dev certificate, fingerprints.

One `CertificateChain` feeds both aioquic (QUIC, WebTransport) and OpenSSL
(HTTPS and WebSocket over TLS), so both sides of ``--bind`` present the same
certificate. With several chains, the TLS server picks one by SNI.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEV_NAMES = ("localhost", "127.0.0.1", "::1")
# Browsers accept serverCertificateHashes only for certificates valid at most 14 days.
DEV_VALIDITY = datetime.timedelta(days=10)


class CertificateError(ValueError):
    """A certificate or key could not be read or does not match."""


@dataclass(frozen=True)
class CertificateChain:
    """A leaf certificate, its intermediates and its private key, all PEM."""

    cert_pem: bytes
    key_pem: bytes
    names: tuple[str, ...] = field(default=())

    def certificates(self) -> list[x509.Certificate]:
        """The chain, leaf first."""
        return x509.load_pem_x509_certificates(self.cert_pem)

    def leaf_der(self) -> bytes:
        return self.certificates()[0].public_bytes(serialization.Encoding.DER)

    def fingerprint(self) -> str:
        """Lowercase hex SHA-256 of the leaf's DER, as serverCertificateHashes wants it."""
        return hashlib.sha256(self.leaf_der()).hexdigest()

    def matches(self, server_name: str) -> bool:
        """Whether the leaf is valid for ``server_name`` (exact or one-label wildcard)."""
        server_name = server_name.lower().rstrip(".")
        for name in self.names:
            if name == server_name:
                return True
            if name.startswith("*.") and server_name.partition(".")[2] == name[2:]:
                return True
        return False


def _leaf_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return tuple(str(a.value).lower() for a in common)
    dns = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def chain_from_pem(cert_pem: bytes, key_pem: bytes) -> CertificateChain:
    """Validate a PEM chain and key (the key must belong to the leaf)."""
    try:
        certs = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as e:
        raise CertificateError(f"no PEM certificate found: {e}") from e
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"unreadable private key (must be unencrypted PEM): {e}") from e
    leaf_public = (
        certs[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    key_public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if leaf_public != key_public:
        raise CertificateError("the private key does not match the first certificate")
    return CertificateChain(cert_pem, key_pem, _leaf_names(certs[0]))


def load_chain(cert_path: str, key_path: str) -> CertificateChain:
    """Read a full-chain PEM file and its key file, with errors that name the file."""
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise CertificateError(f"cannot read {e.filename}: {e.strerror}") from e
    try:
        return chain_from_pem(cert_pem, key_pem)
    except CertificateError as e:
        raise CertificateError(f"{cert_path} / {key_path}: {e}") from e


def generate_dev_chain(now: datetime.datetime | None = None) -> CertificateChain:
    """A fresh ECDSA P-256 self-signed certificate for localhost, valid for 10 days."""
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "moqrelay development")])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in DEV_NAMES[1:]]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + DEV_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return CertificateChain(cert_pem, key_pem, DEV_NAMES)


def select_chain(chains: list[CertificateChain], server_name: str | None) -> CertificateChain:
    """The chain for an SNI name: the first that matches, else the first given."""
    if server_name:
        for chain in chains:
            if chain.matches(server_name):
                return chain
    return chains[0]
