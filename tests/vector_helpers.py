"""Generated flat-fact frames for the vector evaluator's tests (a few values per fact, some missing)."""

from __future__ import annotations

import random
from typing import Any

import polars as pl

from cds_engine.evaluators.vector import VectorPack

__all__ = ["random_facts"]


def random_facts(vp: VectorPack, n: int, rng: random.Random, missing: float) -> pl.DataFrame:
    """Random patients over a few values per fact, ``missing`` of the values null (the pack's own
    thresholds are not needed: the tests compare two ways of building the same table)."""
    data: dict[str, pl.Series] = {"patient_id": pl.Series([f"p{i}" for i in range(n)])}
    for name, dtype in vp.columns.items():
        pool: list[Any]
        if dtype == pl.Float64():
            pool = [0.0, 1.0, 2.0, 15.0, 30.0, 45.0, 60.0, 90.0, 200.0]
        elif dtype == pl.Boolean():
            pool = [True, False]
        else:
            pool = ["oral", "new", "spasticity", "other"]
        values = [None if rng.random() < missing else rng.choice(pool) for _ in range(n)]
        data[name] = pl.Series(name, values, dtype=dtype, strict=False)
    return pl.DataFrame(data)
