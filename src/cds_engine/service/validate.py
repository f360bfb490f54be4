"""A CDS Hooks 2.0 response checker — the rules Inferno's CRD test kit applies to cards, ported.

There is no official schema for 2.0 (and the npm ``cds-validator`` checks the 1.0 draft), so this
is our own: required ``summary`` (< 140 characters), ``indicator`` in info|warning|critical,
``source.label``, absolute ``source.url``/``icon``, ``topic`` and override reasons as Codings
(``display`` required on override reasons), ``selectionBehavior`` whenever there are suggestions,
non-empty ``actions`` with a known ``type`` and a ``description``, ``resource`` on create/update
(a MedicationRequest with ``status`` and ``intent``), ``resourceId`` on delete, links of type
absolute|smart (``appContext`` only on smart), unique uuids, and no ``null`` or empty values
anywhere (2.0 §"JSON elements"). Used by the tests on our own answers and on the reference files.
"""

from __future__ import annotations

from typing import Any

__all__ = ["card_problems", "response_problems"]

_INDICATORS = {"info", "warning", "critical"}
_SELECTION = {"at-most-one", "any"}
_ACTIONS = {"create", "update", "delete"}


def _absolute(url: Any) -> bool:
    return isinstance(url, str) and (url.startswith("https://") or url.startswith("http://"))


def _empties(value: Any, path: str) -> list[str]:
    if value is None:
        return [f"{path}: null is not allowed"]
    if value == "" or value == [] or value == {}:
        return [f"{path}: empty value is not allowed"]
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "resource":
                continue  # FHIR content follows FHIR rules
            out.extend(_empties(item, f"{path}.{key}"))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.extend(_empties(item, f"{path}[{i}]"))
    return out


def _coding(value: Any, path: str, display_required: bool) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: must be a Coding object"]
    out = [f"{path}.{k}: required" for k in ("system", "code") if not isinstance(value.get(k), str)]
    if display_required and not isinstance(value.get("display"), str):
        out.append(f"{path}.display: required")
    return out


def _action(action: Any, path: str) -> list[str]:
    if not isinstance(action, dict):
        return [f"{path}: must be an object"]
    out: list[str] = []
    kind = action.get("type")
    if kind not in _ACTIONS:
        out.append(f"{path}.type: must be create, update or delete")
    if not isinstance(action.get("description"), str):
        out.append(f"{path}.description: required")
    resource = action.get("resource")
    if kind in ("create", "update"):
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            out.append(f"{path}.resource: a FHIR resource is required for {kind}")
        elif resource.get("resourceType") == "MedicationRequest":
            out.extend(f"{path}.resource.{k}: required" for k in ("status", "intent") if not resource.get(k))
    if kind == "delete" and not isinstance(action.get("resourceId"), str) and not isinstance(resource, str):
        out.append(f"{path}.resourceId: required for delete")
    return out


def card_problems(card: Any, path: str = "card") -> list[str]:
    """Everything that makes one card non-conformant (empty list: valid)."""
    if not isinstance(card, dict):
        return [f"{path}: must be an object"]
    out = _empties(card, path)
    summary = card.get("summary")
    if not isinstance(summary, str):
        out.append(f"{path}.summary: required")
    elif len(summary) >= 140:
        out.append(f"{path}.summary: {len(summary)} characters (must be < 140)")
    if card.get("indicator") not in _INDICATORS:
        out.append(f"{path}.indicator: must be info, warning or critical")
    source = card.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("label"), str):
        out.append(f"{path}.source.label: required")
    else:
        for key in ("url", "icon"):
            if key in source and not _absolute(source[key]):
                out.append(f"{path}.source.{key}: must be an absolute URL")
        if "topic" in source:
            out.extend(_coding(source["topic"], f"{path}.source.topic", display_required=False))
    suggestions = card.get("suggestions")
    if suggestions is not None:
        if card.get("selectionBehavior") not in _SELECTION:
            out.append(f"{path}.selectionBehavior: required with suggestions (at-most-one or any)")
        for i, suggestion in enumerate(suggestions if isinstance(suggestions, list) else []):
            where = f"{path}.suggestions[{i}]"
            if not isinstance(suggestion, dict) or not isinstance(suggestion.get("label"), str):
                out.append(f"{where}.label: required")
                continue
            actions = suggestion.get("actions")
            if not isinstance(actions, list) or not actions:
                out.append(f"{where}.actions: at least one action is required")
                continue
            for j, action in enumerate(actions):
                out.extend(_action(action, f"{where}.actions[{j}]"))
    elif "selectionBehavior" in card and card["selectionBehavior"] not in _SELECTION:
        out.append(f"{path}.selectionBehavior: must be at-most-one or any")
    for i, reason in enumerate(card.get("overrideReasons") or []):
        out.extend(_coding(reason, f"{path}.overrideReasons[{i}]", display_required=True))
    for i, link in enumerate(card.get("links") or []):
        where = f"{path}.links[{i}]"
        if not isinstance(link, dict):
            out.append(f"{where}: must be an object")
            continue
        if not isinstance(link.get("label"), str):
            out.append(f"{where}.label: required")
        if not _absolute(link.get("url")):
            out.append(f"{where}.url: must be an absolute URL")
        if link.get("type") not in ("absolute", "smart"):
            out.append(f"{where}.type: must be absolute or smart")
        if "appContext" in link and link.get("type") != "smart":
            out.append(f"{where}.appContext: only allowed on smart links")
    return out


def response_problems(response: Any) -> list[str]:
    """Problems of a hook response (``{"cards": [...]}``) or of a bare list of cards.

    Card and suggestion uuids must be unique within a response (a bare list is a collection of
    independent cards, as in Inferno's fixture file, so uniqueness is not checked there).
    """
    if isinstance(response, list):
        return [p for i, card in enumerate(response) for p in card_problems(card, f"cards[{i}]")]
    if isinstance(response, dict) and isinstance(response.get("cards"), list):
        cards = response["cards"]
        out = [f"response.{k}: unexpected member" for k in response if k not in ("cards", "systemActions")]
        for i, action in enumerate(response.get("systemActions") or []):
            out.extend(_action(action, f"systemActions[{i}]"))
    else:
        return ["response: must be an object with a cards array"]
    uuids: list[str] = []
    for i, card in enumerate(cards):
        out.extend(card_problems(card, f"cards[{i}]"))
        if isinstance(card, dict) and isinstance(card.get("uuid"), str):
            uuids.append(card["uuid"])
            for suggestion in card.get("suggestions") or []:
                if isinstance(suggestion, dict) and isinstance(suggestion.get("uuid"), str):
                    uuids.append(suggestion["uuid"])
    if len(uuids) != len(set(uuids)):
        out.append("cards: uuids must be unique")
    return out
