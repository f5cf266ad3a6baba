"""Kubernetes pieces of a stage's pod that a Pipeline declares: env, resources, tolerations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from penstock.api.metadata import qualified_name_problem
from penstock.api.types import (
    LABEL_VALUE,
    ApiModel,
    Dns1123Label,
    Quantity,
    cel_rules,
)

# A key of a Secret or ConfigMap (the apiserver checks references against it).
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
# A qualified name, as Kubernetes resource names and label keys are: cpu, hugepages-2Mi,
# nvidia.com/gpu, kubernetes.io/arch.
RESOURCE_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)
ResourceName = Annotated[str, Field(max_length=317, pattern=RESOURCE_NAME)]


class SecretKeySelector(ApiModel):
    """A key of a Secret in the Pipeline's namespace."""

    name: Dns1123Label
    """Name of the Secret."""
    key: str = Field(min_length=1, max_length=253, pattern=CONFIG_KEY)
    """Key within the Secret."""
    optional: bool | None = None
    """When true the variable is left unset if the Secret or key is missing."""


class ConfigMapKeySelector(ApiModel):
    """A key of a ConfigMap in the Pipeline's namespace."""

    name: Dns1123Label
    """Name of the ConfigMap."""
    key: str = Field(min_length=1, max_length=253, pattern=CONFIG_KEY)
    """Key within the ConfigMap."""
    optional: bool | None = None
    """When true the variable is left unset if the ConfigMap or key is missing."""


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from; set exactly one field."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "[has(self.secretKeyRef), has(self.configMapKeyRef)].filter(x, x).size() == 1",
                "set exactly one of secretKeyRef, configMapKeyRef",
            )
        )
    )

    secret_key_ref: SecretKeySelector | None = None
    """Take the value from a key of a Secret."""
    config_map_key_ref: ConfigMapKeySelector | None = None
    """Take the value from a key of a ConfigMap."""

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError("set exactly one of secretKeyRef, configMapKeyRef")
        return self


class EnvVar(ApiModel):
    """An environment variable for the stage container."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both")
        )
    )

    name: str = Field(min_length=1, max_length=128, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name."""
    value: str | None = Field(default=None, max_length=32768)
    """Literal value. Mutually exclusive with valueFrom."""
    value_from: EnvVarSource | None = None
    """Take the value from a Secret or ConfigMap key. Mutually exclusive with value."""

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name!r}: set value or valueFrom, not both")
        return self


class Resources(ApiModel):
    """Compute resources of the stage container (Kubernetes quantities)."""

    requests: dict[ResourceName, Quantity] | None = Field(default=None, max_length=8)
    """Minimum resources, e.g. {cpu: 500m, memory: 1Gi, nvidia.com/gpu: 1}. Used by the
    scheduler and by cost attribution. Default: {cpu: 100m, memory: 128Mi}."""
    limits: dict[ResourceName, Quantity] | None = Field(default=None, max_length=8)
    """Maximum resources. No limit when unset."""


class Toleration(ApiModel):
    """Lets stage pods schedule onto nodes with matching taints (e.g. GPU nodes)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "has(self.key) && self.key != '' || has(self.operator) && self.operator == 'Exists'",
                "an empty key needs operator Exists (it matches every taint)",
            ),
            (
                "!(has(self.operator) && self.operator == 'Exists' && has(self.value) && self.value != '')",
                "operator Exists takes no value",
            ),
            (
                "!has(self.tolerationSeconds) || has(self.effect) && self.effect == 'NoExecute'",
                "tolerationSeconds needs effect NoExecute",
            ),
        )
    )

    key: str | None = Field(
        default=None, max_length=317, pattern=r"^([-a-z0-9.]+/)?[-A-Za-z0-9_.]*$"
    )
    """Taint key; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal. Default Equal."""
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE)
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all."""
    toleration_seconds: int | None = Field(default=None, ge=0, le=86400 * 365)
    """For NoExecute: how long the pod stays bound after the taint appears."""

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        # The apiserver's rules for a pod's tolerations.
        if self.key and (why := qualified_name_problem(self.key)):
            raise ValueError(f"key {self.key!r}: {why}")
        if not self.key and self.operator != "Exists":
            raise ValueError("an empty key needs operator Exists (it matches every taint)")
        if self.operator == "Exists" and self.value:
            raise ValueError("operator Exists takes no value")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self
