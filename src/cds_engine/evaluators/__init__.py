"""Evaluators that sit beside the engine and build alerts themselves (the polars vector evaluator).

They import :mod:`cds_engine.results` and :mod:`cds_engine.messages` to word alerts exactly as the
engine does, so they live above the rule language (:mod:`cds_engine.rules`), not inside it.
"""
