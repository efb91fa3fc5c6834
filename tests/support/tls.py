"""A throwaway certificate authority and certificates it issues (servers for 127.0.0.1 and
localhost, clients for mTLS), made with `cryptography`, for TLS tests against real servers.
Valid under Python 3.13's strict verification (VERIFY_X509_STRICT, on by default): key usage on
the CA, key identifiers."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServerCertificate:
    ca_cert: Path
    cert: Path
    key: Path


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    """A CA that issues as many certificates as a test needs (a renewed server certificate,
    client certificates); its certificate is at `cert`."""

    def __init__(self, directory: Path, name: str = "gateway test CA",
                 parent: CertificateAuthority | None = None) -> None:
        """`parent`: an intermediate CA that CA signs (its certificates' files then hold the
        chain: the certificate, then this CA's)."""
        self.directory = directory
        self.parent = parent
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(parent.certificate.subject if parent else _name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False))
        if parent is not None:
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                parent.key.public_key()), critical=False)
        self.certificate = builder.sign(parent.key if parent else self.key, hashes.SHA256())
        self.cert = directory / f"{name.replace(' ', '-')}.pem"
        self.cert.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def _issue(self, subject: x509.Name, extensions: list[x509.ExtensionType],
               cert_path: Path, key_path: Path) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(subject).issuer_name(self.certificate.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a certificate its CA
                   # issued must name that CA's key.
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), critical=False))
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        # PEM with the chain after the certificate (an intermediate's), as servers take it.
        chain = b"" if self.parent is None else self.certificate.public_bytes(
            serialization.Encoding.PEM)
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM) + chain)
        key_path.write_bytes(_pem_key(key))
        return certificate

    def issue_server(self, cert_path: Path, key_path: Path, common_name: str = "localhost",
                     dns_names: tuple[str, ...] = ("localhost",),
                     addresses: tuple[str, ...] = ("127.0.0.1",)) -> x509.Certificate:
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
        return self._issue(_name(common_name), [x509.SubjectAlternativeName(names)],
                           cert_path, key_path)

    def issue_client(self, cert_path: Path, key_path: Path, common_name: str,
                     organization: str | None = None) -> x509.Certificate:
        return self._issue(_name(common_name, organization),
                           [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])],
                           cert_path, key_path)


def make_server_certificate(directory: Path) -> ServerCertificate:
    ca = CertificateAuthority(directory)
    paths = ServerCertificate(directory / "ca.pem", directory / "server.pem",
                              directory / "server.key")
    paths.ca_cert.write_bytes(ca.cert.read_bytes())
    ca.issue_server(paths.cert, paths.key)
    return paths
