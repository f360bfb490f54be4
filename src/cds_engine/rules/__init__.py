"""The rule language: pack schema, loading with line numbers, condition trees and their compilers.

The engine uses this package, so it imports nothing from the engine, results, alerts or messages
(``tests/test_layering.py``). Tools that *run* packs — lint/verify, fixtures, shadow diff, the
catalog — are in :mod:`cds_engine.authoring`; hot reload is :mod:`cds_engine.service.reload`.
"""
