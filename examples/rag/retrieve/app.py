"""The RAG pipeline's retrieve stage: BM25 over a bundled document set, in pure Python.

    python examples/rag/retrieve/app.py [--port 8080] [--docs FILE] [--k 5]

Serves the Penstock stage HTTP contract:
  POST /        {"text": "question", "k": 5}  -> {"documents": [{"id", "title", "text", "score"}]}
                (best first; documents that share no term with the question are left out)
  GET  /healthz 200 with the number of indexed documents
Documents: ``--docs`` or ``DOCS`` (default: docs.jsonl next to this directory), one JSON object
``{"id", "title", "text"}`` per line. Port: ``--port`` or ``PORT``; host: ``--host`` or ``HOST``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

DEFAULT_DOCS = Path(__file__).resolve().parent.parent / "docs.jsonl"
MAX_TEXT_CHARS = 20_000
_STOPWORD_TEXT = (
    "a an and are as at be by can do does for from how i in is it its of on or so that the "
    "their them they this to what when where which while who why with work works you your"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def stem(word: str) -> str:
    """A light suffix stripper: autoscales, autoscaling, autoscaler -> autoscal."""
    for suffix in ("ing", "ers", "er", "es", "ed", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def tokenize(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [stem(word) for word in words if word not in STOPWORDS]


class BM25:
    """Okapi BM25 (k1, b) with the non-negative idf variant log(1 + (N - n + 0.5) / (n + 0.5))."""

    def __init__(self, documents: list[dict[str, str]], k1: float = 1.5, b: float = 0.75) -> None:
        self.documents = documents
        self.k1, self.b = k1, b
        self.terms = [Counter(tokenize(f"{doc['title']} {doc['text']}")) for doc in documents]
        self.lengths = [sum(terms.values()) for terms in self.terms]
        self.average = sum(self.lengths) / max(len(self.lengths), 1)
        frequency: Counter[str] = Counter()
        for terms in self.terms:
            frequency.update(terms.keys())
        count = len(documents)
        self.idf = {
            term: math.log(1 + (count - n + 0.5) / (n + 0.5)) for term, n in frequency.items()
        }

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        words = set(tokenize(query))
        scored = []
        for index, terms in enumerate(self.terms):
            score = 0.0
            norm = self.k1 * (1 - self.b + self.b * self.lengths[index] / self.average)
            for word in words & terms.keys():
                tf = terms[word]
                score += self.idf[word] * tf * (self.k1 + 1) / (tf + norm)
            if score > 0:
                scored.append((score, index))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [{**self.documents[index], "score": round(score, 4)} for score, index in scored[:k]]


def load_documents(path: Path) -> list[dict[str, str]]:
    documents = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        doc = json.loads(line)
        if not all(isinstance(doc.get(key), str) for key in ("id", "title", "text")):
            raise ValueError(f"{path}:{number}: each line needs string id, title and text")
        documents.append({key: doc[key] for key in ("id", "title", "text")})
    return documents


def build_app(index: BM25, default_k: int) -> web.Application:
    async def search(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as error:
            return bad(f"request body is not valid JSON: {error}")
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return bad('the request body must be a JSON object {"text": "<question>"}')
        if len(body["text"]) > MAX_TEXT_CHARS:
            return bad(f"text is longer than {MAX_TEXT_CHARS} characters")
        k = body.get("k", default_k)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100:
            return bad(f"k must be an integer from 1 to 100 (got {k!r})")
        return web.json_response({"documents": index.search(body["text"], k)})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "documents": len(index.documents)})

    app = web.Application()
    app.router.add_post("/", search)
    app.router.add_get("/healthz", healthz)
    return app


def bad(message: str) -> web.Response:
    return web.json_response({"error": message, "stage": "retrieve"}, status=400)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--docs", type=Path, default=Path(os.environ.get("DOCS", DEFAULT_DOCS)))
    parser.add_argument("--k", type=int, default=5, help="documents returned (default 5)")
    args = parser.parse_args()
    try:
        documents = load_documents(args.docs)
    except (OSError, ValueError) as error:
        print(f"retrieve: error: cannot load documents: {error}", file=sys.stderr)
        return 1
    app = build_app(BM25(documents), args.k)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
