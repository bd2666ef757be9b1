"""Provenance of every output: invisible watermark, XMP/IPTC label, optional C2PA content credentials."""

from .label import DIGITAL_SOURCE_TYPE, DISCLOSURE, read_record, save_png

__all__ = ["DIGITAL_SOURCE_TYPE", "DISCLOSURE", "read_record", "save_png"]
