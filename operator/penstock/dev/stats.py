"""The nearest-rank percentile of ``penstock analyze``, for one list or many resamples at once.

Nearest rank: p50 of n values is the ceil(0.5 n)-th smallest. It lives here, not in analyze, so
that modules analyze imports (the ``--compare`` bootstrap) can use the same rule without an
import cycle; :func:`percentile_rows` applies it to every row of a numpy matrix, and both
take the rank from :func:`nearest_rank`, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the types only: analyze need not load numpy unless it resamples
    import numpy as np
    import numpy.typing as npt

__all__ = ["nearest_rank", "percentile", "percentile_rows"]


def nearest_rank(count: int, q: float) -> int:
    """The 1-based rank of the q-th percentile of ``count`` values (q in (0, 1])."""
    return max(1, math.ceil(q * count))


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the ceil(q n)-th smallest value (q in (0, 1])."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[nearest_rank(len(ordered), q) - 1]


def percentile_rows(
    rows: npt.NDArray[np.float64], quantiles: Sequence[float], *, overwrite: bool = False
) -> list[npt.NDArray[np.float64]]:
    """Per quantile, the nearest-rank percentile of each row of a (resamples, n) matrix, n > 0.

    ``overwrite=True`` sorts ``rows`` in place (a scratch matrix: saves a copy of it).
    """
    count = rows.shape[1]
    ranks = [nearest_rank(count, q) - 1 for q in quantiles]
    # A full sort per row: measured faster than np.partition with two ranks (numpy 2.4).
    ordered = rows if overwrite else rows.copy()
    ordered.sort(axis=1)
    return [ordered[:, rank].copy() for rank in ranks]
