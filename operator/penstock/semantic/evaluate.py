"""``penstock cache eval``: how often a semantic cache would answer, and how often wrongly.

A labelled set of input pairs (JSON lines ``{"a": BODY, "b": BODY, "label": "hit"|"trap",
"kind": ..., "split": "tune"|"test"}``): with ``a`` stored, should ``b`` get its answer? "hit"
pairs are paraphrases, "trap" pairs are different questions that look alike (negation, changed
numbers or identifiers, swapped or replaced entities, another conversation before the same
last message). Every text is embedded once by the embedder (a stage answering ``{"text"}`` with
``{"embedding"}``, such as the RAG example's embed stage), then each threshold pair of the
grid is scored: the share of "hit" pairs served and of "trap" pairs answered wrongly. The
thresholds are chosen on the ``tune`` split (the strictest pair with at most ``--max-trap-rate``
wrong and at least 95% of the most hits such a pair gives) and reported on ``test``, data they were not chosen on. The same grid without the guards is
what a plain fixed-threshold semantic cache does.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from penstock.semantic.guards import SemanticInput, changes_one_slot, semantic_input
from penstock.semantic.index import Vector, unit
from penstock.semantic.policy import Policy

DEFAULT_PAIRS = Path(__file__).with_name("eval-pairs.jsonl")
THRESHOLDS = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
ONE_SLOT_THRESHOLDS = (0.86, 0.88, 0.9, 0.92, 0.94, 0.96)
SPLITS = ("tune", "test")
HIT_TOLERANCE = 0.95  # the chosen thresholds keep at least this share of the best tune hit rate

Embed = Callable[[Sequence[str]], Awaitable[list[Vector]]]


class EvalError(ValueError):
    pass


@dataclass(frozen=True)
class Pair:
    a: SemanticInput
    b: SemanticInput
    should_hit: bool
    kind: str
    split: str


def load_pairs(path: Path, text_field: str = "text") -> list[Pair]:
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
            label, split = row["label"], row.get("split", "test")
            a, b = semantic_input(row["a"], text_field), semantic_input(row["b"], text_field)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            detail = f"missing field {error}" if isinstance(error, KeyError) else str(error)
            raise EvalError(f"{where}: {detail}") from None
        if label not in ("hit", "trap"):
            raise EvalError(f"{where}: label must be 'hit' or 'trap', not {label!r}")
        if split not in SPLITS:
            raise EvalError(f"{where}: split must be 'tune' or 'test', not {split!r}")
        pairs.append(Pair(a, b, label == "hit", str(row.get("kind", "")), split))
    if not pairs:
        raise EvalError(f"{path}: no pairs")
    return pairs


@dataclass(frozen=True)
class Scored:
    pair: Pair
    similarity: float
    same_guard: bool
    one_slot: bool


def score(pairs: Sequence[Pair], vectors: dict[str, Vector]) -> list[Scored]:
    return [
        Scored(
            pair,
            float(np.dot(vectors[pair.a.text], vectors[pair.b.text])),
            pair.a.guard == pair.b.guard,
            changes_one_slot(pair.a.text, pair.b.text),
        )
        for pair in pairs
    ]


@dataclass(frozen=True)
class Rates:
    hit_rate: float
    """Share of should-hit pairs served."""
    trap_rate: float
    """Share of trap pairs answered with the other input's answer."""
    hits: int
    should_hit: int
    wrong: int
    traps: int


def rates(scored: Sequence[Scored], answered: Callable[[Scored], bool]) -> Rates:
    hits = [s for s in scored if s.pair.should_hit]
    traps = [s for s in scored if not s.pair.should_hit]
    served = sum(answered(s) for s in hits)
    wrong = sum(answered(s) for s in traps)
    return Rates(
        served / len(hits) if hits else 0.0,
        wrong / len(traps) if traps else 0.0,
        served,
        len(hits),
        wrong,
        len(traps),
    )


def guarded(policy: Policy) -> Callable[[Scored], bool]:
    return lambda s: s.same_guard and policy.allows(s.pair.a.text, s.pair.b.text, s.similarity)


def unguarded(threshold: float) -> Callable[[Scored], bool]:
    return lambda s: s.similarity >= threshold


