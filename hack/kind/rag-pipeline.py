"""examples/rag/pipeline.yaml for the kind cluster of `make kind-up`, printed as YAML.

The same Pipeline with the images `make images` built (penstock/examples-rag-<stage>:dev) and
requests that fit one 2-core node beside the control plane (the example asks a whole core for
embed and for rerank). Used by `make demo` on kind and by tests/kind.

    python hack/kind/rag-pipeline.py [NAME] | kubectl apply -n NS -f -
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TAG = "dev"


def rag_pipeline(name: str = "rag") -> dict[str, object]:
    doc = yaml.safe_load((ROOT / "examples" / "rag" / "pipeline.yaml").read_text())
    doc["metadata"] = {"name": name}
    for stage in doc["spec"]["stages"]:
        stage["image"] = f"penstock/examples-rag-{stage['name']}:{TAG}"
        stage["imagePullPolicy"] = "IfNotPresent"
        memory = "512Mi" if stage["name"] in ("embed", "rerank") else "64Mi"
        stage["resources"] = {"requests": {"cpu": "50m", "memory": memory}}
    return dict(doc)


if __name__ == "__main__":
    print(yaml.safe_dump(rag_pipeline(*sys.argv[1:2]), sort_keys=False), end="")
