"""The model-preloading init container and the volume it fills."""

from __future__ import annotations

from typing import Any

from penstock.api.features import Model
from penstock.render.security import container_security_context

MODEL_VOLUME = "model"
PRELOAD_DIR = "/penstock/model"
DEFAULT_SIZE_LIMIT = "10Gi"


def model_volume(model: Model) -> dict[str, Any]:
    size = model.size_limit if model.size_limit is not None else DEFAULT_SIZE_LIMIT
    return {"name": MODEL_VOLUME, "emptyDir": {"sizeLimit": str(size)}}


def preload_container(model: Model, operator_image: str) -> dict[str, Any]:
    size = model.size_limit if model.size_limit is not None else DEFAULT_SIZE_LIMIT
    # The model may take what its volume holds, no more (and no less than the preload default).
    args = ["preload", "--uri", model.uri, "--dest", PRELOAD_DIR, "--max-bytes", str(size)]
    if model.sha256:
        args += ["--sha256", model.sha256]
    container: dict[str, Any] = {
        "name": "preload",
        "image": operator_image,
        "command": ["penstock"],
        "args": args,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": container_security_context(),
        # A failed preload's last log lines become its termination message, which the
        # operator puts in the Pipeline's status (which stage, and why).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": MODEL_VOLUME, "mountPath": PRELOAD_DIR},
            {"name": "preload-tmp", "mountPath": "/tmp"},
        ],
    }
    if model.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": model.credentials_secret}}]
    return container