def evaluate(scored: Sequence[Scored], max_trap_rate: float) -> dict[str, Any]:
    by_split = {split: [s for s in scored if s.pair.split == split] for split in SPLITS}
    grid: list[dict[str, Any]] = []
    for threshold in THRESHOLDS:
        for one_slot in ONE_SLOT_THRESHOLDS:
            if one_slot < threshold:
                continue
            policy = Policy(threshold, one_slot)
            grid.append(
                {
                    "threshold": threshold,
                    "one_slot_threshold": one_slot,
                    **{s: asdict(rates(by_split[s], guarded(policy))) for s in SPLITS},
                }
            )
    plain = [
        {
            "threshold": threshold,
            **{s: asdict(rates(by_split[s], unguarded(threshold))) for s in SPLITS},
        }
        for threshold in THRESHOLDS
    ]
    allowed = [row for row in grid if row["tune"]["trap_rate"] <= max_trap_rate]
    best = max((row["tune"]["hit_rate"] for row in allowed), default=0.0)
    # Precision first: the strictest setting that keeps nearly the best hit rate on tune.
    near = [row for row in allowed if row["tune"]["hit_rate"] >= HIT_TOLERANCE * best]
    chosen = max(near, key=lambda r: (r["one_slot_threshold"], r["threshold"]), default=None)
    result: dict[str, Any] = {
        "pairs": len(scored),
        "max_trap_rate": max_trap_rate,
        "guarded": grid,
        "plain": plain,
        "chosen": chosen,
    }
    if chosen is not None:
        policy = Policy(chosen["threshold"], chosen["one_slot_threshold"])
        answered = guarded(policy)
        wrong = Counter(
            s.pair.kind for s in by_split["test"] if not s.pair.should_hit and answered(s)
        )
        result["test_wrong_by_kind"] = dict(sorted(wrong.items()))
        result["test_traps_by_kind"] = dict(
            sorted(Counter(s.pair.kind for s in by_split["test"] if not s.pair.should_hit).items())
        )
    return result


async def embed_all(texts: Sequence[str], embed: Embed, batch: int = 32) -> dict[str, Vector]:
    unique = sorted(set(texts))
    vectors: dict[str, Vector] = {}
    for start in range(0, len(unique), batch):
        part = unique[start : start + batch]
        for text, vector in zip(part, await embed(part), strict=True):
            vectors[text] = unit(vector)
    return vectors


def http_embedder(url: str, concurrency: int = 4, timeout: float = 30.0) -> Embed:
    """An embedder stage over HTTP: POST ``{"text": ...}``, answer ``{"embedding": [...]}``."""
    import aiohttp

    async def embed(texts: Sequence[str]) -> list[Vector]:
        limit = asyncio.Semaphore(concurrency)
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:

            async def one(text: str) -> Vector:
                async with limit, session.post(url, json={"text": text}) as response:
                    body = await response.read()
                    if response.status != 200:
                        detail = body[:200].decode("utf-8", "replace")
                        raise EvalError(f"the embedder answered HTTP {response.status}: {detail}")
                try:
                    return unit(json.loads(body)["embedding"])
                except (ValueError, KeyError, TypeError) as error:
                    raise EvalError(f"the embedder's answer has no embedding: {error}") from None

            return list(await asyncio.gather(*(one(text) for text in texts)))

    return embed


async def run_eval(
    pairs_path: Path, embed: Embed, max_trap_rate: float, text_field: str = "text"
) -> dict[str, Any]:
    pairs = load_pairs(pairs_path, text_field)
    vectors = await embed_all([t for p in pairs for t in (p.a.text, p.b.text)], embed)
    return evaluate(score(pairs, vectors), max_trap_rate)


def _percent(value: float) -> str:
    return f"{100 * value:5.1f}%"


def report(result: dict[str, Any]) -> str:
    lines = [f"{result['pairs']} pairs; thresholds chosen on 'tune', reported on 'test'", ""]
    lines.append("guarded (Penstock)       tune hits  tune wrong   test hits  test wrong")
    for row in result["guarded"]:
        lines.append(
            f"  cos>={row['threshold']:.2f} one-slot>={row['one_slot_threshold']:.2f}"
            f"   {_percent(row['tune']['hit_rate'])}      {_percent(row['tune']['trap_rate'])}"
            f"      {_percent(row['test']['hit_rate'])}      {_percent(row['test']['trap_rate'])}"
        )
    lines += ["", "plain fixed threshold    tune hits  tune wrong   test hits  test wrong"]
    for row in result["plain"]:
        lines.append(
            f"  cos>={row['threshold']:.2f}                "
            f"{_percent(row['tune']['hit_rate'])}      {_percent(row['tune']['trap_rate'])}"
            f"      {_percent(row['test']['hit_rate'])}      {_percent(row['test']['trap_rate'])}"
        )
    chosen = result["chosen"]
    lines.append("")
    if chosen is None:
        lines.append(
            f"no thresholds keep tune's wrong answers <= {_percent(result['max_trap_rate'])}"
        )
    else:
        test = chosen["test"]
        lines.append(
            f"chosen: threshold {chosen['threshold']:.2f}, one-slot {chosen['one_slot_threshold']:.2f}"
            f" -> test: {test['hits']}/{test['should_hit']} should-hit pairs served"
            f" ({_percent(test['hit_rate']).strip()}), {test['wrong']}/{test['traps']} traps"
            f" answered wrongly ({_percent(test['trap_rate']).strip()})"
        )
        kinds = ", ".join(
            f"{kind} {result['test_wrong_by_kind'].get(kind, 0)}/{total}"
            for kind, total in result["test_traps_by_kind"].items()
        )
        lines.append(f"test traps answered wrongly by kind: {kinds}")
    return "\n".join(lines) + "\n"
