"""Issue 11, plain HTTP only: HTTPS/WSS beyond loopback, a redirect from http://, and clients that verify.

Tests may only listen on loopback, so they force `tls="on"` on 127.0.0.1; `auto` (the default) is checked to be
off on loopback (127.0.0.2 included) and on for every other listen address.
"""
from __future__ import annotations

import datetime
import io
import ipaddress
import shutil
import ssl
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from middlewared_plugin import midclt
from middlewared_plugin.client import Client, ClientException
from middlewared_plugin.protocol.tls import CERT_FILE, KEY_FILE, certificate_fingerprint
from middlewared_plugin.settings import Settings
from tests.fixtures.server import ADMIN, ADMIN_PASSWORD, TestServer, running_server
from tests.security.raw_http import request

WRONG_PIN = ":".join(["AB"] * 32)


@pytest.fixture
async def tls_server() -> AsyncIterator[TestServer]:
    async with running_server(scheduler_enabled=False, tls="on") as running:
        yield running


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca_and_server_cert(directory: Path, label: str) -> tuple[Path, Path, Path]:
    """A CA and a certificate it signs for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name(f"{label} CA")).issuer_name(_name(f"{label} CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / f"{label}-ca.pem", directory / f"{label}-server.pem", directory / f"{label}-server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


async def run_midclt(*argv: str) -> tuple[int, str, str]:
    ns = midclt.build_parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    code = await midclt.run(ns, midclt.parse_call_args(getattr(ns, "args", [])), out, err)
    return code, out.getvalue(), err.getvalue()


def test_tls_auto_is_off_on_loopback_and_on_beyond_it() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert not Settings(listen_host=host).tls_enabled, host
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "nas.lan"):
        assert Settings(listen_host=host).tls_enabled, host
    assert Settings(listen_host="127.0.0.1", tls="on").tls_enabled
    assert not Settings(listen_host="192.168.1.10", tls="off").tls_enabled
    assert Settings(listen_host="192.168.1.10").page_url == "https://192.168.1.10:8600/"


async def test_a_self_signed_certificate_is_made_once_private_and_pinned_clients_connect(
        tls_server: TestServer) -> None:
    cert, key = tls_server.data_dir / CERT_FILE, tls_server.data_dir / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o600
    pin = tls_server.api.tls_fingerprint
    assert pin is not None and pin == certificate_fingerprint(cert)
    assert tls_server.url.startswith("wss://127.0.0.1:")
    async with Client(tls_server.url, ssl_fingerprint=pin) as client:
        assert await client.login_with_password(ADMIN, ADMIN_PASSWORD)
        assert await client.ping() == "pong"
    await tls_server.restart()
    assert tls_server.api.tls_fingerprint == pin  # kept, not made again
    async with Client(tls_server.url, ssl_fingerprint=pin.replace(":", "").lower()) as client:
        assert await client.ping() == "pong"


async def test_a_wrong_pin_and_an_unknown_certificate_are_refused(tls_server: TestServer) -> None:
    with pytest.raises(ClientException, match="does not match the pinned fingerprint"):
        await Client(tls_server.url, ssl_fingerprint=WRONG_PIN).connect()
    with pytest.raises(ssl.SSLCertVerificationError):
        await Client(tls_server.url).connect()  # verify_ssl by default: no CA vouches for a self-signed cert
    pin = tls_server.api.tls_fingerprint
    for plain in (tls_server.socket_uri, tls_server.url.replace("wss://", "ws://")):
        with pytest.raises(ClientException, match="needs a wss:// URI"):  # a pin never goes without TLS
            await Client(plain, ssl_fingerprint=pin).connect()


async def test_a_ca_file_verifies_the_configured_certificate(tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_server_cert(tmp_path, "ours")
    other_ca, _, _ = make_ca_and_server_cert(tmp_path, "other")
    data_dir = Path(tempfile.mkdtemp(prefix="mwp-"))
    server = await TestServer(data_dir, scheduler_enabled=False, tls="on", tls_cert=cert, tls_key=key).start()
    try:
        assert not (data_dir / CERT_FILE).exists()  # given a certificate, none is made
        async with Client(server.url, ssl_ca_file=ca) as client:
            assert await client.login_with_password(ADMIN, ADMIN_PASSWORD)
        with pytest.raises(ssl.SSLCertVerificationError):
            await Client(server.url, ssl_ca_file=other_ca).connect()
        assert await run_midclt("--uri", server.url, "--ca-file", str(ca), "ping") == (0, "pong\n", "")
    finally:
        await server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def test_midclt_reaches_wss_by_pin_and_refuses_a_wrong_one(tls_server: TestServer) -> None:
    pin = tls_server.api.tls_fingerprint
    assert pin is not None
    code, out, _ = await run_midclt("--uri", tls_server.url, "--fingerprint", pin, "-U", ADMIN, "-P",
                                    ADMIN_PASSWORD, "call", "auth.me")
    assert code == 0 and '"pw_name": "admin"' in out
    code, out, err = await run_midclt("--uri", tls_server.url, "--fingerprint", WRONG_PIN, "ping")
    assert (code, out) == (1, "") and "does not match the pinned fingerprint" in err
    code, _, err = await run_midclt("--uri", tls_server.url, "--fingerprint", "abc", "ping")
    assert code == 1 and "Not a SHA-256 fingerprint" in err


async def test_plain_http_on_the_tls_port_is_redirected_to_https(tls_server: TestServer) -> None:
    answer = await request(tls_server.port, "/some/page?x=1")
    assert answer.status == 307
    assert answer.headers["location"] == f"https://127.0.0.1:{tls_server.port}/some/page?x=1"
    answer = await request(tls_server.port, "/", {"Host": "evil.example/@x"})
    assert answer.status == 400 and "location" not in answer.headers
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    page = await request(tls_server.port, "/", tls=context)
    assert page.status == 200 and b"<!doctype html>" in page.body


async def test_the_unix_socket_stays_plain(tls_server: TestServer) -> None:
    async with Client(tls_server.socket_uri) as client:
        assert (await client.call("auth.me"))["pw_name"] == "root"


async def test_tls_auto_on_a_loopback_address_other_than_127_0_0_1_stays_plain() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="mwp-"))
    server = await TestServer(data_dir, scheduler_enabled=False, listen_host="127.0.0.2").start()
    try:
        assert server.api.tls_fingerprint is None and not (data_dir / CERT_FILE).exists()
        async with Client(f"ws://127.0.0.2:{server.port}/api/current") as client:
            assert await client.ping() == "pong"
    finally:
        await server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
