"""The Job of a PipelineRun: `penstock batch` in an Indexed Job, one shard per completion index.

Pure: the run's identity and spec in, the Job manifest out. Each pod takes the input lines whose
index modulo `parallelism` is its completion index, sends them through the Pipeline's router
Service, writes its records to an emptyDir and uploads them to `output` when it is done; its
summary (items, failures, items/hour) is its termination message, which the operator adds up.
An input or output that cannot be used is exit 3, which fails the Job at once (podFailurePolicy):
retrying cannot help, and a crash loop would hide the reason.
"""

from __future__ import annotations

from typing import Any

from penstock.api import API_VERSION
from penstock.api.run import RUN_KIND, PipelineRunSpec
from penstock.contract.wire import MANAGED_BY
from penstock.render.meta import PipelineRef, object_name
from penstock.render.router import router_url
from penstock.render.security import container_security_context, pod_security_context
from penstock.render.settings import RenderSettings

# penstock batch's exit status when the input or output cannot be used (batch/command.py).
EXIT_UNUSABLE = 3
WORK_DIR = "/work"
# Retries of each shard that failed otherwise (a node lost, the router gone for a while).
SHARD_RETRIES = 2


def run_job_name(run: str) -> str:
    return object_name(run, "batch")


def run_labels(run: str, pipeline: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/component": "batch",
        "app.kubernetes.io/instance": run,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": "penstock",
        "app.kubernetes.io/part-of": pipeline,
        "penstock.dev/pipeline": pipeline,
        "penstock.dev/run": run,
    }


def run_job(
    name: str, namespace: str, uid: str | None, spec: PipelineRunSpec, settings: RenderSettings
) -> dict[str, Any]:
    shards = str(spec.parallelism)
    args = [
        "batch",
        router_url(PipelineRef(spec.pipeline, namespace)) + "/",
        *("--input", spec.input, "--output", spec.output),
        *("--shard", f"$(JOB_COMPLETION_INDEX)/{shards}", "--work-dir", WORK_DIR),
        *("--max-concurrency", str(spec.max_concurrency), "--retries", str(spec.retries)),
        *("--progress", "lines", "--report", "/dev/termination-log", "--allow-item-errors"),
    ]
    if spec.id_field:
        args += ["--id-field", spec.id_field]
    container: dict[str, Any] = {
        "name": "batch",
        "image": settings.operator_image,
        "command": ["penstock"],
        "args": args,
        "env": [{"name": "HOME", "value": WORK_DIR}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": container_security_context(),
        # The summary when the shard ends; the last log lines (its error) when it failed first.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "work", "mountPath": WORK_DIR}],
    }
    if spec.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": spec.credentials_secret}}]
    labels = run_labels(name, spec.pipeline)
    metadata: dict[str, Any] = {
        "name": run_job_name(name),
        "namespace": namespace,
        "labels": labels,
    }
    if uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": RUN_KIND,
                "name": name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.parallelism,
        "parallelism": spec.parallelism,
        # Per index: one shard that keeps failing does not spend the others' retries.
        "backoffLimitPerIndex": SHARD_RETRIES,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "batch",
                        "operator": "In",
                        "values": [EXIT_UNUSABLE],
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": pod_security_context(),
                "containers": [container],
                "volumes": [{"name": "work", "emptyDir": {"sizeLimit": "20Gi"}}],
            },
        },
    }
    if spec.deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.deadline_seconds
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
