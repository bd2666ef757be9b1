"""A local certificate authority and a C2PA signing certificate, and the checks a signing chain must pass.

C2PA signers need an X.509 v3 end-entity certificate issued by a CA (the C2PA trust model does not accept a
self-signed signer): Key Usage marked critical with digitalSignature, a non-empty Extended Key Usage with
id-kp-emailProtection or id-kp-documentSigning and without anyExtendedKeyUsage, CA:false, and an Authority Key
Identifier naming its issuer (C2PA Technical Specification 2.1, "Trust Model", certificate profile; the CAI's
"Signing manifests" guide). `provenance init` makes such a pair with a P-256 key for ES256 signatures.

Needs the `sign` extra (cryptography), imported only here.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from ..errors import ConfigError
from ..files import atomic_folder

SIGNER_CERT = "signer.pem"  # the signing certificate followed by its CA's: the chain a manifest embeds
SIGNER_KEY = "signer.key"
CA_CERT = "ca.pem"  # give this to whoever verifies: `instantid-edge verify --trust ca.pem`
CA_KEY = "ca.key"  # only needed to issue another signer: keep it offline

DOCUMENT_SIGNING = "1.3.6.1.5.5.7.3.36"


SIGN_EXTRA = "pip install 'instantid-edge[sign]'"


def _crypto():
    try:
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID
    except ModuleNotFoundError as exc:
        raise ConfigError(f"signing needs the sign extra (c2pa-python, cryptography): {SIGN_EXTRA}") from exc
    return SimpleNamespace(x509=x509, InvalidSignature=InvalidSignature, hashes=hashes, serialization=serialization,
                           ec=ec, eku=ExtendedKeyUsageOID, ext=ExtensionOID, name=NameOID)  # fmt: skip


def _issued_by(cert, issuer, crypto) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (crypto.InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Authority:
    folder: Path
    ca_cert: Path
    signer_cert: Path
    signer_key: Path


def _key_usage(x509, *, signing: bool):
    return x509.KeyUsage(digital_signature=signing, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=not signing,
                         crl_sign=not signing, encipher_only=False, decipher_only=False)  # fmt: skip


def make_authority(folder: str | Path, organisation: str, days: int = 825) -> Authority:
    """Write a new CA and a signer it issued into `folder` (which must be new or empty), private keys 0600."""
    crypto = _crypto()
    x509, hashes, serialization, ec = crypto.x509, crypto.hashes, crypto.serialization, crypto.ec
    if not organisation.strip():
        raise ConfigError("the organisation name must not be empty")
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(common: str):
        return x509.Name([x509.NameAttribute(crypto.name.COMMON_NAME, common),
                          x509.NameAttribute(crypto.name.ORGANIZATION_NAME, organisation)])  # fmt: skip

    ca_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name(f"{organisation} provenance CA"))
        .issuer_name(name(f"{organisation} provenance CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2 * days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(x509, signing=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    signer = (
        x509.CertificateBuilder()
        .subject_name(name(f"{organisation} image signer"))
        .issuer_name(ca.subject)
        .public_key(signer_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(x509, signing=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([crypto.eku.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM

    def private(key) -> bytes:
        return key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    folder = Path(folder)
    with atomic_folder(folder) as work:
        (work / CA_CERT).write_bytes(ca.public_bytes(pem))
        (work / SIGNER_CERT).write_bytes(signer.public_bytes(pem) + ca.public_bytes(pem))
        for filename, key in ((CA_KEY, ca_key), (SIGNER_KEY, signer_key)):
            (work / filename).touch(mode=0o600)
            (work / filename).write_bytes(private(key))
    return Authority(folder, folder / CA_CERT, folder / SIGNER_CERT, folder / SIGNER_KEY)


def check_signing_chain(chain_pem: bytes, source: str) -> None:
    """Refuse a chain C2PA validators would reject, with the reason; `source` names it in messages."""
    crypto = _crypto()
    try:
        chain = crypto.x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise ConfigError(f"{source} holds no PEM certificate ({exc})") from exc
    leaf = chain[0]
    if leaf.issuer == leaf.subject and _issued_by(leaf, leaf, crypto):
        raise ConfigError(
            f"{source}: the signing certificate is self-signed; C2PA requires one issued by a CA. "
            "Make a CA and a signer with: instantid-edge provenance init DIR"
        )
    problems = []
    extensions = {ext.oid: ext for ext in leaf.extensions}
    ExtensionOID = crypto.ext  # noqa: N806
    basic = extensions.get(ExtensionOID.BASIC_CONSTRAINTS)
    if basic is not None and basic.value.ca:
        problems.append("it is a CA certificate (CA:true), not a signer")
    usage = extensions.get(ExtensionOID.KEY_USAGE)
    if usage is None or not usage.critical or not usage.value.digital_signature:
        problems.append("Key Usage must be critical and include digitalSignature")
    extended = extensions.get(ExtensionOID.EXTENDED_KEY_USAGE)
    purposes = {p.dotted_string for p in extended.value} if extended is not None else set()
    if not purposes & {crypto.eku.EMAIL_PROTECTION.dotted_string, DOCUMENT_SIGNING}:
        problems.append("Extended Key Usage must include emailProtection or documentSigning")
    if "2.5.29.37.0" in purposes:
        problems.append("Extended Key Usage must not include anyExtendedKeyUsage")
    if ExtensionOID.AUTHORITY_KEY_IDENTIFIER not in extensions:
        problems.append("the Authority Key Identifier extension is missing")
    now = datetime.datetime.now(datetime.timezone.utc)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        problems.append(f"it is not valid now (valid {leaf.not_valid_before_utc:%Y-%m-%d} to "
                        f"{leaf.not_valid_after_utc:%Y-%m-%d})")  # fmt: skip
    if len(chain) < 2:
        problems.append("the file must hold the signer's certificate followed by its issuer's (the chain)")
    elif not _issued_by(leaf, chain[1], crypto):
        problems.append("the second certificate did not issue the first")
    if problems:
        raise ConfigError(f"{source} cannot sign C2PA manifests: " + "; ".join(problems))
