"""Container resources, checked as the apiserver checks a pod template's, so that a Pipeline
that validates never produces a Deployment the apiserver refuses (and the operator would retry
forever): the names a container may request, requests at most their limits, and the
non-overcommitable resources (extended ones such as ``nvidia.com/gpu``, and huge pages) whole,
with a limit equal to the request.
"""

from __future__ import annotations

from decimal import Decimal

from penstock.api.container import Resources
from penstock.api.types import parse_quantity
from penstock.errors import short_repr

STANDARD = ("cpu", "memory", "ephemeral-storage")
# A stage without requests gets these, except for a resource it limits (Kubernetes then sets
# the request to the limit: a default above a lower limit would be refused).
DEFAULT_REQUESTS: dict[str, str | int] = {"cpu": "100m", "memory": "128Mi"}


def is_extended(name: str) -> bool:
    """A ``<domain>/<name>`` resource outside kubernetes.io, e.g. nvidia.com/gpu."""
    prefix, slash, _ = name.partition("/")
    return bool(slash) and not (prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io"))


def is_hugepages(name: str) -> bool:
    return name.startswith("hugepages-")


def needs_limit(name: str) -> bool:
    """Resources Kubernetes does not overcommit: a limit is required and equals the request."""
    return is_extended(name) or is_hugepages(name)


def _hugepages_problem(name: str, raw: str | int) -> str | None:
    try:
        page = parse_quantity(name.removeprefix("hugepages-"))
    except ValueError:
        return f"{short_repr(name)}: the page size after hugepages- is not a quantity"
    amount = parse_quantity(raw)
    if page <= 0 or amount % page != 0:
        return f"{short_repr(raw)} is not a whole number of {name.removeprefix('hugepages-')} pages"
    return None


def resource_problems(resources: Resources | None, where: str) -> list[tuple[str, str]]:
    """(field path, message) for everything the apiserver would refuse in ``resources``.

    A request without its limit is fine for a non-overcommitable resource: the operator sets
    the limit to the request, as Kubernetes requires.
    """
    if resources is None:
        return []
    requests = dict(resources.requests or {})
    limits = dict(resources.limits or {})
    problems: list[tuple[str, str]] = []
    for kind, values in (("requests", requests), ("limits", limits)):
        for name, raw in values.items():
            at = f"{where}.{kind}.{name}"
            if "/" not in name and name not in STANDARD and not is_hugepages(name):
                problems.append(
                    (
                        at,
                        f"{short_repr(name)} is not a container resource: use cpu, memory, ephemeral-storage, hugepages-<size> or <domain>/<name>",
                    )
                )
            elif is_hugepages(name) and (why := _hugepages_problem(name, raw)):
                problems.append((at, why))
            elif is_extended(name) and parse_quantity(raw) % 1 != 0:
                problems.append(
                    (at, f"{short_repr(raw)}: an extended resource is counted in whole units")
                )
    for name in sorted(requests.keys() & limits.keys()):
        request, limit = parse_quantity(requests[name]), parse_quantity(limits[name])
        at = f"{where}.requests.{name}"
        if needs_limit(name) and request != limit:
            problems.append(
                (
                    at,
                    f"{short_repr(requests[name])} must equal its limit {short_repr(limits[name])} (not overcommitable)",
                )
            )
        elif request > limit:
            problems.append(
                (
                    at,
                    f"{short_repr(requests[name])} is more than its limit {short_repr(limits[name])}",
                )
            )
    effective = set(rendered_requests(resources)) | set(limits)
    if any(is_hugepages(name) for name in effective) and not effective & {"cpu", "memory"}:
        problems.append((where, "huge pages need a cpu or memory request or limit too"))
    return problems


def filled_limits(resources: Resources | None) -> dict[str, str | int] | None:
    """The limits to render: the given ones plus, for each non-overcommitable resource that
    has only a request, a limit equal to it (which Kubernetes requires)."""
    if resources is None:
        return None
    limits: dict[str, str | int] = dict(resources.limits or {})
    for name, value in (resources.requests or {}).items():
        if needs_limit(name) and name not in limits:
            limits[name] = value
    return limits or None


def rendered_requests(resources: Resources | None) -> dict[str, str | int]:
    """The requests to render: the given ones, else :data:`DEFAULT_REQUESTS` for each
    resource without a limit."""
    if resources is not None and resources.requests:
        return dict(resources.requests)
    limits = resources.limits or {} if resources is not None else {}
    return {name: value for name, value in DEFAULT_REQUESTS.items() if name not in limits}


def effective_request(resources: Resources | None, name: str) -> Decimal | None:
    """What Kubernetes requests of ``name`` once rendered: the request, else the limit."""
    limits = resources.limits or {} if resources is not None else {}
    value = rendered_requests(resources).get(name, limits.get(name))
    return None if value is None else parse_quantity(value)
