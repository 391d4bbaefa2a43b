"""The outpost's own certificate authority and its registry's certificate.

Docker and the Terraform docker provider pull only over TLS from a registry that is not on
loopback, and an outpost has no public CA within reach, so `init --registry-tls` makes a CA
of its own and signs the registry's certificate with it (docs/registry-tls.md):

    HOME/tls/ca.crt         the CA: install it where Docker and Terraform look for one
    HOME/tls/ca.key         the CA's key (0600): only needed to sign a new registry cert
    HOME/tls/registry.crt   the registry's certificate, for the names and IPs it is reached by
    HOME/tls/registry.key   its key (0600)

Keys are ECDSA P-256. The CA is valid for 10 years, the registry's certificate for 2 (a
bound the TLS clients of today accept for a private CA; make a new one before it ends).
Creating is pure (`create_registry_tls` returns the files' bytes); `write_registry_tls`
writes them, each atomically.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import ConfigError
from .fsutil import atomic_write_bytes
from .units import parse_address

TLS_DIR = "tls"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "registry.crt", "registry.key"
FILES = (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)
SECRET = (CA_KEY, SERVER_KEY)  # written 0600
CA_DAYS = 3650
SERVER_DAYS = 730
DEFAULT_NAMES = ("localhost", "127.0.0.1")
# a DNS name: dot-separated labels of letters, digits and inner hyphens
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def registry_tls_names(registry: str | None, extra: Iterable[str] = ()) -> list[str]:
    """The names the registry's certificate covers: loopback, the host of the configured
    registry address, and `extra`; each checked, without duplicates, in that order."""
    names = [*DEFAULT_NAMES]
    if registry:
        names.append(parse_address(registry)[1])
    names.extend(extra)
    return list(dict.fromkeys(check_tls_name(n) for n in names))


def check_tls_name(name: str) -> str:
    """An IP address (as written) or a DNS name; a ConfigError says what is wrong."""
    name = name.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    labels = name.rstrip(".").split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise ConfigError(f"--tls-name {name!r}: expected a host name or an IP address "
                          "(no port, no scheme)")
    return name.rstrip(".").lower()


def create_registry_tls(common_name: str, names: Sequence[str],
                        now: datetime.datetime | None = None) -> dict[str, bytes]:
    """A new CA and a registry certificate it signs for `names`: file name -> PEM bytes."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{common_name} outpost CA")
    ca_cert = (_builder(ca_name, ca_name, ca_key.public_key(), now, CA_DAYS)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(_usage(ca=True), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(_name(f"{common_name} registry"), ca_name, key.public_key(), now,
                     SERVER_DAYS)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return {CA_CERT: _cert_pem(ca_cert), CA_KEY: _key_pem(ca_key),
            SERVER_CERT: _cert_pem(cert), SERVER_KEY: _key_pem(key)}


def write_registry_tls(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write the files made by `create_registry_tls` into `folder`, keys readable by the
    owner only. Never over existing ones (see refuse_existing)."""
    refuse_existing(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(folder / name, data, mode=0o600 if name in SECRET else 0o644)


def refuse_existing(folder: Path) -> None:
    """A ConfigError if `folder` holds TLS files already: a CA that clients trust must not
    be replaced behind their back."""
    taken = [name for name in FILES if (folder / name).exists()]
    if taken:
        raise ConfigError(f"{folder / taken[0]} exists already: move the old TLS files "
                          "away first (clients that trust the old CA must get the new one)")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey,
             now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    # backdated a little: a client whose clock is slightly behind must not see it "not yet
    # valid" (outposts' clocks drift, see clock_skew)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days)))


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca,
                         content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False,
                         encipher_only=False, decipher_only=False)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
