"""Reading a multipart upload entirely in memory, with a size limit, so no photo ever touches the disk.

Starlette's own form parsing spools file parts to a SpooledTemporaryFile, which rolls over to a file in the
temporary directory once a part passes 1 MiB (starlette/formparsers.py, `spool_max_size`): a camera photo would
be written to disk. So the body is read here, counted against the limit as it arrives, and split with
python-multipart's callback parser into byte strings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from .errors import BadForm, UnsupportedMediaType, UploadTooLarge

MAX_PARTS = 32  # a job form has a dozen fields at most
# The parser's warnings quote bytes of the body it choked on; the client gets the error as a 422 anyway, and the
# log must carry nothing of an upload.
logging.getLogger("python_multipart").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared length) passes `limit` bytes."""
    declared = request.headers.get("content-length")
    too_large = UploadTooLarge(f"the upload is larger than the server's limit of {limit / 2**20:g} MiB")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def parse_multipart(body: bytes, content_type: str | None) -> dict[str, Part]:
    """The parts of a multipart/form-data body by field name; a repeated name is refused."""
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise UnsupportedMediaType("send the job as multipart/form-data (a `face` file part and text fields)")
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadForm("the multipart content type has no boundary")
    parts: list[Part] = []
    current: dict = {}

    def on_part_begin() -> None:
        current.clear()
        current.update(headers={}, data=bytearray(), field=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["value"] += data[start:end]

    def on_header_end() -> None:
        current["headers"][current["field"].decode("latin-1").lower()] = current["value"]
        current["field"], current["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"] += data[start:end]

    def on_part_end() -> None:
        if len(parts) >= MAX_PARTS:
            raise BadForm(f"the form has more than {MAX_PARTS} parts")
        parts.append(_part(current["headers"], bytes(current["data"])))

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise BadForm(f"the multipart body is malformed ({exc})") from exc
    if parser.state != MultipartState.END:
        raise BadForm("the multipart body ends before its closing boundary; send the form again")
    by_name: dict[str, Part] = {}
    for part in parts:
        if part.name in by_name:
            raise BadForm(f"the field {part.name!r} is given more than once")
        by_name[part.name] = part
    return by_name


def _part(headers: dict[str, bytes], data: bytes) -> Part:
    disposition, options = parse_options_header(headers.get("content-disposition", b""))
    name = options.get(b"name")
    if disposition != b"form-data" or name is None:
        raise BadForm("every part needs a Content-Disposition: form-data header with a name")
    filename = options.get(b"filename")
    content_type = headers.get("content-type")
    return Part(
        name=name.decode("utf-8", "replace"),
        filename=filename.decode("utf-8", "replace") if filename is not None else None,
        content_type=content_type.decode("latin-1") if content_type else None,
        data=data,
    )
