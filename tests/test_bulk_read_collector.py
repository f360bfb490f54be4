"""A bundle is decoded with the cyclic collector paused (issue 20 item 4: bundles end to end).

Why it matters: a Synthea bundle's read types decode into thousands of dicts and lists; with the
collector on, every few hundred of them set off a collection that walked them (and, in the oldest
generation, the engine's whole heap) — 0.86 s of a 5.1 s screening of 640 bundles, 0.38 s with the
pause. The pause must neither change what is read nor leave the collector off afterwards.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cds_engine.batch import work
from cds_engine.batch.inputs import Chunk
from cds_engine.batch.work import RunConfig, prepare_chunk
from cds_engine.sources.fhir import bundle_resources
from cds_engine.sources.selective import collector_paused, read_bundle
from conftest import RULES


def _bundle(n: int) -> bytes:
    """A Bundle of ``n`` Observations (a type the mapping reads: each one decoded into dicts)."""
    entries = [
        {
            "resource": {
                "resourceType": "Observation",
                "id": f"o{i}",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": f"{i}-0"}]},
                "subject": {"reference": "Patient/p"},
                "valueQuantity": {"value": i, "unit": "mg"},
            }
        }
        for i in range(n)
    ]
    return json.dumps({"resourceType": "Bundle", "entry": entries}).encode()


@contextmanager
def _collections() -> Iterator[list[int]]:
    """The generations of the collections that start meanwhile (one young collection may follow a
    pause: the objects made during it are counted, and looked at once when it ends)."""
    started: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "start":
            started.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        yield started
    finally:
        gc.callbacks.remove(seen)


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    try:
        yield
    finally:
        if not was:
            gc.disable()


def test_decoding_a_bundle_sets_off_no_collection(collector_on):
    data = _bundle(3000)
    with _collections() as control:  # the same objects built with the collector on: it runs
        json.loads(data)
    assert len(control) >= 5, "the control decode set off few collections: the test could not tell"
    with _collections() as started:
        read = read_bundle(data)
    # at most the one collection due when the pause ends — of whatever generation the counts then
    # call for (a young one alone, or gen 1 after earlier tests: seen in CI); unpaused, 5 or more
    assert len(started) <= 1, started
    assert gc.isenabled()  # turned back on
    assert read.resources == bundle_resources(json.loads(data))  # the same resources as before


def test_the_full_parse_fallback_is_paused_too_and_its_error_restores_the_collector(collector_on):
    data = _bundle(3000).replace(b'"value": 0,', b'"value": NaN,')  # msgspec refuses NaN: full parse
    with _collections() as started:
        read = read_bundle(data)
    assert read.full_parse is not None
    assert len(started) <= 1, started
    assert gc.isenabled()
    with pytest.raises(ValueError):
        read_bundle(b'{"resourceType": "Bundle", "entry": [')  # not JSON: raised as json.loads raises
    assert gc.isenabled()


def test_a_pause_around_it_is_kept(collector_on):
    with collector_paused():
        read_bundle(_bundle(10))
        assert not gc.isenabled()  # the inner pause did not end the outer one
    assert gc.isenabled()


def test_a_collector_that_was_off_is_left_off():
    was = gc.isenabled()
    gc.disable()
    try:
        read_bundle(_bundle(10))
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()


# ── a chunk of bundle files, read and mapped (batch/work.py) ────────────────────────────────────


def _patient_bundle(k: int, n: int) -> bytes:
    """One patient's Bundle: a Patient and ``n`` Observations the mapping reads past (decoded, freed)."""
    data = json.loads(_bundle(n))
    patient = {"resourceType": "Patient", "id": f"p{k}", "birthDate": "1960-05-02", "gender": "female"}
    data["entry"].insert(0, {"resource": patient})
    return json.dumps(data).encode()


@pytest.fixture(scope="module")
def bundle_chunk(tmp_path_factory: pytest.TempPathFactory) -> Chunk:
    folder = tmp_path_factory.mktemp("bundles")
    files = []
    for k in range(8):
        path = folder / f"patient-{k}.json"
        path.write_bytes(_patient_bundle(k, 2000))
        files.append(str(path))
    return Chunk(id="bundles-000000", kind="bundles", files=tuple(files), records=len(files))


def _cfg() -> RunConfig:
    return RunConfig(rules=str(RULES.resolve()), engine="vector", as_of="2026-01-15T12:00:00+00:00")


def test_reading_a_chunk_of_bundles_sets_off_fewer_collections_than_it_has_bundles(
    collector_on, bundle_chunk
):
    """Paused per bundle from its decoding until its frame is gone, a bundle's resources are freed
    before any collection sees them; paused for the decoding alone, each bundle set off one (or more)
    as its pause ended, all its resources still alive."""
    cfg = _cfg()
    prepare_chunk(bundle_chunk, cfg)  # the engine built and its caches warm: not counted below
    with _collections() as control:  # the decoding paused alone (as before), the resources then kept
        for name in bundle_chunk.files:
            read = read_bundle(Path(name).read_bytes())
            assert len(read.resources) > 2000
    assert len(control) >= len(bundle_chunk.files), (
        "the control set off few collections: the test could not tell"
    )
    with _collections() as started:
        prepared = prepare_chunk(bundle_chunk, cfg)
    assert len(prepared.out.units) == len(bundle_chunk.files)  # every patient read and mapped
    assert len(started) <= 2, started  # what the patients' facts call for (none or one), not one a bundle
    assert gc.isenabled()


def test_each_bundle_has_its_own_pause_that_ends_on_an_error(collector_on, bundle_chunk, monkeypatch):
    """Bounded: the collector runs again between bundles (cyclic garbage piles up within one file at
    most, never a whole chunk), and a failure inside a bundle's pause does not leave it off."""
    pauses: list[bool] = []  # per pause: the collector on again once it ended

    @contextmanager
    def counted() -> Iterator[None]:
        with collector_paused():
            yield
        pauses.append(gc.isenabled())

    monkeypatch.setattr(work, "collector_paused", counted)
    cfg = _cfg()
    prepare_chunk(bundle_chunk, cfg)
    assert pauses == [True] * len(bundle_chunk.files)

    def failing(*args: object, **kwargs: object) -> None:
        assert not gc.isenabled()  # the mapping runs inside the pause
        raise RuntimeError("mapping failed")

    monkeypatch.setattr(work, "_add_fhir_unit", failing)
    with pytest.raises(RuntimeError):
        prepare_chunk(bundle_chunk, cfg)
    assert gc.isenabled()
