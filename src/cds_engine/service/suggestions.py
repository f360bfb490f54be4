"""The one-click dose suggestion of an order: delete the draft, create a corrected one — or none.

What holds (issue #10, the closure test in ``tests/test_suggestion_closure.py`` proves it):

* **One regimen per order, never higher.** The pack declares per tier which limits cap a
  suggestion (``one_click`` in ``rules/<pack>/pack.yaml``, evaluated by
  :mod:`cds_engine.rules.one_click`): the suggested daily dose is the highest dispensable one
  within the lowest of every firing tier's caps, and neither the daily nor the single dose ever
  rises above the order's. With a single-dose cap alone, the daily dose is kept and spread over
  more administrations. At most one suggestion per order, on the most severe card whose tier
  ``offer``\\ s it; none at all while a ``block`` tier fires (text advice only).
* **Never an abrupt cut.** For a patient taking the drug now, the suggestion stays within
  ``suggestion_max_step_pct`` of the daily dose taken now (the replaced order or the documented
  dose; unknown = no suggestion). A larger cut gets no one-click: the card text advises a taper.
* **Same product, marketed only.** Only the count and frequency of the *same* product change
  (code, form, route, concentration kept); only a product the vocabulary marks ``marketed: yes``;
  half units only where it is ``scored: yes``; liquids in ``suggestion_liquid_step_ml`` volume
  steps of their own concentration, the text stating mg, mL and mg/mL. Anything the product cannot
  express gets no suggestion.
* The created order keeps the draft's medication, intent, category, route, reason and
  ``priorPrescription``; a draft without an ``id`` (nothing to delete by ``resourceId``), a PRN
  order, unequal doses or several dosage phases get none.
"""

from __future__ import annotations

import copy
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cds_engine.alerts import Alert
from cds_engine.facts.derive import derive
from cds_engine.facts.model import Order, PatientFacts
from cds_engine.facts.normalize import normalize_form, normalize_route, normalize_unit
from cds_engine.messages import fmt_value
from cds_engine.rules.compile import CompiledPack
from cds_engine.rules.conditions import TRUE
from cds_engine.rules.one_click import LIQUID_STEP_PARAMETER, STEP_PARAMETER, Limits, limits, tier_truths
from cds_engine.service.models import Action, Suggestion
from cds_engine.vocabulary import Product

__all__ = [
    "OneClick",
    "Regimen",
    "offers_one_click",
    "one_click",
    "order_one_click",
    "plan_regimen",
    "would_fire",
]

log = logging.getLogger(__name__)
_UCUM = "http://unitsofmeasure.org"
_COUNTED = {"tablet": "{tbl}", "capsule": "{cap}", "packet": "{packet}"}
_TIMES = {1: "once daily", 2: "twice daily", 3: "three times daily", 4: "four times daily"}
_FREQUENCIES = (1, 2, 3, 4)  # administrations per day a suggestion may write (HL7 QD..QID)
_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class Regimen:
    """A dose of the ordered product: ``units`` of it per administration, ``per_day`` times daily."""

    product: Product
    units: float
    per_day: int
    dose_mg: float
    daily_mg: float

    def text(self, unit: str) -> str:
        how = _TIMES.get(self.per_day, f"{self.per_day} times daily")
        concentration = self.product.concentration_mg_per_ml
        if concentration:  # a liquid: mg, mL and the concentration, always
            volume = f"{fmt_value(self.units)} mL of {fmt_value(concentration)} mg/mL"
            return f"{fmt_value(self.dose_mg)} mg ({volume}) {how} ({fmt_value(self.daily_mg)} mg/day)"
        if unit in _COUNTED:
            count = fmt_value(self.units)
            plural = "s" if self.units > 1 else ""
            strength = fmt_value(self.product.strength_mg)
            return f"{count} {unit}{plural} of {strength} mg {how} ({fmt_value(self.daily_mg)} mg/day)"
        return f"{fmt_value(self.dose_mg)} mg {how} ({fmt_value(self.daily_mg)} mg/day)"


