"""The semantic cache's matching: guards (what must be equal), a bounded vector index, the
precision-first policy, and ``penstock cache eval`` that measures it."""
