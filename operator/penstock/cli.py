"""The `penstock` command: validate, render, crd, operator, preload (and the data plane)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from penstock.api.crd import pipeline_crd, pipeline_run_crd
from penstock.api.run import RUN_KIND
from penstock.api.types import is_dns1123_label
from penstock.api.validation import validate_document, validate_run_document
from penstock.documents import DocumentError, dump_documents, load_documents
from penstock.errors import PenstockError, short_repr
from penstock.render import PipelineRef, RenderSettings, render_children, render_secret
from penstock.render.cache import cache_secret_name
from penstock.render.run import run_job
from penstock.safeyaml import read_limited


def is_run(body: Any) -> bool:
    return isinstance(body, dict) and body.get("kind") == RUN_KIND


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            documents = load_documents(path)
        except DocumentError as error:
            print(f"error: {error}", file=sys.stderr)
            failed = True
            continue
        if not documents:
            print(f"error: {path}: no documents", file=sys.stderr)
            failed = True
        for document in documents:
            if is_run(document.body):
                _, problems = validate_run_document(document.body)
                for problem in problems:
                    print(f"{document.label}: error: {problem}", file=sys.stderr)
                if not problems:
                    print(f"{document.label}: valid")
                failed = failed or bool(problems)
                continue
            result = validate_document(document.body)
            for problem in result.errors:
                print(f"{document.label}: error: {problem}", file=sys.stderr)
            for problem in result.warnings:
                print(f"{document.label}: warning: {problem}", file=sys.stderr)
            if result.valid:
                print(f"{document.label}: valid")
            failed = failed or not result.valid
    return 1 if failed else 0


MAX_PASSWORD = 512


def read_cache_password(path: str) -> str:
    """The cache password from ``path`` (one line; a final newline is dropped)."""
    try:
        data = read_limited(path, MAX_PASSWORD + 2)
    except DocumentError as error:
        raise PenstockError(f"--cache-password-file {error}") from None
    try:
        password = data.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except UnicodeDecodeError:
        raise PenstockError(f"--cache-password-file {path}: not UTF-8 text") from None
    if not password or len(password) > MAX_PASSWORD or not password.isprintable():
        raise PenstockError(
            f"--cache-password-file {path}: one line of 1 to {MAX_PASSWORD} printable characters"
        )
    return password


def cmd_render(args: argparse.Namespace) -> int:
    """Deterministic: the same files give the same output, so it can be diffed (GitOps).

    A random cache password would defeat that, so the cache Secret is left out (the operator
    creates it once, with a random password, and never rotates it) unless
    ``--cache-password-file`` gives the password to put in it.
    """
    settings = RenderSettings(operator_image=args.operator_image, redis_image=args.redis_image)
    if not is_dns1123_label(args.namespace):
        namespace = short_repr(args.namespace)
        print(f"error: --namespace {namespace} is not a DNS-1123 label", file=sys.stderr)
        return 2
    try:
        password = (
            read_cache_password(args.cache_password_file) if args.cache_password_file else None
        )
    except PenstockError as error:  # fmt: skip
        print(f"error: {error}", file=sys.stderr)
        return 1
    manifests: list[Any] = []
    left_out: list[str] = []
    failed = False
    for path in args.files:
        try:
            documents = load_documents(path)
        except DocumentError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        for document in documents:
            if is_run(document.body):
                run_spec, problems = validate_run_document(document.body)
                for problem in problems:
                    print(f"{document.label}: error: {problem}", file=sys.stderr)
                if run_spec is None:
                    failed = True
                    continue
                metadata = document.body["metadata"]
                namespace = metadata.get("namespace") or args.namespace
                uid = metadata.get("uid")
                manifests.append(run_job(metadata["name"], namespace, uid, run_spec, settings))
                continue
            result = validate_document(document.body)
            if result.spec is None:
                for problem in result.errors:
                    print(f"{document.label}: error: {problem}", file=sys.stderr)
                failed = True
                continue
            metadata = document.body["metadata"]
            ref = PipelineRef(
                name=metadata["name"],
                namespace=metadata.get("namespace") or args.namespace,
                uid=metadata.get("uid"),
            )
            secret = render_secret(ref, result.spec, password) if password else None
            if result.spec.cache_used and secret is None:
                left_out.append(f"{ref.namespace}/{cache_secret_name(ref.name)}")
            manifests += [
                *([secret] if secret else []),
                *render_children(ref, result.spec, settings),
            ]
    if failed:
        return 1
    sys.stdout.write(dump_documents(manifests))
    if left_out:
        more = f" and {len(left_out) - 3} more" if len(left_out) > 3 else ""
        shown = ", ".join(left_out[:3]) + more
        print(
            f"note: Secret {shown} (the Redis password) is not rendered: the operator creates it"
            " once with a random password; to apply this output without the operator, pass"
            " --cache-password-file FILE",
            file=sys.stderr,
        )
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    if args.reference:
        from penstock.api.reference import reference_markdown

        sys.stdout.write(reference_markdown())
    else:
        crd = pipeline_run_crd() if args.kind == "PipelineRun" else pipeline_crd()
        sys.stdout.write(dump_documents([crd]))
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from penstock.controller.main import run_operator

    return run_operator(args)


# Subcommands with their own argument parsers: everything after the name is theirs.
_PASSTHROUGH = {
    "preload": ("fetch and verify a model (init container)", "penstock.preload"),
    "gateway": ("run the stage gateway sidecar", "penstock.dataplane.gateway"),
    "router": ("run a pipeline's router (the stage DAG per request)", "penstock.dataplane.router"),
    "dev": ("run a Pipeline locally: Redis, stages, gateways, router", "penstock.dev.runner"),
    "batch": (
        "every JSON line of a file through a Pipeline: controlled, resumable, costed",
        "penstock.batch.command",
    ),
    "cache": (
        "cache tools: eval (semantic hit and wrong-answer rates per threshold), purge",
        "penstock.semantic.command",
    ),
    "analyze": (
        "per-stage time, critical path, advice from router profiles",
        "penstock.dev.analyze",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    from penstock.controller.settings import add_operator_arguments
    from penstock.render.settings import DEFAULT_OPERATOR_IMAGE, DEFAULT_REDIS_IMAGE

    parser = argparse.ArgumentParser(
        prog="penstock",
        description="Penstock: fast, cheap, observable AI inference pipelines on Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser(
        "validate",
        help="check Pipeline manifests",
        description="Validate Pipeline manifests (multi-document YAML). Exit 0 when all are "
        "valid, 1 when any is invalid. Warnings do not fail.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML file ('-' for stdin)")
    validate.set_defaults(func=cmd_validate)

    render = sub.add_parser(
        "render",
        help="print the objects the operator would apply",
        description="Print, as multi-document YAML, exactly what the operator applies for every "
        "Pipeline in the files. The output depends on the files and options only, so it can be "
        "committed and diffed (GitOps): the cache Secret, whose password the operator generates "
        "once at random, is left out unless --cache-password-file gives its password.",
    )
    render.add_argument("files", nargs="+", metavar="FILE", help="YAML file ('-' for stdin)")
    render.add_argument("--namespace", default="default", help="namespace when a Pipeline has none")
    render.add_argument(
        "--operator-image", default=DEFAULT_OPERATOR_IMAGE, help="image of the preload container"
    )
    render.add_argument("--redis-image", default=DEFAULT_REDIS_IMAGE, help="Redis sidecar image")
    render.add_argument(
        "--cache-password-file",
        metavar="FILE",
        help="render the cache Secret of each caching Pipeline with the password in FILE (one"
        " line), to apply the output without the operator; default: no Secret",
    )
    render.set_defaults(func=cmd_render)

    crd = sub.add_parser(
        "crd",
        help="print the Pipeline (or PipelineRun) CRD",
        description="Print a CRD generated from the API models.",
    )
    crd.add_argument(
        "--reference", action="store_true", help="print the field reference as Markdown instead"
    )
    crd.add_argument(
        "--kind", choices=("Pipeline", "PipelineRun"), default="Pipeline", help="(Pipeline)"
    )
    crd.set_defaults(func=cmd_crd)

    operator = sub.add_parser(
        "operator",
        help="run the operator",
        description="Run the Penstock operator against the current kubeconfig or in-cluster.",
    )
    add_operator_arguments(operator)
    operator.set_defaults(func=cmd_operator)

    for name, (summary, _) in _PASSTHROUGH.items():
        # Listed for `penstock --help`; main() hands their arguments to their own parsers.
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASSTHROUGH:
        module = importlib.import_module(_PASSTHROUGH[argv[0]][1])
        passthrough: int = module.main(argv[1:])
        return passthrough
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
