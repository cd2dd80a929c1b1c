"""Optional TLS on peer connections: a certificate generated per node, listeners and
dialers through Twisted's TLS endpoints, and the certificate fingerprints that the
handshake binds to the node id.

No certificate authority vouches for a peer; the binding does. Each side's HELLO names
the SHA-256 fingerprint of the certificate it presents and its HELLO_ACK signs it with
the node key, so a peer whose presented certificate is not the one its node key signed
(a relay terminating TLS in the middle) is refused. Both sides present a certificate;
either side checks the other's when one was presented. Plain TCP stays the default, and
seed peers never see TLS.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path
from typing import Any, Optional

from OpenSSL import SSL
from twisted.internet import endpoints, ssl

CERT_FILE = "p2p-tls.pem"
TLS_PREFIX = "tls:"  # a --peers entry dialed over TLS: tls:host:port


def _generate_pem() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "archivas-node")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
            + cert.public_bytes(serialization.Encoding.PEM))


def load_or_create_certificate(directory: Optional[str | os.PathLike[str]] = None) -> ssl.PrivateCertificate:
    """The node's certificate and key (`directory/p2p-tls.pem`, mode 0600, made on first
    use); with no directory, one for this process only."""
    if directory is None:
        return ssl.PrivateCertificate.loadPEM(_generate_pem())
    path = Path(directory) / CERT_FILE
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_generate_pem())
    return ssl.PrivateCertificate.loadPEM(path.read_bytes())


class PeerTLSOptions(ssl.CertificateOptions):
    """Presents our certificate, asks for the peer's, and accepts any: the handshake's
    binding (not a CA) decides whom to trust."""

    def getContext(self) -> SSL.Context:
        context = super().getContext()
        context.set_verify(SSL.VERIFY_PEER, lambda connection, cert, errno, depth, ok: True)
        return context


def options(certificate: ssl.PrivateCertificate) -> PeerTLSOptions:
    return PeerTLSOptions(privateKey=certificate.privateKey.original, certificate=certificate.original)


def server_endpoint(reactor: Any, port: int, interface: str, certificate: ssl.PrivateCertificate) -> Any:
    return endpoints.SSL4ServerEndpoint(reactor, port, options(certificate), interface=interface)


def client_endpoint(reactor: Any, host: str, port: int, certificate: ssl.PrivateCertificate,
                    timeout: float = 30) -> Any:
    inner = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.wrapClientTLS(options(certificate), inner)


def _fingerprint(x509: Any) -> Optional[bytes]:
    if x509 is None:
        return None
    from OpenSSL.crypto import FILETYPE_ASN1, dump_certificate

    return hashlib.sha256(dump_certificate(FILETYPE_ASN1, x509)).digest()


def local_fingerprint(transport: Any) -> Optional[bytes]:
    """The fingerprint of the certificate we present on this connection (None: not TLS)."""
    handle = getattr(transport, "getHandle", lambda: None)()
    get = getattr(handle, "get_certificate", None)
    return _fingerprint(get()) if get is not None else None


def peer_fingerprint(transport: Any) -> Optional[bytes]:
    """The fingerprint of the certificate the peer presented (None: not TLS or none)."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        return _fingerprint(get())
    except SSL.Error:
        return None


def is_tls(transport: Any) -> bool:
    handle = getattr(transport, "getHandle", lambda: None)()
    return isinstance(handle, SSL.Connection)
