"""Cost attribution: a price table and the hourly cost of a stage's replicas."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from pydantic import ConfigDict, Field

from penstock.api.pipeline import Stage
from penstock.api.resources import effective_request
from penstock.api.types import ApiModel, parse_quantity
from penstock.safeyaml import DocumentError, load_yaml_file

_GIB = Decimal(2**30)
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")


class PriceTable(ApiModel):
    """USD prices per hour. Defaults approximate on-demand general-purpose cloud VMs."""

    # An operator setting, not an API object: numbers may be written as YAML floats.
    model_config = ConfigDict(strict=False)

    cpu_core_hour: Decimal = Field(default=Decimal("0.0316"), ge=0)
    """Price of one requested CPU core for an hour."""
    memory_gib_hour: Decimal = Field(default=Decimal("0.0042"), ge=0, alias="memoryGiBHour")
    """Price of one requested GiB of memory for an hour."""
    gpu_hour: dict[str, Decimal] = Field(
        default_factory=lambda: {"default": Decimal("2.48")}, max_length=32
    )
    """Price of one GPU for an hour, by GPU type (node label value); "default" for any other."""

    @classmethod
    def from_file(cls, path: str) -> PriceTable:
        try:
            documents = load_yaml_file(path)
        except DocumentError as error:
            raise ValueError(f"price table {error}") from None
        if len(documents) > 1:
            raise ValueError(f"price table {path}: expected one document (got {len(documents)})")
        raw: Any = documents[0][1] if documents else {}
        return cls.model_validate(raw)

    def gpu_price(self, gpu_type: str | None) -> Decimal:
        if gpu_type and gpu_type in self.gpu_hour:
            return self.gpu_hour[gpu_type]
        return self.gpu_hour.get("default", Decimal(0))


DEFAULT_CPU = "100m"
DEFAULT_MEMORY = "128Mi"


def replica_hourly_cost(stage: Stage, prices: PriceTable) -> Decimal:
    """Cost of one replica per hour: the stage's override, else its requests at table prices."""
    if stage.cost and stage.cost.hourly_rate is not None:
        return Decimal(stage.cost.hourly_rate)
    # What Kubernetes requests once rendered (a resource given as a limit only is requested at
    # its limit); CPU and memory neither requested nor limited count at the defaults.
    cpu = effective_request(stage.resources, "cpu")
    memory = effective_request(stage.resources, "memory")
    cpu = parse_quantity(DEFAULT_CPU) if cpu is None else cpu
    memory = (parse_quantity(DEFAULT_MEMORY) if memory is None else memory) / _GIB
    gpus = sum(
        (effective_request(stage.resources, name) or Decimal(0) for name in GPU_RESOURCES),
        Decimal(0),
    )
    gpu_type = (stage.node_selector or {}).get("nvidia.com/gpu.product")
    return (
        cpu * prices.cpu_core_hour
        + memory * prices.memory_gib_hour
        + gpus * prices.gpu_price(gpu_type)
    )


_PLAIN_BELOW = Decimal(10) ** 15


def usd(amount: Decimal) -> str:
    """Format USD to 4 decimals, the precision of the Cost/h column.

    Amounts from a quadrillion up (only absurd requests reach them, which the API allows up to
    2^63-1) are written in scientific notation: the status field holds at most 32 characters
    and a plain quantize would exceed the decimal context's precision.
    """
    if abs(amount) >= _PLAIN_BELOW:
        return f"{amount:.6E}"
    return str(amount.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))
