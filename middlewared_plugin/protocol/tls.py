"""TLS for the TCP listener: the server's context, its self-signed certificate, and certificate fingerprints.

Without `--tls-cert`/`--tls-key` the server makes a self-signed certificate on first start (`tls.crt`, `tls.key`
in the data dir, both 0600) and keeps it; delete both files to make a new one. Clients that cannot verify it
against a CA pin it by its SHA-256 fingerprint, which the server prints and logs at every start.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import ssl
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CERT_DAYS = 3650


def fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate as `AB:CD:...`, the form `openssl x509 -fingerprint -sha256` prints."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def normalize_fingerprint(text: str) -> str:
    """Accept `AB:CD:...`, `abcd...` or `sha256:...`; return 64 lowercase hex digits or raise ValueError."""
    digits = re.sub(r"[\s:]", "", text.lower().removeprefix("sha256:").removeprefix("sha256="))
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError(f"Not a SHA-256 fingerprint: {text!r}")
    return digits


def certificate_fingerprint(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # also when the file existed with a wider mode
        f.write(data)


def ensure_self_signed(directory: Path, names: Iterable[str], addresses: Iterable[str]) -> tuple[Path, Path]:
    """The certificate and key in `directory`, made (self-signed, valid for `names` and `addresses`) if
    missing. Blocking: call it in a thread."""
    cert_file, key_file = directory / CERT_FILE, directory / KEY_FILE
    if cert_file.exists() and key_file.exists():
        return cert_file, key_file
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    dns = sorted({n for n in names if n})
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(set(addresses))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else "middlewared-plugin")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    _write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return cert_file, key_file


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context
