"""C2PA content credentials: a local CA, signing, valid / trusted / tampered, and unfit signers refused.

Needs the sign extra (c2pa-python, cryptography); CI installs it in the tools environment.
"""

from __future__ import annotations

import datetime
import struct
import sys
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("c2pa", reason="needs the sign extra: pip install '.[sign]'")
pytest.importorskip("cryptography", reason="needs the sign extra: pip install '.[sign]'")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID  # noqa: E402

from instantid_edge.cli import cli  # noqa: E402
from instantid_edge.runtime.errors import ConfigError  # noqa: E402
from instantid_edge.runtime.provenance import DIGITAL_SOURCE_TYPE, write_output  # noqa: E402
from instantid_edge.runtime.provenance.certs import make_authority  # noqa: E402
from instantid_edge.runtime.provenance.credentials import SigningIdentity  # noqa: E402
from instantid_edge.runtime.provenance.verify import verify_file  # noqa: E402


@pytest.fixture(scope="module")
def authority(tmp_path_factory):
    return make_authority(tmp_path_factory.mktemp("provenance") / "ca", "Test Studio")


@pytest.fixture(scope="module")
def photo(assets) -> np.ndarray:
    image = Image.open(assets / "faces" / "newton.png").convert("RGB")
    side = min(image.size)
    return np.asarray(image.crop((0, 0, side, side)).resize((768, 768), Image.LANCZOS))


