"""``penstock cache``: tools for the stage caches (the purge through the apiserver).

penstock cache eval --embedder URL [--pairs FILE] [--max-trap-rate 0.01] [--json FILE]
penstock cache purge PIPELINE [--namespace NS] [--stage STAGE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from penstock.semantic.evaluate import (
    DEFAULT_PAIRS,
    Embed,
    EvalError,
    http_embedder,
    report,
    run_eval,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="penstock cache", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    evaluate = sub.add_parser(
        "eval",
        help="hit rate and wrong-answer rate of the semantic cache per threshold",
        description="Score a labelled set of input pairs (paraphrases that should hit, traps "
        "that must not) with the semantic cache's guards and thresholds: thresholds are chosen "
        "on the 'tune' split, the figures reported on 'test'. Exit 0, or 1 on unusable input.",
    )
    evaluate.add_argument(
        "--embedder",
        required=True,
        metavar="URL",
        help='an embedding stage: POST {"text": ...} answers {"embedding": [...]}',
    )
    evaluate.add_argument(
        "--pairs",
        type=Path,
        default=DEFAULT_PAIRS,
        metavar="FILE",
        help="JSON lines {a, b, label: hit|trap, kind, split: tune|test}; default: the set"
        " Penstock ships (344 pairs)",
    )
    evaluate.add_argument(
        "--text-field",
        default="text",
        metavar="PATH",
        help="the dotted path of the text in each body (default text; a body with messages"
        " compares its last message and guards on the rest)",
    )
    evaluate.add_argument(
        "--max-trap-rate",
        type=float,
        default=0.01,
        metavar="SHARE",
        help="most traps answered wrongly on 'tune' for thresholds to be chosen (default 0.01)",
    )
    evaluate.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="wait this long for the embedder to answer first (default 0: it must be up)",
    )
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="also write the figures")
    purge = sub.add_parser(
        "purge",
        help="purge a Pipeline's caches: raise its stages' cache.generation",
        description="Raise spec.stages[].cache.generation of the Pipeline's caching stages (or"
        " of --stage): part of every cache key, so no entry stored before is served by the"
        " stages' new pods, in any tier; the operator rolls the pods. Uses the current"
        " kubeconfig (or in-cluster credentials). Exit 0, or 1 when nothing was patched.",
    )
    purge.add_argument("pipeline", metavar="PIPELINE", help="the Pipeline's name")
    purge.add_argument(
        "-n", "--namespace", default=None, help="its namespace (default: the kubeconfig's)"
    )
    purge.add_argument(
        "--stage",
        action="append",
        default=[],
        metavar="STAGE",
        help="a stage to purge (repeatable); default: every stage with cache.enabled",
    )
    return parser


def current_namespace() -> str:
    """The kubeconfig's current context's namespace, else default."""
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError):
        return "default"
    return str((active or {}).get("context", {}).get("namespace") or "default")


def purge_main(args: argparse.Namespace) -> int:
    from penstock.controller.kube import Kube, KubeError, load_api_client
    from penstock.controller.purge import PurgeError, purge

    namespace = args.namespace or current_namespace()
    try:
        kube = Kube(load_api_client(connections=1))
        generations = purge(kube, namespace, args.pipeline, args.stage)
    except (PurgeError, KubeError) as error:
        print(f"penstock cache purge: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # no kubeconfig, unreachable apiserver
        print(f"penstock cache purge: cannot reach the cluster: {error}", file=sys.stderr)
        return 1
    for stage, generation in generations.items():
        print(f"{namespace}/{args.pipeline} stage {stage}: cache generation {generation}")
    return 0


async def wait_for(embed: Embed, seconds: float) -> None:
    """Until the embedder embeds a text, for at most ``seconds``; then its last error."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            await embed(["ready?"])
            return
        except (OSError, aiohttp.ClientError, EvalError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "purge":
        return purge_main(args)
    if not 0 <= args.max_trap_rate <= 1:
        print("penstock cache eval: --max-trap-rate is a share in [0, 1]", file=sys.stderr)
        return 1
    try:
        embed = http_embedder(args.embedder)
        if args.wait > 0:
            asyncio.run(wait_for(embed, args.wait))
        result = asyncio.run(run_eval(args.pairs, embed, args.max_trap_rate, args.text_field))
    except (EvalError, OSError, aiohttp.ClientError, TimeoutError) as error:
        print(f"penstock cache eval: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0