@dataclass(frozen=True, slots=True)
class OneClick:
    """The order's one suggestion (and the tier whose card carries it), or the reason for none."""

    tier_id: str | None = None  # the card that carries the suggestion or the note
    suggestion: Suggestion | None = None
    regimen: Regimen | None = None
    note: str | None = None  # card text when a one-click change would be too large a step
    reason: str = ""  # why there is no suggestion (for logs and tests)

    def for_card(self, alert: Alert) -> tuple[Alert, list[Suggestion]]:
        """The alert (with the note added to its detail) and the suggestions its card carries."""
        if self.tier_id is None or alert.tier_id != self.tier_id or alert.kind != "finding":
            return alert, []
        if self.note:
            alert = alert.model_copy(update={"detail": f"{alert.detail.rstrip()}\n\n{self.note}"})
        return alert, [self.suggestion] if self.suggestion else []


def plan_regimen(
    product: Product,
    order: Order,
    lim: Limits,
    *,
    ordered_daily: float,
    ordered_single: float,
    floor_daily: float = 0.0,
    other_daily: float = 0.0,
    liquid_step_ml: float | None = None,
) -> Regimen | None:
    """The highest dispensable daily dose of ``product`` within the limits, or None.

    Never above the ordered daily or single dose, never below ``floor_daily``; ``other_daily``
    (other active orders of the drug) counts against the daily limit. Ties keep the ordered
    frequency, else the nearest one. Solid units: whole, or halves when the product is scored.
    Liquids: volumes in steps of ``liquid_step_ml`` (a pack parameter; none: no liquid suggestion)
    of the product's own concentration.
    """
    if product.marketed != "yes":
        return None
    if product.concentration_mg_per_ml:
        if not liquid_step_ml or liquid_step_ml <= 0:
            return None
        step, strength = float(liquid_step_ml), float(product.concentration_mg_per_ml)
    elif product.strength_mg:
        step, strength = (0.5 if product.scored == "yes" else 1.0), product.strength_mg
    else:
        return None
    ordered_per_day = order.doses_per_day or 0
    best: tuple[tuple[float, int, int], Regimen] | None = None
    for per_day in _FREQUENCIES:
        # Start at the largest single dose every bound allows (never count down from an absurd order).
        ceiling = min(ordered_single, ordered_daily / per_day)
        if lim.single is not None:
            ceiling = min(ceiling, lim.single)
        if lim.daily is not None:
            ceiling = min(ceiling, (lim.daily - other_daily) / per_day)
        if not math.isfinite(ceiling) or ceiling <= 0:
            continue
        for k in range(math.floor(ceiling / strength / step + _EPS), 0, -1):
            units = k * step
            dose = round(units * strength, 6)
            daily = round(dose * per_day, 6)
            if daily < floor_daily - _EPS:
                break  # smaller doses only fall further below the floor
            if daily > ordered_daily + _EPS or dose > ordered_single + _EPS:
                continue
            if not lim.allows(daily + other_daily, dose):
                continue
            if abs(daily - ordered_daily) < _EPS and per_day == ordered_per_day:
                continue  # the order as written: nothing to suggest
            key = (daily, -int(per_day != ordered_per_day), -abs(per_day - int(ordered_per_day)))
            if best is None or key > best[0]:
                best = (key, Regimen(product, units, per_day, dose, daily))
            break  # the largest dose at this frequency that fits
    return best[1] if best else None


def offers_one_click(pack: CompiledPack, alerts: Sequence[Alert]) -> bool:
    """Cheap pre-check: does any alert's tier offer a one-click suggestion?"""
    return any((spec := pack.one_click.get(a.tier_id)) is not None and spec.offer for a in alerts)


def order_one_click(
    pack: CompiledPack,
    alerts: Sequence[Alert],
    draft: dict[str, Any] | None,
    order: Order | None,
    flat_of: Callable[[], Mapping[str, Any]],
    facts: PatientFacts | None = None,
    truths: Mapping[str, int] | None = None,
) -> OneClick:
    """:func:`one_click`, deriving the flat facts (``flat_of``) only when some card could offer one.

    With ``facts``, the planned regimen is also re-evaluated before it is offered (a second line of
    defence behind the caps; the closure test proves the caps alone): if any ``dose_dependent`` tier
    would fire on it, there is no suggestion and the event is logged (tier ids only). ``truths``:
    the one-click tiers' outcomes on those flat facts when the caller has them
    (:meth:`~cds_engine.engine.Engine.one_click_truths`), else the trees are walked here.
    """
    if not offers_one_click(pack, alerts):
        return OneClick(reason="no card offers a one-click change")
    offer = one_click(pack, flat_of(), alerts, draft, order, truths=truths)
    if facts is None or offer.regimen is None or facts.order is None:
        return offer
    fired = would_fire(pack, facts, offer.regimen)
    if fired:
        log.error("one-click suggestion withdrawn: it would trigger %s", ", ".join(fired))
        return OneClick(reason=f"the suggestion would trigger {', '.join(fired)}")
    return offer


