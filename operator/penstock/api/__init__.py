"""The Pipeline API (penstock.dev/v1alpha1): pydantic models, the single source of truth."""

from penstock.api.pipeline import PipelineSpec, Stage
from penstock.api.status import Condition, PipelineStatus, StageStatus
from penstock.api.types import API_VERSION, GROUP, KIND, PLURAL, VERSION

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "PipelineSpec",
    "PipelineStatus",
    "Stage",
    "StageStatus",
]
