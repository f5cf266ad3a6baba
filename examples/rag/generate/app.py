"""The RAG pipeline's generate stage: composes a cited answer and streams it.

    python examples/rag/generate/app.py [--port 8080] [--top 3] [--delay-ms 5]

Serves the Penstock stage HTTP contract (it depends on rerank):
  POST /   {"input": {"text": "question"}, "rerank": {"documents": [...]}}
           -> text/event-stream: ``data: {"token": "..."}`` events, then
              ``event: done`` / ``data: {"answer", "citations"}``;
           with ``Accept: application/json`` (and not text/event-stream) a single JSON object
           ``{"answer", "citations": [{"n", "id", "title"}]}`` instead.
  GET  /healthz
The answer is extractive and templated, not a language model: from each of the top documents it
takes the sentence that shares the most words with the question, and cites it as [n].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from typing import Any

from aiohttp import web

_STOPWORD_TEXT = (
    "a an and are as at be by can do does for from how i in is it its of on or so that the "
    "their them they this to what when where which while who why with you your"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def words(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z0-9]+", text.lower()) if word not in STOPWORDS}


def best_sentence(question: str, text: str) -> str:
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    wanted = words(question)
    # Most shared words; the earlier sentence on ties (it usually defines the topic).
    return max(sentences, key=lambda s: (len(wanted & words(s)), -sentences.index(s)))


def compose(question: str, documents: list[dict[str, Any]], top: int) -> dict[str, Any]:
    chosen = documents[:top]
    if not chosen:
        return {
            "answer": "I found no document about this question in the bundled set.",
            "citations": [],
        }
    parts = [f"{best_sentence(question, doc['text'])} [{n}]" for n, doc in enumerate(chosen, 1)]
    sources = "; ".join(
        f"[{n}] {doc.get('title', doc.get('id'))}" for n, doc in enumerate(chosen, 1)
    )
    citations = [
        {"n": n, "id": doc.get("id"), "title": doc.get("title")} for n, doc in enumerate(chosen, 1)
    ]
    return {"answer": " ".join(parts) + f"\n\nSources: {sources}", "citations": citations}


def build_app(top: int, delay: float) -> web.Application:
    async def generate(request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
            question = body["input"]["text"]
            documents = body["rerank"]["documents"]
            if not isinstance(question, str) or not isinstance(documents, list):
                raise TypeError
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            message = 'the body must be {"input": {"text": ...}, "rerank": {"documents": [...]}}'
            return web.json_response({"error": message, "stage": "generate"}, status=400)
        result = compose(question, documents, top)
        accept = request.headers.get("Accept", "")
        if "application/json" in accept and "text/event-stream" not in accept:
            return web.json_response(result)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.headers["Cache-Control"] = "no-cache"
        await response.prepare(request)
        for token in re.findall(r"\S+\s*", result["answer"]):
            await response.write(f"data: {json.dumps({'token': token})}\n\n".encode())
            if delay:
                await asyncio.sleep(delay)
        await response.write(f"event: done\ndata: {json.dumps(result)}\n\n".encode())
        await response.write_eof()
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/", generate)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--top", type=int, default=3, help="documents cited (default 3)")
    parser.add_argument(
        "--delay-ms", type=float, default=5.0, help="pause between streamed tokens (default 5)"
    )
    args = parser.parse_args()
    app = build_app(args.top, args.delay_ms / 1000)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