def would_fire(pack: CompiledPack, facts: PatientFacts, regimen: Regimen) -> list[str]:
    """Dose-dependent tiers that would be TRUE if the order took ``regimen`` (same product and unit)."""
    assert facts.order is not None
    unit = normalize_unit(facts.order.dose_unit)
    amount = regimen.units if unit in (*_COUNTED, "mL") else regimen.dose_mg
    order = facts.order.model_copy(update={"dose_amount": amount, "doses_per_day": float(regimen.per_day)})
    flat = derive(facts.model_copy(update={"order": order}), pack.vocabulary, pack.context)
    truths = tier_truths(pack, flat, pack.dose_dependent)  # only these are read
    return sorted(t for t in pack.dose_dependent if truths.get(t) == TRUE)


def one_click(
    pack: CompiledPack,
    flat: Mapping[str, Any],
    alerts: Sequence[Alert],
    draft: dict[str, Any] | None,
    order: Order | None,
    *,
    truths: Mapping[str, int] | None = None,
) -> OneClick:
    """The order's one-click suggestion, attached to the most severe card that offers it.

    ``truths``: the one-click tiers' TRUE / FALSE / UNKNOWN on ``flat`` when already known (the
    same values :func:`~cds_engine.rules.one_click.limits` would compute); None: computed there.
    """
    carrier = next(
        (a for a in sorted(alerts, key=Alert.sort_key) if (s := pack.one_click.get(a.tier_id)) and s.offer),
        None,
    )
    if carrier is None:
        return OneClick(reason="no card offers a one-click change")
    if draft is None or order is None or not isinstance(draft.get("id"), str):
        return OneClick(reason="the draft has no id to replace")
    lim = limits(pack, flat, truths)
    if lim.blocked_by:
        return OneClick(reason=f"blocked by {', '.join(lim.blocked_by)} (text advice only)")
    if lim.unknown:
        return OneClick(reason=f"a limit cannot be computed: {'; '.join(lim.unknown)}")
    product = pack.vocabulary.product(order.product)
    unit = normalize_unit(order.dose_unit)
    why = _not_plannable(draft, order, product, unit)
    if why:
        return OneClick(reason=why)
    assert product is not None and unit is not None
    ordered_daily, ordered_single = flat.get("daily_dose_mg"), flat.get("max_single_dose_mg")
    if not _number(ordered_daily) or not _number(ordered_single):
        return OneClick(reason="the ordered dose in mg is unknown")
    if flat.get("presumed_replaced_order"):
        return OneClick(reason="which active order the draft replaces is presumed, not stated")
    other = 0.0
    combined = flat.get("combined_oral_daily_mg")
    if _number(combined):  # caps apply to the combined dose of every active order of the drug
        other = max(0.0, float(combined) - float(ordered_daily))
    elif (_number_or_none(flat.get("drug_active_count")) or 0) > 1:
        return OneClick(
            reason="other active orders of the drug and no combined dose: the caps cannot be checked"
        )
    floor, current = _step_floor(pack, flat)
    if floor is None:
        return OneClick(reason="the daily dose taken now is unknown: the size of the cut cannot be checked")
    if lim.daily is None:  # only single-dose caps: keep the daily dose, spread it over more doses
        floor = max(floor, float(ordered_daily))
    regimen = plan_regimen(
        product,
        order,
        lim,
        ordered_daily=float(ordered_daily),
        ordered_single=float(ordered_single),
        floor_daily=floor,
        other_daily=other,
        liquid_step_ml=_number_or_none(pack.params.get(LIQUID_STEP_PARAMETER)),
    )
    if regimen is None:
        note = _taper_note(pack, lim, current, floor, other)
        return OneClick(carrier.tier_id if note else None, note=note, reason="no dispensable dose fits")
    text = regimen.text(unit)
    suggestion = Suggestion(
        label=f"Change to {text}"[:200],
        uuid=str(uuid.uuid4()),
        isRecommended=True,
        actions=[
            Action(
                type="delete",
                description="Remove the draft order as written",
                resourceId=f"MedicationRequest/{draft['id']}",
            ),
            Action(
                type="create",
                description=f"Order {product.display}: {text}",
                resource=_new_request(draft, regimen, unit),
            ),
        ],
    )
    return OneClick(carrier.tier_id, suggestion, regimen)


