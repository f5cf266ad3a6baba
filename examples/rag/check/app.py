"""The RAG pipeline's check stage: reads generate's token stream as it is produced (input: stream)
and streams each claim of the answer as soon as it is complete, with the citation it carries.

    python examples/rag/check/app.py [--port 8080]

Serves the Penstock stage HTTP contract as a stage with ``input: stream`` (examples/rag/
pipeline-stream.yaml): the request body is generate's answer while generate writes it,
server-sent events ``data: {"token": "..."}`` then ``event: done`` / ``data: {"answer",
"citations"}``. The answer:
  text/event-stream: ``data: {"claim": "...", "citation": n}`` per claim as soon as its citation
  marker ``[n]`` has arrived (``citation`` null for text left without one), then ``event: done``
  / ``data: {"answer", "citations", "claims", "uncited"}`` (generate's payload, checked: every
  cited n must be one of the citations).
  GET /healthz
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

CITED = re.compile(r"^(.*?)\s*\[(\d+)\](?=\s)", re.S)


async def events(body: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, Any]]:
    """Server-sent events (name, JSON data) from a byte stream, as they complete."""
    pending = b""
    async for chunk in body:
        pending += chunk
        while b"\n\n" in pending:
            raw, pending = pending.split(b"\n\n", 1)
            name, data = "message", ""
            for line in raw.decode("utf-8", "replace").splitlines():
                field, _, value = line.partition(":")
                if field == "event":
                    name = value.strip()
                elif field == "data":
                    data += value.strip()
            if data:
                yield name, json.loads(data)


class Claims:
    """Answer text in, complete claims out: the text up to each citation marker [n]."""

    def __init__(self) -> None:
        self.text = ""
        self.found: list[dict[str, Any]] = []
        self.sources = False  # past "Sources:": the list of sources, not claims

    def feed(self, token: str) -> list[dict[str, Any]]:
        if self.sources:
            return []
        self.text += token
        if "Sources:" in self.text:
            self.text, self.sources = self.text.split("Sources:", 1)[0] + " ", True
        claims = []
        while (match := CITED.match(self.text)) is not None:
            claims.append({"claim": match.group(1).strip(), "citation": int(match.group(2))})
            self.text = self.text[match.end() :]
        self.found += claims
        return claims

    def rest(self) -> list[dict[str, Any]]:
        """What is left at the end: a claim without a citation (the sources line is not one)."""
        text = self.text.strip()
        self.text = ""
        if not text:
            return []
        self.found.append({"claim": text, "citation": None})
        return self.found[-1:]


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def build_app() -> web.Application:
    async def check(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        claims = Claims()
        done: dict[str, Any] | None = None
        try:
            async for name, data in events(request.content.iter_any()):
                if name == "done" and isinstance(data, dict):
                    done = data
                elif isinstance(data, dict) and isinstance(data.get("token"), str):
                    for claim in claims.feed(data["token"]):
                        await response.write(sse(claim))
        except ValueError as error:  # not the event stream generate writes
            await response.write(
                sse({"error": f"input is not generate's stream: {error}"}, "error")
            )
            await response.write_eof()
            return response
        for claim in claims.rest():
            await response.write(sse(claim))
        known = {c.get("n") for c in (done or {}).get("citations", [])}
        uncited = [c["claim"] for c in claims.found if c["citation"] not in known]
        summary = {**(done or {}), "claims": claims.found, "uncited": uncited}
        await response.write(sse(summary, "done"))
        await response.write_eof()
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/", check)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    args = parser.parse_args()
    web.run_app(build_app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
