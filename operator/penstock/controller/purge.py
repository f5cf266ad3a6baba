"""``penstock cache purge``: raise the cache generation of a Pipeline's stages.

The generation is part of every cache key, so the operator's next reconcile rolls the stages'
pods (empty memory and pod tiers) onto keys no older entry in the shared or disk tiers has. The
patch tests each stage's name and old generation: a Pipeline edited in between is not patched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from penstock.controller.kube import Kube, KubeError


class PurgeError(Exception):
    """The purge cannot be made; the message says which Pipeline, stage or field."""


def purge_operations(
    pipeline: Mapping[str, Any], stages: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The JSON patch raising the generation of ``stages`` (default: every caching stage) and
    the new generation of each. Pure: the Pipeline object in, the operations out."""
    listed = (pipeline.get("spec") or {}).get("stages") or []
    caching: dict[str, int] = {
        str(stage.get("name")): index
        for index, stage in enumerate(listed)
        if isinstance(stage, dict) and (stage.get("cache") or {}).get("enabled") is True
    }
    names = list(dict.fromkeys(stages)) or list(caching)
    name = pipeline.get("metadata", {}).get("name", "?")
    if not names:
        raise PurgeError(f"Pipeline {name} has no stage with cache.enabled: nothing to purge")
    unknown = [stage for stage in names if stage not in caching]
    if unknown:
        known = ", ".join(sorted(str(n) for n in caching)) or "none"
        raise PurgeError(
            f"Pipeline {name}: no caching stage {', '.join(map(repr, unknown))}"
            f" (caching stages: {known})"
        )
    operations: list[dict[str, Any]] = []
    generations: dict[str, int] = {}
    for stage in names:
        index = caching[stage]
        cache = listed[index]["cache"]
        old = cache.get("generation", 0)
        if not isinstance(old, int) or isinstance(old, bool) or old < 0:
            raise PurgeError(f"spec.stages[{index}].cache.generation: {old!r} is not a count")
        path = f"/spec/stages/{index}"
        operations.append({"op": "test", "path": f"{path}/name", "value": stage})
        if "generation" in cache:
            operations.append({"op": "test", "path": f"{path}/cache/generation", "value": old})
        operations.append({"op": "add", "path": f"{path}/cache/generation", "value": old + 1})
        generations[stage] = old + 1
    return operations, generations


def purge(kube: Kube, namespace: str, name: str, stages: Sequence[str] = ()) -> dict[str, int]:
    """Raise the generation of ``stages`` of the Pipeline; the new generation of each."""
    pipeline = kube.get("Pipeline", namespace, name)
    if pipeline is None:
        raise PurgeError(f"Pipeline {namespace}/{name} not found")
    operations, generations = purge_operations(pipeline, stages)
    try:
        kube.json_patch("Pipeline", namespace, name, operations)
    except KubeError as error:
        # 422 also when a tested value changed: someone edited the Pipeline in between.
        raise PurgeError(f"Pipeline {namespace}/{name} was not patched: {error}") from error
    return generations
