"""
TLS for the RPC channel between cluster nodes.

The certificate only has to be checked by name when C{rpc-tls-domain} is
set; otherwise any certificate is accepted and the RPC key handshake (which
is bound to the TLS session) is what authenticates a peer. So a node without
a configured pair generates a self-signed one once and keeps it in its data
folder.
"""

import datetime
import os
from typing import NamedTuple, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL.crypto import X509, PKey
from twisted.internet.ssl import (
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
)

SELF_SIGNED_NAME = "stalwart-tw-rpc"
SELF_SIGNED_CERT = "rpc.crt"
SELF_SIGNED_KEY = "rpc.key"
# Nothing renews a self-signed pair, so it must outlive the cluster.
SELF_SIGNED_DAYS = 100 * 365
# TLS 1.3 only: its exporter is unique to the session, which the key
# handshake's binding relies on (TLS 1.2 without extended master secret
# lets a man in the middle give two sessions one master secret).
MINIMUM_TLS = TLSVersion.TLSv1_3


class RpcTls(NamedTuple):
    """
    The two sides of RPC TLS.

    @ivar server: context factory for C{listenSSL}/C{SSL4ServerEndpoint}.
    @ivar client: context factory or connection creator for C{connectSSL}/
        C{SSL4ClientEndpoint}.
    """

    server: CertificateOptions
    client: object


def rpc_tls(settings, db_path: Optional[str] = None, trust_root=None) -> RpcTls:
    """
    Build the server and client TLS options of a node.

    @param settings: the node's settings (C{rpc_cert_path}, C{rpc_key_path},
        C{rpc_tls_domain}).
    @param db_path: folder of the self-signed pair; C{settings.db_path} when
        C{None}.
    @param trust_root: what verifies peers when C{rpc_tls_domain} is set;
        the platform's CAs when C{None}.
    """
    cert_path, key_path = settings.rpc_cert_path, settings.rpc_key_path
    if cert_path is None or key_path is None:
        cert_path, key_path = self_signed_pair(db_path or settings.db_path)
    server = server_options(cert_path, key_path)
    domain = settings.rpc_tls_domain
    if domain:
        client = optionsForClientTLS(
            domain,
            trustRoot=trust_root if trust_root is not None else platformTrust(),
            extraCertificateOptions={"raiseMinimumTo": MINIMUM_TLS},
        )
    else:
        client = CertificateOptions(verify=False, raiseMinimumTo=MINIMUM_TLS)
    return RpcTls(server, client)


def server_options(cert_path: str, key_path: str) -> CertificateOptions:
    """
    Server options from a PEM certificate file (leaf first, then any
    intermediates) and a PEM key file.
    """
    with open(cert_path, "rb") as cert_file:
        chain = x509.load_pem_x509_certificates(cert_file.read())
    with open(key_path, "rb") as key_file:
        key = serialization.load_pem_private_key(key_file.read(), password=None)
    return CertificateOptions(
        privateKey=PKey.from_cryptography_key(key),
        certificate=X509.from_cryptography(chain[0]),
        extraCertChain=[X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=MINIMUM_TLS,
    )


def self_signed_pair(folder: str) -> tuple:
    """
    The paths of the node's self-signed pair in C{folder}, generated on the
    first call and reused afterwards.

    @return: C{(cert_path, key_path)}
    """
    cert_path = os.path.join(folder, SELF_SIGNED_CERT)
    key_path = os.path.join(folder, SELF_SIGNED_KEY)
    # The certificate is written last, so its presence means a whole pair.
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    os.makedirs(folder, exist_ok=True)
    cert_pem, key_pem = generate_self_signed(SELF_SIGNED_NAME)
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def generate_self_signed(name: str, days: int = SELF_SIGNED_DAYS) -> tuple:
    """
    A self-signed EC P-256 certificate for C{name} (CN and DNS SAN).

    @return: C{(cert_pem, key_pem)} as bytes.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    # Created with its final mode, so the key is never readable by others,
    # and renamed into place, so a crash leaves no half-written file.
    temporary = path + ".tmp"
    if os.path.exists(temporary):
        os.unlink(temporary)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
