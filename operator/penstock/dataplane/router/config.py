"""`penstock router` flags and environment: RouterConfig, parsed by one policy (dataplane/flags)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from penstock.contract import wire
from penstock.contract.topology import Topology, TopologyError, target
from penstock.contract.wire import ADMIN_PORT, PROFILE_HEADER, ROUTER_ENV_PREFIX
from penstock.dataplane.flags import ConfigError, FlagParser, HostPort, http_url, parse_host_port
from penstock.dataplane.flags import pick as pick_flag
from penstock.dataplane.limits import (
    LIMIT_FLAGS,
    ServerLimits,
    parse_limit,
)
from penstock.dataplane.router.topology import (
    load_pipeline,
    load_topology,
    parse_stage_urls,
)
from penstock.dataplane.upstream import tls_context

ENV_PREFIX = ROUTER_ENV_PREFIX


@dataclass(frozen=True)
class RouterConfig:
    listen: HostPort
    topology: Topology
    admin_listen: HostPort
    otlp_endpoint: str | None = None
    sampling_ratio: float = 1.0
    stage_ca_file: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)


def env_name(flag: str) -> str:
    """``--stage-url`` -> ``PENSTOCK_ROUTER_STAGE_URL``."""
    return wire.env_name(ENV_PREFIX, flag)


_HELP = {
    "--listen": ("HOST:PORT", "where clients reach the pipeline (required)"),
    "--pipeline": ("FILE", "a Pipeline YAML; stage URLs come from --stage-url (local runs)"),
    "--topology": ("FILE", "the topology.json of the pipeline's ConfigMap (in the cluster)"),
    "--stage-url": (
        "NAME=URL",
        "where stage NAME is reached, repeatable; required with --pipeline for every stage the"
        " output needs, overrides the topology's URL otherwise (env: comma-separated)",
    ),
    "--admin-listen": ("HOST:PORT", "/metrics, /live, /ready (default: the --listen host, 9090)"),
    "--otlp-endpoint": ("URL", "OTLP/HTTP collector; enables spans per request and stage"),
    "--sampling-ratio": ("R", "trace sampling ratio in [0, 1] (default 1)"),
    "--stage-ca-file": (
        "FILE",
        "PEM CA bundle that https:// stage certificates are verified against, instead of the"
        " system CA bundle",
    ),
    **{flag: ("N", text) for flag, (_, text) in LIMIT_FLAGS.items()},
}


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(
        prog="penstock router",
        description="The pipeline's entrypoint: runs the stage DAG per request with maximum"
        " parallelism, enforces the latency budget, streams the output stage, profiles on"
        f" request ({PROFILE_HEADER}: 1).",
        epilog=f"Every flag --foo-bar can also be set with {ENV_PREFIX}FOO_BAR."
        " Exit status 2 on bad flags or files.",
    )
    for flag, (metavar, text) in _HELP.items():
        parser.add_argument(
            flag,
            metavar=metavar,
            default=None,
            action="append" if flag == "--stage-url" else "store",
            help=f"{text} [env: {env_name(flag)}]",
        )
    return parser


def parse_config(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> RouterConfig:
    """Flags, else environment variables, else defaults; raise :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(list(argv))

    def pick(flag: str) -> tuple[str | None, str]:
        return pick_flag(args, env, ENV_PREFIX, flag)

    listen_text, source = pick("--listen")
    if listen_text is None:
        raise ConfigError(f"--listen is required (or set {env_name('--listen')})")
    try:
        listen = parse_host_port(listen_text)
        admin_text, source = pick("--admin-listen")
        admin = parse_host_port(admin_text) if admin_text else HostPort(listen.host, ADMIN_PORT)
    except ValueError as error:
        raise ConfigError(f"{source}: {error}") from None
    if admin == listen and listen.port != 0:
        raise ConfigError("--admin-listen must differ from --listen")
    otlp, source = pick("--otlp-endpoint")
    if otlp is not None:
        try:
            otlp = http_url(otlp)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
    ratio_text, source = pick("--sampling-ratio")
    ratio = 1.0
    if ratio_text is not None:
        try:
            ratio = float(ratio_text)
        except ValueError:
            raise ConfigError(f"{source}: {ratio_text!r} is not a number") from None
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"{source}: {ratio_text!r} is not in [0, 1]")
    ca_file, source = pick("--stage-ca-file")
    if ca_file is not None:
        try:
            tls_context(ca_file)
        except OSError as error:  # ssl.SSLError too: not PEM, no certificate in it
            raise ConfigError(f"{source}: cannot load CA file {ca_file}: {error}") from None
    limits: dict[str, Any] = {}
    for flag, (name, _) in LIMIT_FLAGS.items():
        text, source = pick(flag)
        if text is not None:
            try:
                limits[name] = parse_limit(flag, text)
            except ValueError as error:
                raise ConfigError(f"{source}: {error}") from None
    items: list[str] = [item for item in (args.stage_url or []) if item.strip()]
    if not items:
        items = [i for i in env.get(env_name("--stage-url"), "").replace(",", " ").split() if i]
    pipeline, _ = pick("--pipeline")
    topology_file, _ = pick("--topology")
    if (pipeline is None) == (topology_file is None):
        raise ConfigError(
            "give exactly one of --pipeline FILE (a Pipeline YAML) or --topology FILE"
            " (the topology.json of the pipeline's ConfigMap)"
        )
    try:
        urls = parse_stage_urls(items)
        if pipeline is not None:
            topology = load_pipeline(pipeline, urls)
        else:
            topology = with_stage_urls(load_topology(topology_file or ""), urls)
    except TopologyError as error:
        raise ConfigError(str(error)) from None
    return RouterConfig(listen, topology, admin, otlp, ratio, ca_file, ServerLimits(**limits))


def with_stage_urls(topology: Topology, urls: Mapping[str, str]) -> Topology:
    """The topology with some stages' URLs replaced (``--stage-url`` over ``topology.json``)."""
    known = {name for stage in topology.stages.values() for name in stage.targets()}
    unknown = sorted(set(urls) - known)
    if unknown:
        raise TopologyError(
            f"--stage-url names no stage of pipeline {topology.pipeline!r}: {', '.join(unknown)}"
            " (a variant is <stage>/<variant>)"
        )
    stages = {}
    for name, stage in topology.stages.items():
        variants = tuple(
            replace(variant, url=urls.get(target(name, variant.name), variant.url))
            for variant in stage.variants
        )
        url = stage.url if stage.variants else urls.get(name, stage.url)
        stages[name] = replace(stage, url=url, variants=variants)
    return replace(topology, stages=stages)
