"""A throwaway CA and a server certificate it signs, made with ``openssl`` for one test run;
the files and accounts of a secured test broker."""

from __future__ import annotations

import base64
import hashlib
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gochat_streams.devstack import BROKER_ADMIN, BrokerSecurity


@dataclass(frozen=True)
class ServerCertificate:
    #: The CA a client trusts.
    ca: Path
    #: The server's certificate chain, leaf first (what GOCHAT_GATEWAY_TLS_CERTFILE names).
    chain: Path
    key: Path
    #: base64(SHA-256(the leaf's SubjectPublicKeyInfo)): what Chromium's
    #: ``--ignore-certificate-errors-spki-list`` pins.
    spki_sha256: str


def _openssl(*args: str, cwd: Path) -> bytes:
    return subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True).stdout


def server_certificate(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ServerCertificate:
    """A CA and a certificate for ``hosts`` (IP addresses and names) signed by it, valid for two days."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=gochat test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={hosts[0]}", cwd=directory)
    names = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    (directory / "server.ext").write_text(
        f"subjectAltName={names}\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=directory)
    chain = directory / "server-chain.pem"
    chain.write_bytes((directory / "server.pem").read_bytes() + (directory / "ca.pem").read_bytes())
    public_key = _openssl("x509", "-in", "server.pem", "-noout", "-pubkey", cwd=directory)
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=public_key, check=True,
                         capture_output=True).stdout
    return ServerCertificate(directory / "ca.pem", chain, directory / "server.key",
                             base64.b64encode(hashlib.sha256(der).digest()).decode())


#: The accounts of a secured test broker besides the admin: one per service (gochat_streams/acls.py
#: names them), an operator, a principal with no ACL at all, and one a test grants a service's
#: ACLs but one.
BROKER_USERS = ("logic", "task", "monitor", "operator", "gateway-gw1", "gateway-gw2", "nobody", "restricted")


def broker_security(directory: Path, users: tuple[str, ...] = BROKER_USERS) -> BrokerSecurity:
    """A secured broker's TLS files (a throwaway CA's certificate for 127.0.0.1 and localhost)
    and a random password for the admin and each of ``users``."""
    cert = server_certificate(directory)
    keystore = directory / "broker-keystore.pem"
    # Kafka's PEM keystore: the PKCS#8 key (openssl 3 writes "BEGIN PRIVATE KEY"), then the chain.
    keystore.write_bytes(cert.key.read_bytes() + cert.chain.read_bytes())
    keystore.chmod(0o600)
    return BrokerSecurity(cert.ca, keystore, {name: secrets.token_urlsafe(18) for name in (BROKER_ADMIN, *users)})
