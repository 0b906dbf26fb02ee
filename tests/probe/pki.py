"""Broker certificates the shared test PKI (hil/mosquitto.py) has none of: one for another host
name, one that has expired, each signed by a CA made here (``own_ca``), so that only the name or
the dates are wrong."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil.mosquitto import ca_certificate


def server_certificate(
    directory: Path,
    stem: str,
    *,
    ca_cert: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    dns_names: tuple[str, ...],
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> tuple[Path, Path]:
    """(certificate, key) PEM files for a server with ``dns_names``, valid in that window."""
    issuer = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path = directory / f"{stem}.pem"
    key_path = directory / f"{stem}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def own_ca(directory: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """A CA and its key (the shared PKI does not keep its CA's key)."""
    now = dt.datetime.now(dt.UTC)
    certificate, key = ca_certificate(
        "probe test CA",
        not_before=now - dt.timedelta(days=30),
        not_after=now + dt.timedelta(days=30),
    )
    path = directory / "probe-ca.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path, key