def _cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_init_makes_a_ca_and_a_signer_with_the_extensions_c2pa_requires(authority):
    folder = authority.folder
    assert sorted(p.name for p in folder.iterdir()) == ["ca.key", "ca.pem", "signer.key", "signer.pem"]
    assert (folder / "signer.key").stat().st_mode & 0o077 == 0 and (folder / "ca.key").stat().st_mode & 0o077 == 0
    leaf, issuer = x509.load_pem_x509_certificates((folder / "signer.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    assert issuer == ca and leaf.issuer == ca.subject and leaf.subject != leaf.issuer
    leaf.verify_directly_issued_by(ca)
    assert leaf.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca is False
    usage = leaf.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    purposes = leaf.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in purposes
    aki = leaf.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value.key_identifier
    assert aki == ca.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value.digest
    assert ca.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca is True


def test_init_refuses_a_folder_in_use(authority):
    result = _cli("provenance", "init", authority.folder)
    assert result.exit_code == 1 and "already exists" in result.output


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_signed_output_is_valid_and_trusted_with_the_ca(tmp_path, authority, photo, suffix):
    out = tmp_path / f"signed{suffix}"
    write_output(out, photo, {"generator": "runtime (openvino)"}, signer=SigningIdentity.load(authority.folder))
    report = verify_file(out)
    assert report.credentials.state == "valid" and set(report.credentials.failures) <= {"signingCredential.untrusted"}
    assert report.credentials.digital_source_type == DIGITAL_SOURCE_TYPE
    assert "Test Studio image signer" in report.credentials.signer
    assert report.watermark.detected and report.label.ai_generated  # signing kept the other two marks
    trusted = verify_file(out, trust_pem=authority.ca_cert.read_text())
    assert trusted.credentials.state == "trusted"
    other = make_authority(tmp_path / "other", "Someone Else")
    assert verify_file(out, trust_pem=other.ca_cert.read_text()).credentials.state == "valid"


def _png_chunks(data: bytes):
    position = 8
    while position < len(data):
        length = struct.unpack(">I", data[position : position + 4])[0]
        yield position, data[position + 4 : position + 8], length
        position += 12 + length


def test_one_changed_byte_makes_the_manifest_tampered(tmp_path, authority, photo):
    signer = SigningIdentity.load(authority.folder)
    jpeg = tmp_path / "signed.jpg"
    write_output(jpeg, photo, {"generator": "runtime"}, signer=signer)
    data = bytearray(jpeg.read_bytes())
    data[len(data) - 200] ^= 0x01  # a byte of the compressed pixels, near the end of the scan
    jpeg.write_bytes(bytes(data))
    assert verify_file(jpeg).credentials.state == "tampered"

    png = tmp_path / "signed.png"
    write_output(png, photo, {"generator": "runtime", "settings": {"prompt": "a portrait"}}, signer=signer)
    data = bytearray(png.read_bytes())
    for position, kind, length in _png_chunks(bytes(data)):
        if kind == b"iTXt" and b"parameters" in data[position + 8 : position + 8 + length]:
            start = position + 8 + data[position + 8 : position + 8 + length].index(b"a portrait")
            data[start] = ord("A")  # one byte of metadata; the chunk's CRC is fixed so the PNG still decodes
            body = bytes(data[position + 4 : position + 8 + length])
            data[position + 8 + length : position + 12 + length] = struct.pack(">I", zlib.crc32(body))
            break
    png.write_bytes(bytes(data))
    report = verify_file(png, trust_pem=authority.ca_cert.read_text())
    assert report.credentials.state == "tampered" and report.credentials.failures


def test_reencoding_strips_the_manifest_but_not_the_watermark(tmp_path, authority, photo):
    out = tmp_path / "signed.png"
    write_output(out, photo, {"generator": "runtime"}, signer=SigningIdentity.load(authority.folder))
    Image.open(out).convert("RGB").save(tmp_path / "shared.jpg", quality=80)
    report = verify_file(tmp_path / "shared.jpg")
    assert report.credentials.state == "absent" and report.watermark.detected


def _leaf_folder(folder, *, self_signed: bool, with_eku: bool = True):
    """A signer folder whose certificate is self-signed, or CA-issued but lacking the EKU."""
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_key = key if self_signed else ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    issuer = subject if self_signed else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a CA")])
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if with_eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    folder.mkdir()
    pem = serialization.Encoding.PEM
    chain = cert.public_bytes(pem)
    if not self_signed:
        ca = (
            x509.CertificateBuilder()
            .subject_name(issuer)
            .issuer_name(issuer)
            .public_key(issuer_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(issuer_key, hashes.SHA256())
        )
        chain += ca.public_bytes(pem)
    (folder / "signer.pem").write_bytes(chain)
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (folder / "signer.key").write_bytes(private)
    return folder


def test_a_self_signed_signer_is_refused_with_a_clear_error(tmp_path, photo):
    folder = _leaf_folder(tmp_path / "self", self_signed=True)
    with pytest.raises(ConfigError, match="self-signed; C2PA requires one issued by a CA"):
        SigningIdentity.load(folder)
    Image.fromarray(photo).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    result = _cli("mark", tmp_path / "in.png", out, "--sign", folder)
    assert result.exit_code == 1 and "self-signed" in result.output and "provenance init" in result.output
    assert not out.exists()


def test_a_signer_without_extended_key_usage_is_refused(tmp_path):
    folder = _leaf_folder(tmp_path / "noeku", self_signed=False, with_eku=False)
    with pytest.raises(ConfigError, match="Extended Key Usage must include emailProtection"):
        SigningIdentity.load(folder)


def test_a_folder_without_the_signer_files_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="lacks signer.pem, signer.key"):
        SigningIdentity.load(tmp_path)


def test_the_signer_comes_from_the_environment_when_configured(tmp_path, authority, photo, monkeypatch):
    monkeypatch.setenv("INSTANTID_EDGE_SIGNER", str(authority.folder))
    write_output(tmp_path / "env.png", photo, {"generator": "server"})
    assert verify_file(tmp_path / "env.png").credentials.state == "valid"


def test_mark_and_verify_commands_sign_and_report_trust(tmp_path, authority, photo):
    Image.fromarray(photo).save(tmp_path / "in.png")
    out = tmp_path / "out.webp"
    result = _cli("mark", tmp_path / "in.png", out, "--sign", authority.folder)
    assert result.exit_code == 0 and "C2PA manifest" in result.output, result.output
    result = _cli("verify", out, "--trust", authority.ca_cert)
    assert result.exit_code == 0 and "C2PA: trusted" in result.output, result.output


def test_verify_without_the_extra_says_a_manifest_is_present(tmp_path, authority, photo, monkeypatch):
    out = tmp_path / "signed.png"
    write_output(out, photo, {"generator": "runtime"}, signer=SigningIdentity.load(authority.folder))
    monkeypatch.setitem(sys.modules, "c2pa", None)
    report = verify_file(out)
    assert report.credentials.state.startswith("present") and report.watermark.detected


def test_generate_signs_its_outputs_when_a_signer_is_configured(tmp_path, authority, runtime_package, face_pack,
                                                                astronaut):  # fmt: skip
    out = tmp_path / "portrait.png"
    args = ["--package", runtime_package, "--face", astronaut, "--prompt", "a portrait", "--out", out,
            "--face-models", face_pack, "--height", 512, "--width", 512, "--steps", 1]  # fmt: skip
    result = _cli("generate", *args, "--sign", authority.folder)
    assert result.exit_code == 0, result.output
    report = verify_file(out, trust_pem=authority.ca_cert.read_text())
    assert report.credentials.state == "trusted", report.summary()
    assert report.watermark.detected and report.watermark.payload.generator_name == "runtime"
    assert report.label.ai_generated