def _number_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _not_plannable(draft: dict[str, Any], order: Order, product: Product | None, unit: str | None) -> str:
    if product is None:
        return "the product is not in the vocabulary"
    if product.marketed != "yes":
        return f"the product is not known to be marketed ({product.marketed})"
    if order.prn or order.schedule or not order.doses_per_day:
        return "PRN, unequal or unscheduled doses"
    if product.concentration_mg_per_ml:
        if unit not in ("mg", "mL"):
            return "a liquid dosed neither in mg nor in mL"
        if order.concentration_mg_per_ml not in (None, product.concentration_mg_per_ml):
            return "the order states another concentration than the product"  # never switch concentration
    elif unit not in ("mg", *_COUNTED):
        return "the dose unit is neither mg nor a count of units"
    if normalize_form(order.form) not in (None, product.form) or normalize_route(order.route) not in (
        None,
        product.route,
        "enteral",
    ):
        return "form or route differ from the product"
    instructions = draft.get("dosageInstruction")
    if not isinstance(instructions, list) or len(instructions) != 1 or not isinstance(instructions[0], dict):
        return "several dosage instructions (phases)"
    return ""


def _step_floor(pack: CompiledPack, flat: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The lowest daily dose a one-click change may reach, and the daily dose taken now."""
    exposed = flat.get("order_action") in ("modify", "continue") or flat.get("days_since_last_exposure") == 0
    if not exposed:
        return 0.0, None  # nothing taken now (a new start): no step limit
    current = flat.get("previous_daily_dose_mg")
    step = pack.params.get(STEP_PARAMETER)
    if not isinstance(current, int | float) or not isinstance(step, int | float):
        return None, None
    return float(current) * (1.0 - float(step) / 100.0), float(current)


def _taper_note(
    pack: CompiledPack, lim: Limits, current: float | None, floor: float, other: float
) -> str | None:
    if current is None or lim.daily is None or lim.daily - other >= floor:
        return None
    target = fmt_value(max(lim.daily - other, 0.0))
    step = fmt_value(pack.params.get(STEP_PARAMETER))
    return (
        f"**No one-click change:** the limit here ({'below' if lim.daily_strict else 'at most'} {target} "
        f"mg/day) is more than a {step}% cut from the {fmt_value(current)} mg/day taken now. Reduce "
        "gradually (taper) to the target under supervision; never stop or cut abruptly."
    )


def _new_request(draft: dict[str, Any], regimen: Regimen, unit: str) -> dict[str, Any]:
    """The draft with a new dose and frequency: same medication, intent, category, route, reason, prior."""
    new = copy.deepcopy(draft)
    for key in ("id", "meta", "text"):
        new.pop(key, None)
    new["status"] = "draft"
    new.setdefault("intent", "order")
    first = dict(draft["dosageInstruction"][0])
    old = next(
        (
            dr.get("doseQuantity")
            for dr in first.get("doseAndRate") or []
            if isinstance(dr, dict) and isinstance(dr.get("doseQuantity"), dict)
        ),
        None,
    )
    quantity = dict(old) if isinstance(old, dict) else {}
    if unit in _COUNTED:
        quantity.setdefault("unit", unit)
        quantity["value"] = regimen.units
    elif unit == "mL":
        quantity.update({"value": regimen.units, "unit": "mL", "system": _UCUM, "code": "mL"})
    else:
        quantity.update({"value": regimen.dose_mg, "unit": "mg", "system": _UCUM, "code": "mg"})
    first["doseAndRate"] = [{"doseQuantity": quantity}]
    first["text"] = regimen.text(unit)
    first.pop("patientInstruction", None)
    first.pop("maxDosePerPeriod", None)
    timing = first.get("timing") if isinstance(first.get("timing"), dict) else {}
    repeat = timing.get("repeat") if isinstance(timing.get("repeat"), dict) else {}
    bounds = {k: v for k, v in repeat.items() if k.startswith("bounds")}
    first["timing"] = {"repeat": {**bounds, "frequency": regimen.per_day, "period": 1, "periodUnit": "d"}}
    new["dosageInstruction"] = [first]
    return new
