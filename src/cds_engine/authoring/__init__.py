"""Authoring tools: what a pack author runs on a rule pack — lint and verify, fixtures, shadow runs,
the rule catalog and its plain-English rendering, text checks.

They sit *above* the engine (they compile packs and evaluate patients with it), which is why they
are not in :mod:`cds_engine.rules`: that package holds only the rule language and its compilers,
which the engine itself uses and which must import nothing from the engine, results, alerts or
messages (enforced by ``tests/test_layering.py``).
"""
