"""A throwaway certificate authority and one server certificate it signs, for tests that serve TLS
on loopback: the simulator behind a council's inspecting firewall (test_proxies_and_tls.py) and a
mail relay that asks for STARTTLS (test_notify.py). The CA's key is kept in memory only."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class LocalCA:
    ca_pem: Path  # the CA certificate: what an officer would put in CA_BUNDLE
    cert_pem: Path  # the server's certificate
    key_pem: Path  # the server's key

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_pem, self.key_pem)
        return context


def subject(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Synthetic Council"),
        ]
    )


def make_local_ca(folder: Path, ca_name: str, server_name: str, also: tuple[str, ...] = ()) -> LocalCA:
    """A CA called ``ca_name``, limited to loopback and ``.test`` names, and a certificate it signs
    for ``server_name`` (its common name), ``also``, ``localhost`` and 127.0.0.1; written to ``folder``."""
    now = datetime.now(timezone.utc) - timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(subject(ca_name))
        .issuer_name(subject(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[
                    x509.DNSName("localhost"),
                    x509.DNSName("test"),
                    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                ],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dict.fromkeys((server_name, *also, "localhost"))]
    names = [n for n in names if n.value != "127.0.0.1"] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(subject(server_name))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    found = LocalCA(folder / "ca.pem", folder / "server-cert.pem", folder / "server-key.pem")
    found.ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    found.cert_pem.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    found.key_pem.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return found
