"""The data plane: the stage gateway sidecar (cache, coalescing, batching, metrics, traces)."""

from __future__ import annotations
