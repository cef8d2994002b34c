"""Stream a multipart upload to files in the data directory (or, for small bodies, to memory),
counting bytes as they arrive."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from service.problems import Problem

MAX_FIELD_BYTES = 64 * 1024


@dataclass
class UploadedFile:
    """One file part: on disk at `path`, or in memory as `data` when the body was small."""

    field: str
    filename: str
    path: Path | None = None
    data: bytes | None = None
    size: int = 0
    sha256: str = ""  # "" when the caller did not ask for hashes

    @property
    def source(self) -> Path | bytes:
        """What a reader opens: the bytes, or the file."""
        return self.data if self.data is not None else self.path


@dataclass
class MultipartUpload:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def file(self, name: str) -> UploadedFile:
        for uploaded in self.files:
            if uploaded.field == name:
                return uploaded
        raise Problem(
            422,
            f"multipart field '{name}' (a file) is required",
            errors=[{"field": name, "message": "a file is required"}],
        )

    def files_named(self, name: str) -> list[UploadedFile]:
        found = [uploaded for uploaded in self.files if uploaded.field == name]
        if not found:
            raise Problem(
                422,
                f"multipart field '{name}' (one or more files) is required",
                errors=[{"field": name, "message": "at least one file is required"}],
            )
        return found

    def remove(self) -> None:
        for uploaded in self.files:
            if uploaded.path is not None:
                uploaded.path.unlink(missing_ok=True)


def multipart_body(
    file_description: str, *, file_field: str = "file", many: bool = False, **fields: dict
) -> dict:
    """OpenAPI `openapi_extra` for a route that streams a multipart body with file parts."""
    binary = {"type": "string", "format": "binary", "description": file_description}
    properties = {
        file_field: {"type": "array", "items": binary} if many else binary,
        **fields,
    }
    schema = {"type": "object", "required": [file_field], "properties": properties}
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


async def receive_multipart(
    request: Request,
    upload_dir: Path,
    max_bytes: int,
    *,
    in_memory_up_to: int = 0,
    hash_files: bool = True,
    before_in_memory: Callable[[int], None] | None = None,
) -> MultipartUpload:
    """Parse a multipart/form-data body as it streams in; file parts go to `upload_dir`, or stay
    in memory (`UploadedFile.data`) when the body declares a Content-Length of at most
    `in_memory_up_to` bytes (the bytes are counted as well, so memory held is bounded by it).

    Never writes outside `upload_dir`, and answers 413 as soon as the body passes `max_bytes`
    (Content-Length is checked first, then the bytes counted). `hash_files`: fill in each file's
    sha256 as it streams (the routes that store a file need it; predict does not).
    `before_in_memory(content_length)` is called before a body is read into memory; it may raise.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise Problem(
            415 if content_type != b"multipart/form-data" else 400,
            "expected a multipart/form-data body with a boundary",
        )
    declared = request.headers.get("content-length")
    declared = int(declared) if declared and declared.isdigit() else None
    if declared is not None and declared > max_bytes:
        raise Problem(413, _too_large(max_bytes))
    in_memory = declared is not None and declared <= in_memory_up_to and in_memory_up_to > 0
    if in_memory and before_in_memory is not None:
        before_in_memory(declared)
    if not in_memory:
        upload_dir.mkdir(parents=True, exist_ok=True)
    result = MultipartUpload()
    state: dict = {"headers": {}, "header_field": b"", "header_value": b"", "target": None}

    def on_part_begin():
        state.update(headers={}, header_field=b"", header_value=b"", target=None, hasher=None)

    def on_header_field(data, start, end):
        state["header_field"] += data[start:end]

    def on_header_value(data, start, end):
        state["header_value"] += data[start:end]

    def on_header_end():
        state["headers"][state["header_field"].lower()] = state["header_value"]
        state["header_field"], state["header_value"] = b"", b""

    def on_headers_finished():
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        if filename is not None:
            uploaded = UploadedFile(
                field=name, filename=Path(filename.decode("utf-8", "replace")).name
            )
            result.files.append(uploaded)
            state.update(target=uploaded, hasher=hashlib.sha256() if hash_files else None)
            if in_memory:
                state.update(handle=None, value=bytearray())
            else:
                uploaded.path = upload_dir / f"{uuid.uuid4().hex}.part"
                state.update(handle=uploaded.path.open("wb"))
        else:
            state.update(target=name, value=bytearray())

    def on_part_data(data, start, end):
        chunk = data[start:end]
        target = state["target"]
        if isinstance(target, UploadedFile):
            if state["handle"] is not None:
                state["handle"].write(chunk)
            else:
                state["value"] += chunk
            if state["hasher"] is not None:
                state["hasher"].update(chunk)
            target.size += len(chunk)
        else:
            state["value"] += chunk
            if len(state["value"]) > MAX_FIELD_BYTES:
                raise Problem(413, f"form field '{target}' is over {MAX_FIELD_BYTES} bytes")

    def on_part_end():
        target = state["target"]
        if isinstance(target, UploadedFile):
            if state["handle"] is not None:
                state["handle"].close()
            else:
                target.data = bytes(state["value"])
            if state["hasher"] is not None:
                target.sha256 = state["hasher"].hexdigest()
        elif target is not None:
            result.fields[target] = state["value"].decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise Problem(413, _too_large(max_bytes))
            if in_memory and received > declared:  # what is held stays within what was said
                raise Problem(400, f"the body is longer than its Content-Length ({declared})")
            parser.write(chunk)
        parser.finalize()
    except Problem:
        _abort(state, result)
        raise
    except Exception as exc:  # the multipart parser's own errors: a malformed body
        _abort(state, result)
        raise Problem(400, f"malformed multipart body: {exc}") from exc
    return result


def _abort(state: dict, result: MultipartUpload) -> None:
    handle = state.get("handle")
    if handle is not None and not handle.closed:
        handle.close()
    result.remove()


def _too_large(max_bytes: int) -> str:
    return f"upload is over the {max_bytes} byte limit (ANYBAND_MAX_UPLOAD_BYTES)"
