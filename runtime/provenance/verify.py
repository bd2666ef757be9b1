"""What a file says about its own provenance: watermark, XMP/IPTC label, C2PA manifest state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputImageError
from ..images import open_image, to_rgb
from .credentials import Credentials, read_credentials
from .label import Label, read_label
from .output import watermark_key
from .payload import CODED_BITS
from .watermark import Detection, detect


def sniff_mime(data: bytes) -> str | None:
    """The container C2PA needs to be told, from the file's first bytes (the name may lie)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None  # c2pa detects the rest itself


@dataclass(frozen=True)
class Report:
    path: Path
    watermark: Detection
    label: Label
    credentials: Credentials

    def to_dict(self) -> dict:
        return {"path": str(self.path), "watermark": self.watermark.to_dict(), "label": self.label.to_dict(),
                "c2pa": self.credentials.to_dict()}  # fmt: skip

    def summary(self) -> str:
        """One line: the watermark verdict with its evidence, the label, the C2PA state."""
        mark = self.watermark
        verdict = "watermark DETECTED" if mark.detected else "NO watermark"
        evidence = f"score {mark.score:.1f}, threshold {mark.threshold:g}"
        if mark.payload:
            p = mark.payload
            evidence += (f"; generator {p.generator_name}, format v{p.version}, tag {p.tag}, "
                         f"{mark.bit_errors}/{CODED_BITS} coded bits wrong")  # fmt: skip
        elif mark.detected:
            evidence += "; payload unreadable"
        label = self.label.digital_source_type.rsplit("/", 1)[-1] if self.label.digital_source_type else "none"
        signer = f" (signed by {self.credentials.signer})" if self.credentials.signer else ""
        return f"{self.path}: {verdict} ({evidence}); XMP label: {label}; C2PA: {self.credentials.state}{signer}"


def verify_file(path: str | Path, trust_pem: str | None = None, key: str | None = None) -> Report:
    path = Path(path)
    image = open_image(path)  # refuses missing, corrupt and oversized files with a one-line reason
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputImageError(f"cannot read {path}: {exc}") from exc
    label = read_label(image)
    detection = detect(to_rgb(image), watermark_key(key))
    return Report(path, detection, label, read_credentials(data, sniff_mime(data), trust_pem))
