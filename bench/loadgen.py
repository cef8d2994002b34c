"""A closed-loop HTTP load generator for the predict figures, cheap enough to share the cores.

    .venv/bin/python bench/loadgen.py URL REQUESTS.json --clients 16 --per-client 48

`clients` connections (HTTP/1.1 keep-alive), each sending its next request as soon as the last
one is answered, like `wrk` or `ab -k`. Every request is encoded once before the clock starts,
so a request costs the client one socket write and one read: about 0.1 ms of CPU, against
~1.5 ms for an httpx client, which on a 2-core machine would take that time from the server.

REQUESTS.json: {"path": "/v1/models/ID/predict", "requests": [[[filename, base64 bytes], ...],
...]}: request i is a multipart body of one `files` part per tile. Client c sends requests
c * per_client + j (modulo their count). Prints one JSON line: seconds, latencies, CPU seconds,
and the last answer to each distinct request (for the caller to check against the model).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
import uuid
from urllib.parse import urlsplit

BOUNDARY_PREFIX = "anyband-bench-"


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data body with one file part per file."""
    boundary = BOUNDARY_PREFIX + uuid.uuid4().hex
    parts = []
    for filename, data in files:
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: image/tiff\r\n\r\n'
        )
        parts += [head.encode(), data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def encode_request(host: str, path: str, files: list[tuple[str, bytes]]) -> bytes:
    body, content_type = multipart(files)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nAccept: application/json\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            raise RuntimeError("chunked responses are not supported by this load generator")
    if length is None:
        raise RuntimeError(f"no Content-Length in the response: {head!r}")
    return status, await reader.readexactly(length)


async def run_clients(
    url: str, requests: list[bytes], clients: int, per_client: int, warmup: int
) -> dict:
    parts = urlsplit(url)
    latencies: list[float] = []
    answers: dict[int, str] = {}
    connections = [
        await asyncio.open_connection(parts.hostname, parts.port) for _ in range(clients)
    ]

    async def one(c: int, count: int, record: bool) -> None:
        reader, writer = connections[c]
        for j in range(count):
            k = (c * per_client + j) % len(requests)
            start = time.perf_counter()
            writer.write(requests[k])
            status, body = await read_response(reader)
            if record:
                latencies.append((time.perf_counter() - start) * 1000)
            if status != 200:
                raise RuntimeError(
                    f"request {k}: HTTP {status}: {body[:2000].decode(errors='replace')}"
                )
            answers[k] = body.decode()

    try:
        await asyncio.gather(*(one(c, warmup, False) for c in range(clients)))
        cpu, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(c, per_client, True) for c in range(clients)))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        for _, writer in connections:
            writer.close()
    return {"seconds": seconds, "cpu_seconds": cpu, "latencies_ms": latencies, "answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server's base URL, http://host:port")
    parser.add_argument("requests", help="REQUESTS.json (see above)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests per client first")
    args = parser.parse_args()
    with open(args.requests) as handle:
        spec = json.load(handle)
    host = urlsplit(args.url).netloc
    encoded = [
        encode_request(host, spec["path"], [(name, base64.b64decode(data)) for name, data in files])
        for files in spec["requests"]
    ]
    result = asyncio.run(run_clients(args.url, encoded, args.clients, args.per_client, args.warmup))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
