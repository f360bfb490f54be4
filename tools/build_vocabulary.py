#!/usr/bin/env python3
"""Build the committed runtime code vocabulary under ``rules/vocabulary/``.

Why this script exists
----------------------
The engine must classify medication, condition, allergy, observation and indication codes at
run time without network access and without the large shared reference folder. So the
classification is *compiled* once, here, from public machine-readable sources (FHIR ValueSet
expansions and the hand-verified ``codes.csv``) into small CSV files that are committed with
the rule pack. Everything the runtime knows about codes is therefore reviewable in a diff.

Design choices (each one prevents a specific error seen in the source data)
---------------------------------------------------------------------------
* **Never take a broad set wholesale.** Several value sets mix classes (the CDC "CNS
  depressant medications" set holds stimulants such as phentermine; the VSAC "Central Nervous
  System Depressants" set holds anticonvulsants and SSRIs). Every RxNorm code from every drug
  value set is therefore assigned to an engine class only when its *display names an
  ingredient of that class* (whole word). A class-specific set (e.g. the CDC opioid sets) gets
  the same treatment, which is how naloxone-only products are kept out of ``opioid_agonist``.
* **Local-only dose forms are dropped** from drug classes (topical diphenhydramine cream is
  not a sedating antihistamine exposure).
* **Sequestered naltrexone** (morphine/naltrexone abuse-deterrent capsules) is not tagged
  ``naltrexone``: the antagonist is not released when taken as directed, and tagging it would
  make an opioid patient look like an opioid+naltrexone patient.
* **Condition sets are filtered by display** where they mix current state with history or
  outcome (pregnancy), or hold non-disorders (narcolepsy in the sleep-disordered-breathing
  set, poisonings in the substance-misuse set). Every code dropped is written to
  ``excluded.csv`` with the reason, so a reviewer can see what was left out and why.
* **CPT descriptors are not copied** (AMA copyright); the CPT code is kept, the display
  says so.
* Term (ingredient/keyword) lists that do not come from a shared file are marked
  ``verified=no`` and say so in ``source``.
* A few codes the shared **Synthea** test data emits (LFT/glucose LOINC, stroke, TBI, ...) are
  added only after the build has found code + display in the bundles; otherwise they would be
  marked unverified. The bundles are read at build time only.
* The build **fails** on anything it was not told how to handle (a new codes.csv concept, a
  new RxNorm value set, an unknown group), so upstream changes cannot slip in silently.

Run: ``python tools/build_vocabulary.py --shared /work/shared/data`` (writes ``rules/vocabulary``).
The build is deterministic: rows are sorted and the README is regenerated with the counts.
"""

from __future__ import annotations

import argparse
import csv
import functools
import gzip
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"

KINDS = ("drug_class", "condition_group", "allergy_group", "observation", "indication", "condition_history")

DRUG_CLASS_GROUPS = (
    "baclofen",
    "opioid_agonist",
    "benzodiazepine",
    "z_drug",
    "barbiturate",
    "gabapentinoid",
    # product classes of the gabapentinoid parent (issue #23): every gabapentinoid code gets exactly one
    "gabapentin",
    "gabapentin_er",
    "gabapentin_enacarbil",
    "pregabalin",
    "pregabalin_cr",
    "sedating_antihistamine",
    "antipsychotic",
    "tca",
    "maoi",
    "other_central_muscle_relaxant",
    "antihypertensive",
    "levodopa",
    "lithium",
    "naltrexone",
    "strong_cns_depressant",
)
CONDITION_GROUPS = (
    "epilepsy",
    "pregnancy",
    "lactation",
    "dialysis",
    "dialysis_procedure",
    "esrd",
    "ckd_stage5",
    "aki",
    "substance_use_disorder",
    "alcohol_use_disorder",
    "respiratory_impairment",
    "multiple_sclerosis",
    "spinal_cord_injury",
    "cerebral_palsy",
    "spasticity",
    "psychosis",
    "delirium",
    "depression_suicidality",
    "stroke",
    "autonomic_dysreflexia",
    "sci_t6_or_above",
    "peptic_ulcer",
    "urinary_retention",
    "parkinson",
    "liver_disease",
    "diabetes",
    "tbi",
    "rheumatic_disorder",
)
ALLERGY_GROUPS = ("baclofen", "wheat", "gabapentinoid", "gabapentin", "pregabalin")
OBSERVATION_GROUPS = (
    "egfr",
    "egfr_among_blacks",
    "egfr_among_non_blacks",
    "crcl",
    "creatinine",
    "pregnancy_test",
    "lft",
    "glucose",
    "gestational_age",
    "delivery_date_estimated",
)
INDICATION_GROUPS = (
    "spasticity",
    "spasticity_stroke",
    "spasticity_cerebral_palsy",
    "spasticity_parkinson",
    "spasticity_tbi",
    "aud",
    "rheumatic_spasm",
    "neuropathic_pain",
    "hiccups",
    "vertigo",
    "musculoskeletal_pain",
)
# Groups whose *history* is a different clinical fact (the pack reads ``cond_history.<group>``):
# history codes and "history of ..." texts go to kind ``condition_history``, never to the active
# group. Every other group keeps history in the active group (the caution covers past events).
CONDITION_HISTORY_GROUPS = ("peptic_ulcer",)
ALLOWED_GROUPS: dict[str, tuple[str, ...]] = {
    "condition_history": CONDITION_HISTORY_GROUPS,
    "drug_class": DRUG_CLASS_GROUPS,
    "condition_group": CONDITION_GROUPS,
    "allergy_group": ALLERGY_GROUPS,
    "observation": OBSERVATION_GROUPS,
    "indication": INDICATION_GROUPS,
}

UNVERIFIED_DRUG_SOURCE = (
    "unverified ingredient list (researcher background knowledge; needs pharmacist review)"
)
UNVERIFIED_TERM_SOURCE = "unverified term list (researcher background knowledge; needs clinical review)"
UNVERIFIED_CODE_SOURCE = "unverified (background knowledge)"

# --------------------------------------------------------------------------------------------
# Build-time display tagging: case-insensitive, and the term may not touch a letter, digit,
# underscore or hyphen on either side (RxNorm/VSAC displays never glue ingredients with hyphens).
# The runtime fallback is deliberately looser on hyphens for free text ("hydrocodone-acetaminophen")
# and uses context.csv instead (cds_engine.vocabulary.TERM_REGEX; README "How matching works").
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def term_pattern(term: str) -> re.Pattern[str]:
    """Compile a term for build-time tagging of value-set displays (hyphen-strict)."""
    return re.compile(r"(?<![\w-])" + re.escape(term) + r"(?![\w-])", re.IGNORECASE)


def matches(term: str, text: str) -> bool:
    """Whole-word, case-insensitive match of ``term`` in ``text`` (build-time tagging)."""
    return term_pattern(term).search(text) is not None


# Dose forms that act locally; such products are not a systemic exposure to the class.
LOCAL_FORM = re.compile(
    r"(?<![\w-])(topical|ophthalmic|otic|shampoo|medicated pad|soap|mouthwash|vaginal)(?![\w-])",
    re.IGNORECASE,
)
# "(For Patients Taking ...)" / "(for Patients Not Taking ...)" in a kit name: audience, not content.
PACK_AUDIENCE_TEXT = re.compile(r"\(\s*for patients\b[^)\]]*[)\]]?", re.IGNORECASE)

# --------------------------------------------------------------------------------------------
# Drug classes: ingredient names. A code joins a class when its display names one of these.
# "class_sets" are the value sets *dedicated* to the class: a term seen in their displays, or
# taken from codes.csv, is verified=yes; anything else is background knowledge (verified=no).
# --------------------------------------------------------------------------------------------

CDC = "cdc-opioid-cds-r4"
VSAC = "vsac-ecqm-content-qicore-2024"


def vsac(oid: str) -> str:
    """Relative path of a VSAC value set file in the shared folder."""
    return f"{VSAC}/valueset-{oid}.json"


OPIOID_SETS = (
    f"{CDC}/opioid-analgesics-with-ambulatory-misuse-potential.json",
    f"{CDC}/extended-release-opioid-with-ambulatory-misuse-potential.json",
    f"{CDC}/non-synthetic-opioid-medications.json",
    f"{CDC}/synthetic-opioid-medications.json",
    f"{CDC}/fentanyl-type-medications.json",
    f"{CDC}/oxycodone-medications.json",
    f"{CDC}/methadone-medications.json",
    f"{CDC}/buprenorphine-medications.json",
    f"{CDC}/buprenorphine-and-methadone-medications.json",
    vsac("2.16.840.1.113762.1.4.1196.226"),  # Opioids, All
    vsac("2.16.840.1.113762.1.4.1046.241"),  # Schedule II, III and IV Opioid Medications
)
BENZO_SETS = (
    f"{CDC}/benzodiazepine-medications.json",
    vsac("2.16.840.1.113762.1.4.1125.1"),  # Schedule IV Benzodiazepines
    vsac("2.16.840.1.113883.3.464.1003.196.12.1522"),  # Beers benzodiazepines
)
ZDRUG_SETS = (vsac("2.16.840.1.113883.3.464.1003.196.12.1480"),)  # Beers nonbenzodiazepine hypnotics
BARBITURATE_SETS = (f"{CDC}/barbiturate-medications.json", vsac("2.16.840.1.113883.3.464.1003.1055"))
ANTIHISTAMINE_SETS = (vsac("2.16.840.1.113883.3.464.1003.1043"),)  # Beers antihistamines
MUSCLE_RELAXANT_SETS = (vsac("2.16.840.1.113883.3.464.1003.1062"),)  # Beers skeletal muscle relaxants
# Sets that mix classes: codes are taken from them only by ingredient (never wholesale).
BROAD_DRUG_SETS = (
    f"{CDC}/cns-depressant-medications.json",
    f"{CDC}/non-opioid-cns-depressant-medications.json",  # archived upstream (2023-05 expansion)
    vsac("2.16.840.1.113762.1.4.1248.134"),  # Central Nervous System Depressants
)
# Other RxNorm sets read only for agonist-containing products (they mostly hold antagonists/MOUD).
OTHER_DRUG_SETS = (
    f"{CDC}/naloxone-medications.json",
    vsac("2.16.840.1.113762.1.4.1248.119"),  # Opioid Antagonist
    vsac("2.16.840.1.113762.1.4.1046.269"),  # Medications for Opioid Use Disorder (MOUD)
)


@dataclass(frozen=True)
class DrugClass:
    """One engine drug class: its ingredient terms and the value sets dedicated to it."""

    group: str
    terms: tuple[str, ...]
    class_sets: tuple[str, ...] = ()
    codes_csv_concept: str | None = None
    unverified_source: str = UNVERIFIED_DRUG_SOURCE  # source of terms no shared file confirms


DRUG_CLASSES: tuple[DrugClass, ...] = (
    DrugClass(
        "opioid_agonist",
        # Full and partial agonists and mixed agonist-antagonists (all cause CNS/respiratory
        # depression and are blocked by naltrexone). Antagonists (naloxone, naltrexone,
        # nalmefene, samidorphan) are deliberately absent. Peripherally acting antidiarrhoeals
        # (loperamide, diphenoxylate, difenoxin, eluxadoline) and dextromethorphan are absent:
        # the CDC/VSAC opioid sets leave them out too.
        (
            "alfentanil",
            "benzhydrocodone",
            "buprenorphine",
            "butorphanol",
            "codeine",
            "dextromoramide",
            "dextropropoxyphene",
            "diamorphine",
            "dihydrocodeine",
            "dipipanone",
            "fentanyl",
            "heroin",
            "hydrocodone",
            "hydromorphone",
            "levomethadyl",
            "levorphanol",
            "meperidine",
            "meptazinol",
            "methadone",
            "morphine",
            "nalbuphine",
            "oliceridine",
            "opium",
            "oxycodone",
            "oxymorphone",
            "paregoric",
            "pentazocine",
            "pethidine",
            "pholcodine",
            "propoxyphene",
            "remifentanil",
            "sufentanil",
            "tapentadol",
            "tramadol",
        ),
        OPIOID_SETS,
        "cns_depressant_ingredient_opioid",
    ),
    DrugClass(
        "benzodiazepine",
        (
            "alprazolam",
            "bromazepam",
            "chlordiazepoxide",
            "clobazam",
            "clonazepam",
            "clorazepate",
            "diazepam",
            "estazolam",
            "flunitrazepam",
            "flurazepam",
            "halazepam",
            "lorazepam",
            "lormetazepam",
            "midazolam",
            "nitrazepam",
            "oxazepam",
            "prazepam",
            "quazepam",
            "remimazolam",
            "temazepam",
            "triazolam",
        ),
        BENZO_SETS,
        "cns_depressant_ingredient_benzodiazepine",
    ),
    DrugClass(
        "z_drug",
        ("eszopiclone", "zaleplon", "zolpidem", "zopiclone"),
        ZDRUG_SETS,
        "cns_depressant_ingredient_z_drug",
    ),
    DrugClass(
        "barbiturate",
        (
            "amobarbital",
            "butabarbital",
            "butalbital",
            "butobarbital",
            "hexobarbital",
            "mephobarbital",
            "methohexital",
            "pentobarbital",
            "phenobarbital",
            "primidone",
            "secobarbital",
            "thiopental",
        ),
        BARBITURATE_SETS,
        "cns_depressant_ingredient_barbiturate",
    ),
    DrugClass("gabapentinoid", ("gabapentin", "pregabalin"), (), "cns_depressant_ingredient_gabapentinoid"),
    DrugClass(
        "sedating_antihistamine",
        # First-generation (sedating) H1 antihistamines only; chlophedianol (antitussive) and the
        # antimuscarinics sharing the Beers set (scopolamine, hyoscyamine, ...) are not included.
        (
            "bromodiphenhydramine",
            "brompheniramine",
            "carbinoxamine",
            "chlorcyclizine",
            "chlorpheniramine",
            "clemastine",
            "cyclizine",
            "cyproheptadine",
            "dexbrompheniramine",
            "dexchlorpheniramine",
            "dimenhydrinate",
            "diphenhydramine",
            "doxylamine",
            "hydroxyzine",
            "meclizine",
            "phenindamine",
            "promethazine",
            "pyrilamine",
            "tripelennamine",
            "triprolidine",
        ),
        ANTIHISTAMINE_SETS,
        "cns_depressant_ingredient_sedating_antihistamine",
    ),
    DrugClass(
        "antipsychotic",
        (
            # typical
            "chlorpromazine",
            "droperidol",
            "fluphenazine",
            "flupenthixol",
            "haloperidol",
            "loxapine",
            "benperidol",
            "levomepromazine",
            "mesoridazine",
            "methotrimeprazine",
            "molindone",
            "perphenazine",
            "pimozide",
            "prochlorperazine",
            "promazine",
            "thioridazine",
            "thiothixene",
            "trifluoperazine",
            "triflupromazine",
            "zuclopenthixol",
            # atypical
            "amisulpride",
            "aripiprazole",
            "asenapine",
            "brexpiprazole",
            "cariprazine",
            "clozapine",
            "iloperidone",
            "lumateperone",
            "lurasidone",
            "olanzapine",
            "paliperidone",
            "pimavanserin",
            "quetiapine",
            "risperidone",
            "sulpiride",
            "ziprasidone",
            "zotepine",
        ),
    ),
    DrugClass(
        "tca",
        (
            "amitriptyline",
            "amoxapine",
            "clomipramine",
            "desipramine",
            "doxepin",
            "imipramine",
            "nortriptyline",
            "protriptyline",
            "trimipramine",
        ),
    ),
    DrugClass(
        "maoi",
        # Irreversible non-selective, reversible MAO-A, and MAO-B inhibitors. Linezolid,
        # methylene blue and procarbazine (MAO inhibition as a side property) are not included.
        (
            "isocarboxazid",
            "moclobemide",
            "phenelzine",
            "rasagiline",
            "safinamide",
            "selegiline",
            "tranylcypromine",
        ),
    ),
    DrugClass(
        "other_central_muscle_relaxant",
        # Baclofen itself is its own class; dantrolene acts peripherally and is not included.
        (
            "carisoprodol",
            "chlorzoxazone",
            "cyclobenzaprine",
            "metaxalone",
            "methocarbamol",
            "orphenadrine",
            "tizanidine",
        ),
        MUSCLE_RELAXANT_SETS,
        "cns_depressant_ingredient_other_muscle_relaxant",
    ),
    DrugClass(
        "antihypertensive",
        # Drugs whose main use is lowering blood pressure. Loop diuretics, nitrates and
        # ophthalmic timolol are left out (see README).
        (
            # ACE inhibitors
            "benazepril",
            "captopril",
            "enalapril",
            "enalaprilat",
            "fosinopril",
            "lisinopril",
            "moexipril",
            "perindopril",
            "quinapril",
            "ramipril",
            "trandolapril",
            # angiotensin receptor blockers, renin inhibitor
            "azilsartan",
            "candesartan",
            "eprosartan",
            "irbesartan",
            "losartan",
            "olmesartan",
            "telmisartan",
            "valsartan",
            "aliskiren",
            # calcium-channel blockers
            "amlodipine",
            "clevidipine",
            "diltiazem",
            "felodipine",
            "isradipine",
            "levamlodipine",
            "nicardipine",
            "nifedipine",
            "nisoldipine",
            "verapamil",
            # beta blockers
            "acebutolol",
            "atenolol",
            "betaxolol",
            "bisoprolol",
            "carvedilol",
            "labetalol",
            "metoprolol",
            "nadolol",
            "nebivolol",
            "oxprenolol",
            "pindolol",
            "propranolol",
            # thiazide and thiazide-like diuretics, aldosterone antagonists
            "chlorothiazide",
            "chlorthalidone",
            "cyclopenthiazide",
            "hydrochlorothiazide",
            "indapamide",
            "methyclothiazide",
            "metolazone",
            "eplerenone",
            "spironolactone",
            # central, alpha-1 blockers, direct vasodilators
            "clonidine",
            "guanfacine",
            "methyldopa",
            "doxazosin",
            "prazosin",
            "terazosin",
            "hydralazine",
            "minoxidil",
            "reserpine",
        ),
    ),
    DrugClass("levodopa", ("levodopa", "foslevodopa")),
    DrugClass("lithium", ("lithium",)),
    DrugClass("naltrexone", ("naltrexone",)),
    DrugClass(
        "strong_cns_depressant",
        # Strong CNS depressants outside the other classes (issue #16; UNVERIFIED, pharmacist sign-off
        # pending): oxybates (boxed CNS/respiratory-depression warning), meprobamate, chloral hydrate,
        # clomethiazole, general/procedural sedatives. Reading it in BAC-C04 changes that rule (see the
        # pack's BAC-C04 local_addition). Orexin antagonists, trazodone, mirtazapine, ketamine and
        # cannabinoids are deliberately NOT in it (README "Needs pharmacist / clinical review").
        (
            "oxybate",
            "oxybates",
            "meprobamate",
            "chloral hydrate",
            "clomethiazole",
            "chlormethiazole",
            "dexmedetomidine",
            "propofol",
            "fospropofol",
            "paraldehyde",
            "ethchlorvynol",
            "glutethimide",
            "methyprylon",
        ),
        unverified_source=UNVERIFIED_DRUG_SOURCE[:-1] + "; pharmacist sign-off pending, issue #16)",
    ),
)

# Term context (rules/vocabulary/context.csv): what the runtime term fallback does with the words
# around a matched term (issue #16). Codes never go through this; only displays/free text do.
# (rule, cue, kinds, groups). kinds/groups are ";"-separated, "*" = all groups.
#   boundary   a clause ends here (cues never reach across it)
#   scope      how many words a cue reaches (the cue column holds the number)
#   pseudo     a phrase that looks like a cue but is not one ("not elsewhere classified")
#   negation   cue before the term in its clause: no match ("no history of", "without", "denies",
#              "family history of" -- someone else's condition)
#   negation_after  cue after the term in its clause ("ruled out")
#   prefix     word glued before the term ("non-psychotic", "pre-diabetes"): no match
#   history    cue before the term: the match goes to kind condition_history for the listed groups
#              (groups whose history is its own fact); for every other group history stays active
#   local_form a word anywhere in a drug text that makes it a local-only product: no drug class
# The drug class of every pack (rules/*/pack.yaml ``drug: class:``): a local-only form of a pack's own
# drug is still that drug (the pack's product/route rules flag a topical baclofen order), so the
# local_form rows apply to every other class only.
PACK_DRUG_CLASSES = tuple(
    sorted(
        {
            m.group(1)
            for pack in (Path(__file__).resolve().parents[1] / "rules").glob("*/pack.yaml")
            for m in re.finditer(
                r"^  drug:\n    class: (\w+)", pack.read_text(encoding="utf-8"), re.MULTILINE
            )
        }
    )
)
CONTEXT_SOURCE = "matching policy, issue #16 (NegEx-style cue lists; researcher background knowledge)"
_COND = "condition_group;condition_history;indication"
TERM_CONTEXT: tuple[tuple[str, str, str, str], ...] = (
    *((("boundary", b, "*", "*")) for b in (".", ";", ":", "(", ")", "[", "]", "\n", "but", "however",
                                              "although", "except", "apart from", "aside from")),
    ("boundary", ",", _COND, "*"),
    ("scope", "6", "*", "*"),
    *(("pseudo", p, "*", "*") for p in (
        "not elsewhere classified",
        "not otherwise specified",
        "not due to",
        "not ruled out",
        "not excluded",
        "no longer in remission",
        "without mention of remission",
        "gram negative",
        "no change in",
        "no increase in",
        "not only",
        "not necessarily",
    )),
    *(("negation", n, _COND, "*") for n in (
        "no",
        "not",
        "without",
        "denies",
        "denied",
        "deny",
        "negative for",
        "neg for",
        "no history of",
        "no hx of",
        "no h/o",
        "no evidence of",
        "no signs of",
        "no sign of",
        "free of",
        "absence of",
        "never had",
        "never diagnosed with",
        "ruled out for",
        "family history of",
        "family history",
        "family hx of",
        "fh of",
        "fhx of",
    )),
    *(("negation_after", n, _COND, "*") for n in (
        "ruled out",
        "was ruled out",
        "excluded",
        "denied",
        "not present",
        "absent",
        "unlikely",
    )),
    *(("prefix", p, _COND, "*") for p in ("non", "pre", "anti", "pseudo")),
    # heat stroke is not a stroke
    *(("prefix", p, _COND, "stroke;spasticity_stroke") for p in ("heat", "sun")),
    *(("history", h, _COND, ";".join(CONDITION_HISTORY_GROUPS)) for h in (
        "history of",
        "hx of",
        "h/o",
        "personal history of",
        "past history of",
        "previous",
        "prior",
        "past",
        "old",
        "healed",
        "remote",
    )),
    *(("negation", a, "drug_class", "*") for a in ("for patients taking", "for patients not taking")),
    *(("local_form", f, "drug_class", ";".join(g for g in DRUG_CLASS_GROUPS if g not in PACK_DRUG_CLASSES))
      for f in (
        "topical",
        "ophthalmic",
        "otic",
        "shampoo",
        "medicated pad",
        "soap",
        "mouthwash",
        "vaginal",
        "cream",
        "ointment",
        "lotion",
        "eye drops",
        "ear drops",
    )),
)

# Examples rendered into the README's "How matching works" and executed by a test against the runtime:
# (kind, system, code, display or free text, expected groups).
MATCHING_EXAMPLES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    # code not in the vocabulary (value set not in shared/): the display text decides
    ("condition_group", SNOMED, "58214004", "Schizophrenia", ("psychosis",)),
    ("condition_group", ICD10CM, "I61.9", "Intracerebral haemorrhage", ("stroke",)),
    ("condition_group", "", "", "Major depressive disorder, severe without psychotic features", ()),
    ("condition_group", "", "", "non-psychotic depression", ()),
    ("condition_group", "", "", "No history of suicidal ideation", ()),
    ("condition_group", "", "", "Family history of epilepsy", ()),
    ("condition_group", "", "", "Epilepsy; no history of status epilepticus", ("epilepsy",)),
    ("condition_group", "", "", "Psychosis ruled out", ()),
    ("condition_group", "", "", "Schizophrenia, not elsewhere classified", ("psychosis",)),
    ("condition_group", "", "", "denies psychosis, suicidal ideation", ("depression_suicidality",)),
    ("condition_group", "", "", "Heat stroke", ()),
    ("condition_group", "", "", "History of stroke", ("stroke",)),
    ("condition_group", "", "", "pre-diabetes", ()),
    ("condition_group", "", "", "Personal history of peptic ulcer disease", ()),
    ("condition_history", "", "", "Personal history of peptic ulcer disease", ("peptic_ulcer",)),
    ("condition_history", ICD10CM, "Z87.11", "", ("peptic_ulcer",)),
    ("condition_group", "", "", "Gastric ulcer", ("peptic_ulcer",)),
    ("drug_class", "", "", "HYDROcodone-acetaminophen 5-325", ("opioid_agonist",)),
    ("drug_class", "", "", "carbidopa-levodopa 25/100", ("levodopa",)),
    ("drug_class", "", "", "apomorphine 2 mg", ()),
    ("drug_class", "", "", "Xanax 0.5 mg", ("benzodiazepine",)),
    ("drug_class", "", "", "Norco 5/325", ("opioid_agonist",)),
    ("drug_class", "", "", "Lyrica 75 mg", ("gabapentinoid", "pregabalin")),
    ("drug_class", "", "", "Xyrem 4.5 g at bedtime", ("strong_cns_depressant",)),
    ("drug_class", "", "", "minoxidil 5% topical solution", ()),
    ("drug_class", "", "", "diphenhydramine 2% topical cream", ()),
    ("drug_class", RXNORM, "795774", "", ()),
)

# Brand names of common CNS depressants for free text (e.g. a home-medication list saying
# "Xanax 0.5 mg"). Background knowledge, verified=no, pharmacist sign-off pending. Only brands
# whose every ingredient of the class is obvious from the brand are listed; combination brands
# get only the classes of their CNS-depressant ingredients (Norco -> opioid_agonist).
BRAND_TERMS_SOURCE = "unverified brand list (researcher background knowledge; pharmacist sign-off pending)"
CNS_BRAND_TERMS: dict[str, tuple[str, ...]] = {
    "benzodiazepine": ("Xanax", "Valium", "Ativan", "Klonopin", "Restoril", "Halcion", "Librium"),
    "z_drug": ("Ambien", "Lunesta", "Sonata", "Edluar", "Intermezzo"),
    "gabapentinoid": ("Neurontin", "Gralise", "Horizant", "Lyrica"),
    "opioid_agonist": (
        "Norco",
        "Vicodin",
        "Lortab",
        "Percocet",
        "OxyContin",
        "Roxicodone",
        "Dilaudid",
        "MS Contin",
        "Duragesic",
        "Ultram",
        "Nucynta",
        "Suboxone",
        "Subutex",
        "Tylenol with Codeine",
    ),
    "barbiturate": ("Fioricet", "Fiorinal"),
    "other_central_muscle_relaxant": ("Soma", "Flexeril", "Zanaflex", "Robaxin", "Skelaxin"),
    "sedating_antihistamine": ("Phenergan", "Benadryl", "Vistaril", "Atarax"),
    "strong_cns_depressant": ("Xyrem", "Xywav", "Lumryz", "Precedex", "Diprivan"),
}

# Baclofen brand names (for free text / brand-level displays). Kemstro and Lioresal appear in
# codes.csv product displays; the others only in the shared clinical knowledge pack.
BACLOFEN_BRANDS = ("Lioresal", "Kemstro", "Gablofen", "Ozobax", "Fleqsuvy", "Lyvispah")

# --------------------------------------------------------------------------------------------
# codes.csv concepts -> (kind, group) targets. Unknown concepts stop the build.
# --------------------------------------------------------------------------------------------

BACLOFEN_PRODUCT_CONCEPTS = ("baclofen_oral_SCD", "baclofen_oral_SBD", "baclofen_intrathecal_SCD")
CODES_CSV_TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "baclofen_ingredient": (("drug_class", "baclofen"), ("allergy_group", "baclofen")),
    "baclofen_oral_SCD": (("drug_class", "baclofen"), ("allergy_group", "baclofen")),
    "baclofen_oral_SBD": (("drug_class", "baclofen"), ("allergy_group", "baclofen")),
    "baclofen_intrathecal_SCD": (("drug_class", "baclofen"), ("allergy_group", "baclofen")),
    "egfr": (("observation", "egfr"),),
    "creatinine_serum_blood": (("observation", "creatinine"),),
    "pregnancy_test": (("observation", "pregnancy_test"),),
    "pregnancy": (("condition_group", "pregnancy"),),
    "lactation": (("condition_group", "lactation"),),
    "seizure_disorder": (("condition_group", "epilepsy"),),
    "alcohol_use_disorder": (
        ("condition_group", "alcohol_use_disorder"),
        ("condition_group", "substance_use_disorder"),
        ("indication", "aud"),
    ),
    "esrd": (("condition_group", "esrd"),),
    "ckd_stage5": (("condition_group", "ckd_stage5"),),
    "dialysis": (("condition_group", "dialysis_procedure"),),
    "indication_multiple_sclerosis": (
        ("condition_group", "multiple_sclerosis"),
        ("indication", "spasticity"),
    ),
    "indication_spinal_cord_injury": (
        ("condition_group", "spinal_cord_injury"),
        ("indication", "spasticity"),
    ),
    "indication_cerebral_palsy": (
        ("condition_group", "cerebral_palsy"),
        ("indication", "spasticity_cerebral_palsy"),
    ),
    "indication_spasticity": (("condition_group", "spasticity"), ("indication", "spasticity")),
    "cns_depressant_ingredient_opioid": (("drug_class", "opioid_agonist"),),
    "cns_depressant_ingredient_benzodiazepine": (("drug_class", "benzodiazepine"),),
    "cns_depressant_ingredient_gabapentinoid": (("drug_class", "gabapentinoid"),),
    "cns_depressant_ingredient_z_drug": (("drug_class", "z_drug"),),
    "cns_depressant_ingredient_sedating_antihistamine": (("drug_class", "sedating_antihistamine"),),
    "cns_depressant_ingredient_barbiturate": (("drug_class", "barbiturate"),),
    "cns_depressant_ingredient_other_muscle_relaxant": (("drug_class", "other_central_muscle_relaxant"),),
}
# Concepts deliberately not used, with the reason (written to excluded.csv / README).
CODES_CSV_EXCLUDED: dict[str, tuple[str, str, str]] = {
    # concept: (kind, group it could be mistaken for, reason)
    "seizure_history": (
        "condition_group",
        "epilepsy",
        "history of a single seizure is not epilepsy/seizure disorder",
    ),
    "alcohol_use_risk": (
        "condition_group",
        "alcohol_use_disorder",
        "risky-drinking finding, not a use disorder (feeds alcohol_use_current, not a group)",
    ),
}
CODES_CSV_IGNORED = {
    "platelet_count": "no engine group (thrombocytopenia monitoring not implemented, knowledge pack BAC-M03)",
    "alcohol_screen_audit_c": "AUDIT-C score is a screen, not a diagnosis; no engine group",
    "kidney_transplant_recipient": "no engine group (renal band comes from eGFR/dialysis)",
    "ckd_or_renal_history": "CKD 1-3 / renal history: no engine group (renal band comes from eGFR)",
    "cns_depressant_ingredient_alcohol": "ethanol is not a medication class (see alcohol_use_current)",
}

# --------------------------------------------------------------------------------------------
# Condition groups from value sets: (group, kind, file, include regex, exclude regex).
# An include regex (when given) must match the display; an exclude regex must not.
# --------------------------------------------------------------------------------------------

PREGNANCY_EXCLUDE = (
    r"^(history of|personal history|past pregnancy)|\b(postpartum|peripartum|puerperal)\b"
    r"|^(miscarriage|spontaneous abortion|induced abortion|missed abortion|complete abortion)"
)
SUD_INCLUDE = (
    r"abuse|dependen|use disorder|misuse|addict|alcoholism|\buse\b|withdrawal|drug user|injecting|injects"
    r"|smokes drugs|sniffs drugs|shares (needles|syringes|drug)|sharing of drug|drug-related|drug habit"
)
SUD_EXCLUDE = (
    r"poisoning|overdose|toxic effect|adverse effect|accidental|\bfetal\b|\bfetus\b|newborn|neonat"
    r"|family member|nicotine|tobacco|caffeine"
)
ALCOHOL = r"\balcohol|\bethanol\b"
RESP_INCLUDE = r"apnea|apnoea|hypoventilation|hypoxemia|breathing|cheyne"
RESP_EXCLUDE = r"narcolepsy|circadian|induced sleep disorder|tachypnea|high altitude"
# Epilepsy vs single/provoked seizures (issue #16 choice): a first/single seizure and seizures due to
# substance withdrawal or fever are not epilepsy and leave the group; "Unspecified convulsions" (R56.9)
# and post-traumatic seizures stay, because a code that cannot tell is read conservatively (README).
SEIZURE_EXCLUDE = (
    r"dissociative convulsions|psychogenic|non-?epileptic|convulsive syncope|^history of"
    r"|^first .*seizure|seizures? co-occurrent and due to .*withdrawal|febrile convulsions"
)
SEIZURE_WHY = (
    "non-epileptic events, seizure history, or a single (first) or provoked (withdrawal, febrile) "
    "seizure: not epilepsy"
)
LACTATION_EXCLUDE = r"suppressed lactation|feeding intention|antenatal"
DIALYSIS_PROC_EXCLUDE = (
    r"^removal of|^aspiration of|^flushing of|^measurement of|hemoperfusion|albumin hemodialysis"
)

SUD_STRICT_SETS = (
    vsac("2.16.840.1.113883.3.464.1003.106.12.1001"),  # Substance Use Disorder
    vsac("2.16.840.1.113762.1.4.1111.171"),  # Opioid Use Disorder
)
SUD_BROAD_SETS = (
    vsac("2.16.840.1.113762.1.4.1029.320"),  # Substance Abuse
    f"{CDC}/conditions-documenting-substance-misuse.json",
    f"{CDC}/opioid-misuse-disorders.json",
)


@dataclass(frozen=True)
class SetRule:
    """Take codes of one value set into one group, optionally filtered by display."""

    kind: str
    group: str
    file: str
    include: str | None = None  # candidate filter: codes not matching are simply not about this group
    exclude: str | None = None  # matching codes are left out and recorded in excluded.csv
    require: str | None = None  # codes NOT matching are left out and recorded in excluded.csv
    code_filter: Callable[[str], bool] | None = None
    why: str = ""
    systems: tuple[str, ...] | None = None  # when given, codes of other systems are not candidates


def _g20(code: str) -> bool:
    return code.startswith("G20")


SET_RULES: tuple[SetRule, ...] = (
    SetRule(
        "condition_group",
        "epilepsy",
        vsac("2.16.840.1.113883.3.464.1003.105.12.1206"),
        exclude=SEIZURE_EXCLUDE,
        why=SEIZURE_WHY,
    ),
    SetRule(
        "condition_group",
        "epilepsy",
        vsac("2.16.840.1.113762.1.4.1248.171"),
        exclude=SEIZURE_EXCLUDE,
        why=SEIZURE_WHY,
    ),
    SetRule(
        "condition_group",
        "pregnancy",
        vsac("2.16.840.1.113883.3.526.3.378"),
        exclude=PREGNANCY_EXCLUDE,
        why="post-partum / outcome / past-pregnancy codes are not a current pregnancy",
    ),
    SetRule("condition_group", "pregnancy", vsac("2.16.840.1.113883.3.3157.4055"), exclude=PREGNANCY_EXCLUDE),
    SetRule(
        "condition_group",
        "lactation",
        vsac("2.16.840.1.113762.1.4.1047.73"),
        exclude=LACTATION_EXCLUDE,
        why="intention to breastfeed / suppressed lactation is not current lactation",
    ),
    SetRule("condition_group", "esrd", vsac("2.16.840.1.113883.3.526.3.353")),
    SetRule(
        "condition_group",
        "dialysis",
        vsac("2.16.840.1.113883.3.526.3.353"),
        include=r"on dialysis",
        why="only the ESRD code that states dialysis dependence",
    ),
    SetRule("condition_group", "ckd_stage5", vsac("2.16.840.1.113883.3.526.3.1002")),
    SetRule("condition_group", "aki", vsac("2.16.840.1.113762.1.4.1110.53")),
    *(
        SetRule(
            "condition_group",
            "dialysis_procedure",
            f,
            exclude=DIALYSIS_PROC_EXCLUDE,
            why="catheter care, access measurements, hemoperfusion and liver (albumin) dialysis are not "
            "renal replacement therapy",
        )
        for f in (
            vsac("2.16.840.1.113883.3.464.1003.109.12.1013"),  # Dialysis Services
            vsac("2.16.840.1.113883.3.526.3.1083"),  # Hemodialysis
            vsac("2.16.840.1.113883.3.526.3.1084"),  # Peritoneal Dialysis
            vsac("2.16.840.1.113762.1.4.1248.199"),  # Hospital Based Dialysis Services
        )
    ),
    *(SetRule("condition_group", "substance_use_disorder", f, exclude=SUD_EXCLUDE) for f in SUD_STRICT_SETS),
    *(
        SetRule(
            "condition_group",
            "substance_use_disorder",
            f,
            require=SUD_INCLUDE,
            exclude=SUD_EXCLUDE,
            why="broad set: poisonings/overdoses, organ damage, fetal/neonatal effects, family-member codes "
            "and nicotine are not the patient's substance use disorder",
        )
        for f in SUD_BROAD_SETS
    ),
    *(
        SetRule("condition_group", "alcohol_use_disorder", f, include=ALCOHOL, exclude=SUD_EXCLUDE)
        for f in SUD_STRICT_SETS
    ),
    *(
        SetRule(
            "condition_group",
            "alcohol_use_disorder",
            f,
            include=ALCOHOL,
            require=SUD_INCLUDE,
            exclude=SUD_EXCLUDE,
            why="broad set: alcohol poisoning, alcohol-related organ damage, fetal/neonatal effects and "
            "family-member codes are not the patient's alcohol use disorder",
        )
        for f in SUD_BROAD_SETS
    ),
    SetRule(
        "condition_group",
        "alcohol_use_disorder",
        vsac("2.16.840.1.113883.3.464.1003.105.12.1209"),
        include=ALCOHOL,
        exclude=SUD_EXCLUDE,
    ),
    SetRule(
        "condition_group",
        "respiratory_impairment",
        f"{CDC}/conditions-documenting-sleep-disordered-breathing.json",
        include=RESP_INCLUDE,
        exclude=RESP_EXCLUDE,
        why="narcolepsy, circadian and substance-induced sleep disorders and high-altitude periodic "
        "breathing are not respiratory impairment",
    ),
    SetRule(
        "condition_group",
        "multiple_sclerosis",
        vsac("2.16.840.1.113762.1.4.1248.174"),
        include=r"^multiple sclerosis$",
    ),
    SetRule(
        "condition_group",
        "multiple_sclerosis",
        vsac("2.16.840.1.113762.1.4.1248.239"),
        include=r"multiple sclerosis",
    ),
    SetRule(
        "condition_group",
        "spinal_cord_injury",
        vsac("2.16.840.1.113762.1.4.1248.239"),
        include=r"spinal cord lesion|^quadriplegia, c\d",
    ),
    # BAC-S04 (knowledge file §4.3): spinal cord injury at T6 or above — the cervical-level codes of the
    # set (tetraplegia C1-C4 / C5-C7, cord lesion between the 1st-4th / 5th-7th cervical vertebrae);
    # "Quadriplegia, unspecified" is left out (not necessarily a cord injury)
    SetRule(
        "condition_group",
        "sci_t6_or_above",
        vsac("2.16.840.1.113762.1.4.1248.239"),
        include=r"spinal cord lesion between (first|fifth) and (fourth|seventh) cervical|^quadriplegia, c\d",
    ),
    SetRule(
        "condition_group", "cerebral_palsy", vsac("2.16.840.1.113762.1.4.1248.239"), include=r"cerebral palsy"
    ),
    SetRule(
        "condition_group",
        "parkinson",
        vsac("2.16.840.1.113762.1.4.1248.174"),
        code_filter=_g20,
        why="ICD-10-CM G20.* only (secondary/drug-induced parkinsonism G21 excluded)",
    ),
    # Indications that have code sources.
    SetRule(
        "indication", "spasticity", vsac("2.16.840.1.113762.1.4.1248.174"), include=r"^multiple sclerosis$"
    ),
    SetRule(
        "indication",
        "spasticity",
        vsac("2.16.840.1.113762.1.4.1248.239"),
        include=r"multiple sclerosis|spinal cord lesion|^quadriplegia, c\d",
    ),
    SetRule(
        "indication",
        "spasticity_cerebral_palsy",
        vsac("2.16.840.1.113762.1.4.1248.239"),
        include=r"cerebral palsy",
    ),
    SetRule("indication", "spasticity_parkinson", vsac("2.16.840.1.113762.1.4.1248.174"), code_filter=_g20),
    *(
        SetRule("indication", "aud", f, include=ALCOHOL, exclude=SUD_EXCLUDE)
        for f in (*SUD_STRICT_SETS, vsac("2.16.840.1.113883.3.464.1003.105.12.1209"))
    ),
    *(
        SetRule(
            "indication",
            "aud",
            f,
            include=ALCOHOL,
            require=SUD_INCLUDE,
            exclude=SUD_EXCLUDE,
            why="broad set: alcohol poisoning, alcohol-related organ damage, fetal/neonatal effects and "
            "family-member codes are not an alcohol use disorder indication",
        )
        for f in SUD_BROAD_SETS
    ),
    # Observations.
    SetRule("observation", "egfr", vsac("2.16.840.1.113883.3.6929.3.1000")),
    SetRule("observation", "creatinine", vsac("2.16.840.1.113883.3.666.5.2363")),
    SetRule("observation", "creatinine", vsac("2.16.840.1.113762.1.4.1248.21")),
    SetRule("observation", "pregnancy_test", vsac("2.16.840.1.113883.3.464.1003.111.12.1011")),
)

# Value sets read on purpose but not used for any group (listed in the README).
UNUSED_SETS: dict[str, str] = {
    vsac("2.16.840.1.113883.3.600.1.1623"): "Pregnancy Obstetric or Maternal Diagnoses: mixes delivery and "
    "puerperium codes with pregnancy; the narrower VSAC Pregnancy + Pregnant State sets are used instead",
    vsac(
        "2.16.840.1.113762.1.4.1029.335"
    ): "Renal Disease (broad, CKD 1-5 + glomerular disease): renal band comes "
    "from eGFR; ESRD/CKD5 have their own sets",
    vsac("2.16.840.1.113883.3.464.1003.109.12.1012"): "Kidney Transplant procedures: no engine group",
    vsac("2.16.840.1.113883.3.464.1003.109.12.1029"): "Kidney Transplant Recipient: no engine group",
    vsac(
        "2.16.840.1.113883.3.464.1003.105.12.1208"
    ): "Benzodiazepine Withdrawal: sedative dependence codes are already in the Substance Use Disorder set",
    vsac("2.16.840.1.113762.1.4.1045.127"): "Platelet Count: no engine group",
    f"{CDC}/benzodiazepine-urine-drug-screening-tests.json": "urine drug screens: no engine group",
    f"{CDC}/opioid-urine-drug-screening.json": "urine drug screens: no engine group",
}

# --------------------------------------------------------------------------------------------
# Codes emitted by the shared Synthea data (code + display verified from the bundles).
# Used for term-only groups where the test data uses a code no value set lists.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheaCode:
    """A code expected in the shared Synthea bundles, and the group it belongs to."""

    kind: str
    group: str
    system: str
    code: str
    fallback_display: str


SYNTHEA_CODES: tuple[SyntheaCode, ...] = (
    SyntheaCode("condition_group", "diabetes", SNOMED, "44054006", "Diabetes mellitus type 2 (disorder)"),
    SyntheaCode("condition_group", "stroke", SNOMED, "230690007", "Cerebrovascular accident (disorder)"),
    SyntheaCode(
        "indication", "spasticity_stroke", SNOMED, "230690007", "Cerebrovascular accident (disorder)"
    ),
    SyntheaCode("condition_group", "tbi", SNOMED, "127295002", "Traumatic brain injury (disorder)"),
    SyntheaCode("condition_group", "tbi", SNOMED, "275272006", "Brain damage - traumatic"),
    SyntheaCode("indication", "spasticity_tbi", SNOMED, "127295002", "Traumatic brain injury (disorder)"),
    SyntheaCode("indication", "spasticity_tbi", SNOMED, "275272006", "Brain damage - traumatic"),
    SyntheaCode("condition_group", "rheumatic_disorder", SNOMED, "69896004", "Rheumatoid arthritis"),
    SyntheaCode("indication", "rheumatic_spasm", SNOMED, "69896004", "Rheumatoid arthritis"),
    SyntheaCode("indication", "musculoskeletal_pain", SNOMED, "278860009", "Chronic low back pain (finding)"),
    SyntheaCode("indication", "musculoskeletal_pain", SNOMED, "1121000119107", "Chronic neck pain (finding)"),
    SyntheaCode(
        "condition_group",
        "respiratory_impairment",
        SNOMED,
        "185086009",
        "Chronic obstructive bronchitis (disorder)",
    ),
    SyntheaCode(
        "condition_group", "respiratory_impairment", SNOMED, "87433001", "Pulmonary emphysema (disorder)"
    ),
    SyntheaCode("condition_group", "respiratory_impairment", SNOMED, "73430006", "Sleep apnea (disorder)"),
    SyntheaCode(
        "condition_group", "substance_use_disorder", SNOMED, "6525002", "Dependent drug abuse (disorder)"
    ),
    SyntheaCode("condition_group", "pregnancy", SNOMED, "198992004", "Antepartum eclampsia"),
    SyntheaCode("condition_group", "pregnancy", SNOMED, "398254007", "Preeclampsia"),
    SyntheaCode("allergy_group", "wheat", SNOMED, "412071004", "Wheat (substance)"),
    SyntheaCode("allergy_group", "wheat", SNOMED, "420174000", "Allergy to wheat"),
    SyntheaCode(
        "observation",
        "lft",
        LOINC,
        "1742-6",
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
    ),
    SyntheaCode(
        "observation",
        "lft",
        LOINC,
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
    ),
    SyntheaCode(
        "observation",
        "lft",
        LOINC,
        "6768-6",
        "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
    ),
    SyntheaCode("observation", "lft", LOINC, "1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma"),
    SyntheaCode("observation", "glucose", LOINC, "2339-0", "Glucose [Mass/volume] in Blood"),
    SyntheaCode("observation", "glucose", LOINC, "2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
    SyntheaCode("observation", "glucose", LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood"),
)

# Codes the shared Synthea data emits that must NOT be read as the group (deny list).
SYNTHEA_DENY: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "condition_group",
        "epilepsy",
        SNOMED,
        "1290882004",
        "history of a seizure (situation), not a seizure disorder",
    ),
    (
        "condition_group",
        "pregnancy",
        SNOMED,
        "19169002",
        "pregnancy outcome (miscarriage), not a current pregnancy",
    ),
    ("condition_group", "pregnancy", SNOMED, "161744009", "past-pregnancy history, not a current pregnancy"),
    ("condition_group", "pregnancy", SNOMED, "35999006", "failed (anembryonic) pregnancy outcome"),
    ("condition_group", "diabetes", SNOMED, "15777000", "prediabetes is not diabetes mellitus"),
    ("condition_group", "diabetes", SNOMED, "714628002", "prediabetes is not diabetes mellitus"),
    ("condition_group", "substance_use_disorder", SNOMED, "55680006", "overdose event, not a use disorder"),
    ("condition_group", "substance_use_disorder", SNOMED, "1149222004", "overdose event, not a use disorder"),
    (
        "condition_group",
        "tbi",
        SNOMED,
        "127294003",
        "'traumatic or nontraumatic' brain injury: origin unknown",
    ),
)

# Creatinine clearance (mL/min, NOT per 1.73 m2): no shared file holds these LOINC codes; each display
# below is the LOINC long common name as published in the public source named with it.
CRCL_CODES: tuple[tuple[str, str, str], ...] = (
    (
        "35591-7",
        "Creatinine renal clearance predicted by Cockcroft-Gault formula",
        "LOINC long common name, verified by the clinical audit (shared/audits/clinical-2026-12.md §5, "
        "'verified name') and in a public LOINC table export",
    ),
    (
        "2164-2",
        "Creatinine renal clearance in 24 hour Urine and Serum or Plasma",
        "LOINC long common name as used in the HL7 Switzerland lab-order IG "
        "(hl7ch/ch-lab-order input/fsh: ObservationDefinition creatinine clearance, unit mL/min)",
    ),
)
# Gestational age (issue #11 item 4; BAC-P01's late-pregnancy tier) and the estimated delivery date.
_GA_SOURCE = (
    "VSAC Estimated Gestational Age at Delivery 2.16.840.1.113762.1.4.1045.26 (eCQM update 2025-05-08), "
    "LOINC long common names as listed there"
)
_EDD_SOURCE = (
    "LOINC long common name as listed in the HL7 IPS pregnancy EDD profile value set and the German "
    "ISiK 'Schwangerschaft Erwarteter Entbindungstermin Methode' value set"
)
GESTATION_CODES: tuple[tuple[str, str, str, str], ...] = (
    ("gestational_age", "11884-4", "Gestational age Estimated", _GA_SOURCE),
    ("gestational_age", "11885-1", "Gestational age Estimated from last menstrual period", _GA_SOURCE),
    ("gestational_age", "18185-9", "Gestational age", _GA_SOURCE),
    ("gestational_age", "49051-6", "Gestational age in weeks", _GA_SOURCE),
    ("delivery_date_estimated", "11778-8", "Delivery date Estimated", _EDD_SOURCE),
    ("delivery_date_estimated", "11779-6", "Delivery date Estimated from last menstrual period", _EDD_SOURCE),
    ("delivery_date_estimated", "11780-4", "Delivery date Estimated from ovulation date", _EDD_SOURCE),
)
# Race-stratified eGFR equations: derived from the displays of the egfr rows (VSAC eGFR set).
EGFR_STRATA: tuple[tuple[str, str], ...] = (
    ("egfr_among_non_blacks", "among non-blacks"),
    ("egfr_among_blacks", "among blacks"),
)

# Condition value sets read by OID from shared/data/valuesets/** when the file is there (issue #16:
# every condition group a rule reads needs ICD-10-CM and SNOMED CT codes). Only value sets that
# reach the project through the read-only shared/ folder may feed the vocabulary; today none of
# these is there, so the groups fall back to term matching and are known gaps in
# tests/test_vocabulary_coverage.py. When the project lead copies a set into shared/, its codes flow
# in on the next build (and the gap test then asks for the gap list to be updated). The OIDs and
# titles are references only; the display filters below are this project's own.
@dataclass(frozen=True)
class WantedSet:
    """A condition value set wanted in shared/, and how its codes map to one engine group."""

    kind: str
    group: str
    oid: str
    title: str
    include: str | None = None  # candidate filter on the display (codes not matching are not about the group)
    exclude: str | None = None  # matching codes are left out and recorded in excluded.csv
    why: str = ""


PSYCHOSIS_INCLUDE = r"psychot|psychosis|schizo|delusion|hallucinat|paranoi"
PSYCHOSIS_EXCLUDE = (
    r"without (psychotic|behavioral)|nonpsychotic|psychotropic|personality|schizotypal|poisoning|family"
)
SUICIDALITY_EXCLUDE = r"poisoning|toxic effect|intentional self-harm|history|family"
STROKE_EXCLUDE = (
    r"heat stroke|sun ?stroke|^(other )?transient"
    r"|(vertebro-basilar|carotid|precerebral) arter(y|ies) syndrome"
    r"|late effects? of cerebrovascular disease|cerebrovascular disease \(disorder\)$"
    r"|chronic cerebral ischemia|^occlusion of cerebral artery \(disorder\)$"
)
HISTORY_FAMILY_EXCLUDE = r"\bhistory\b|family"
DIABETES_EXCLUDE = r"prediabetes|pre-diabetes|\bhistory\b|family"
PSYCHOSIS_WHY = (
    "schizotypal/personality disorders, 'without psychotic features' and family codes are not psychosis"
)
_MHD = ("2.16.840.1.113883.3.464.1003.105.12.1004", "Mental Health Diagnoses")
CONDITION_VALUESETS: tuple[WantedSet, ...] = (
    WantedSet(
        "condition_group",
        "psychosis",
        "2.16.840.1.113883.3.464.1003.105.12.1104",
        "Schizophrenia or Psychotic Disorder",
        exclude=PSYCHOSIS_EXCLUDE,
        why=PSYCHOSIS_WHY,
    ),
    WantedSet(
        "condition_group",
        "psychosis",
        *_MHD,
        include=PSYCHOSIS_INCLUDE,
        exclude=PSYCHOSIS_EXCLUDE,
        why=PSYCHOSIS_WHY,
    ),
    WantedSet(
        "condition_group",
        "delirium",
        "2.16.840.1.113762.1.4.1248.168",
        "Delirium or Dementia and Other Psychoses",
        include=r"delirium",
    ),
    WantedSet("condition_group", "delirium", *_MHD, include=r"delirium"),
    WantedSet(
        "condition_group", "depression_suicidality", "2.16.840.1.113762.1.4.1248.130", "Suicide Attempt"
    ),
    WantedSet(
        "condition_group",
        "depression_suicidality",
        *_MHD,
        include=r"suicid|self harm",
        exclude=SUICIDALITY_EXCLUDE,
        why="self-harm poisonings/injuries and history/family codes are not current suicidality",
    ),
    *(
        WantedSet(
            "condition_group",
            "stroke",
            oid,
            title,
            exclude=STROKE_EXCLUDE,
            why="heat stroke, TIA-only and precerebral-artery syndromes and unspecified cerebrovascular "
            "disease are not a stroke",
        )
        for oid, title in (
            ("2.16.840.1.113762.1.4.1248.176", "Stroke"),
            ("2.16.840.1.113762.1.4.1047.44", "Cerebrovascular Disease Stroke or TIA"),
            ("2.16.840.1.113883.3.117.1.7.1.212", "Hemorrhagic Stroke"),
            ("2.16.840.1.113883.3.117.1.7.1.247", "Ischemic Stroke"),
            ("2.16.840.1.113883.3.464.1003.104.12.1024", "Ischemic Stroke"),
        )
    ),
    WantedSet(
        "condition_group",
        "peptic_ulcer",
        "2.16.840.1.113883.3.3157.4031",
        "Acute Peptic Ulcer",
        exclude=HISTORY_FAMILY_EXCLUDE,
        why="history codes are read as condition_history",
    ),
    WantedSet("condition_group", "urinary_retention", "2.16.840.1.113762.1.4.1164.52", "Urinary retention"),
    WantedSet(
        "condition_group",
        "liver_disease",
        "2.16.840.1.113762.1.4.1047.42",
        "Liver Disease",
        exclude=HISTORY_FAMILY_EXCLUDE,
    ),
    WantedSet(
        "condition_group",
        "liver_disease",
        "2.16.840.1.113883.3.464.1003.199.12.1035",
        "Chronic Liver Disease",
        exclude=HISTORY_FAMILY_EXCLUDE,
    ),
    WantedSet(
        "condition_group",
        "diabetes",
        "2.16.840.1.113883.3.464.1003.103.12.1001",
        "Diabetes",
        exclude=DIABETES_EXCLUDE,
        why="prediabetes and history/family codes are not diabetes",
    ),
    WantedSet(
        "condition_group",
        "tbi",
        "2.16.840.1.113883.3.3157.4026",
        "Closed Head and Facial Trauma",
        include=r"traumatic brain injury",
    ),
)
# Groups a rule reads for which no value set is known at all (README: what shared/ would need).
CONDITION_GAPS_WITHOUT_SET: dict[tuple[str, str], str] = {
    ("condition_group", "autonomic_dysreflexia"): "no VSAC value set known: an ICD-10-CM and SNOMED CT "
    "code list for autonomic dysreflexia is needed in shared/",
}

# History codes routed to kind condition_history (never to the active group): (group, system, code,
# display, source).
HISTORY_CODES: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "peptic_ulcer",
        ICD10CM,
        "Z87.11",
        "Personal history of peptic ulcer disease",
        UNVERIFIED_CODE_SOURCE + "; ICD-10-CM Z87.11 (not in shared/)",
    ),
)

# Dialysis dependence: no shared file holds ICD-10-CM Z99.2; added as an unverified code.
UNVERIFIED_CODES: tuple[tuple[str, str, str, str, str], ...] = (
    ("condition_group", "dialysis", ICD10CM, "Z99.2", "Dependence on renal dialysis"),
)

# --------------------------------------------------------------------------------------------
# Term (keyword) rows for groups without (enough) code sources. verified=no.
# --------------------------------------------------------------------------------------------

CONDITION_TERMS: dict[str, tuple[str, ...]] = {
    "epilepsy": ("epilepsy", "epileptic", "seizure disorder"),
    "pregnancy": ("pregnant",),
    "lactation": ("breastfeeding", "breast feeding", "lactating"),
    "dialysis": (
        "hemodialysis",
        "haemodialysis",
        "peritoneal dialysis",
        "dependence on renal dialysis",
        "dialysis dependent",
        "dialysis-dependent",
    ),
    "esrd": (
        "end stage renal disease",
        "end-stage renal disease",
        "end stage renal failure",
        "end-stage renal failure",
        "ESRD",
    ),
    "ckd_stage5": (
        "chronic kidney disease stage 5",
        "chronic kidney disease, stage 5",
        "CKD stage 5",
        "CKD 5",
    ),
    "aki": ("acute kidney injury", "acute kidney failure", "acute renal failure"),
    "substance_use_disorder": (
        "substance use disorder",
        "drug dependence",
        "drug abuse",
        "opioid use disorder",
        "opioid dependence",
    ),
    "alcohol_use_disorder": ("alcohol use disorder", "alcohol dependence", "alcohol abuse", "alcoholism"),
    "respiratory_impairment": (
        "chronic obstructive",
        "COPD",
        "emphysema",
        "sleep apnea",
        "sleep apnoea",
        "hypoventilation",
        "respiratory failure",
        "respiratory insufficiency",
    ),
    "multiple_sclerosis": ("multiple sclerosis",),
    "spinal_cord_injury": (
        "spinal cord injury",
        "spinal cord lesion",
        "tetraplegia",
        "quadriplegia",
        "paraplegia",
    ),
    "cerebral_palsy": ("cerebral palsy",),
    "spasticity": ("spasticity",),
    "psychosis": (
        "schizophrenia",
        "schizoaffective",
        "schizophreniform",
        "psychosis",
        "psychotic",
        "delusional disorder",
    ),
    "delirium": ("delirium", "confusional state", "acute confusion"),
    "depression_suicidality": (
        "suicidal",
        "suicidality",
        "suicide attempt",
        "suicidal ideation",
        "self-harm",
        "self harm",
    ),
    "stroke": (
        "stroke",
        "cerebrovascular accident",
        "cerebral infarction",
        "intracerebral hemorrhage",
        "intracerebral haemorrhage",
    ),
    "autonomic_dysreflexia": ("autonomic dysreflexia", "autonomic hyperreflexia"),
    "sci_t6_or_above": ("cervical spinal cord injury", "cervical cord injury", "cervical spinal cord lesion"),
    "peptic_ulcer": ("peptic ulcer", "gastric ulcer", "duodenal ulcer", "gastroduodenal ulcer"),
    "urinary_retention": (
        "urinary retention",
        "retention of urine",
        "detrusor sphincter dyssynergia",
        "detrusor-sphincter dyssynergia",
    ),
    "parkinson": ("parkinson", "parkinsons", "parkinson disease"),
    "liver_disease": (
        "liver disease",
        "hepatic impairment",
        "hepatic failure",
        "liver failure",
        "cirrhosis",
        "hepatitis",
        "fatty liver",
        "steatohepatitis",
    ),
    "diabetes": (
        "diabetes mellitus",
        "type 1 diabetes",
        "type 2 diabetes",
        "type i diabetes",
        "type ii diabetes",
    ),
    "tbi": ("traumatic brain injury", "head injury", "TBI"),
    "rheumatic_disorder": (
        "rheumatic",
        "rheumatoid",
        "polymyalgia rheumatica",
        "ankylosing spondylitis",
        "psoriatic arthritis",
        "systemic lupus erythematosus",
    ),
}
INDICATION_TERMS: dict[str, tuple[str, ...]] = {
    "spasticity": (
        "multiple sclerosis",
        "spasticity",
        "spinal cord injury",
        "spinal cord lesion",
        "spinal cord disease",
    ),
    "spasticity_stroke": ("stroke", "cerebrovascular accident"),
    "spasticity_cerebral_palsy": ("cerebral palsy",),
    "spasticity_parkinson": ("parkinson", "parkinsons", "parkinson disease"),
    "spasticity_tbi": ("traumatic brain injury", "head injury", "TBI"),
    "aud": ("alcohol use disorder", "alcohol dependence", "alcoholism", "alcohol abuse", "alcohol addiction"),
    "rheumatic_spasm": ("rheumatic", "rheumatoid"),
    "neuropathic_pain": ("neuropathic pain", "neuralgia", "diabetic neuropathy"),
    "hiccups": ("hiccup", "hiccups", "singultus"),
    "vertigo": ("vertigo", "vestibular migraine"),
    "musculoskeletal_pain": (
        "back pain",
        "neck pain",
        "musculoskeletal",
        "muscle spasm",
        "muscle spasms",
        "lumbago",
    ),
}
OBSERVATION_TERMS: dict[str, tuple[str, ...]] = {
    "lft": ("alanine aminotransferase", "aspartate aminotransferase"),
    "glucose": ("hemoglobin a1c", "haemoglobin a1c", "HbA1c"),
}
ALLERGY_TERMS: dict[str, tuple[str, ...]] = {
    "wheat": ("wheat",),
    # issue #23: gabapentin enacarbil is a gabapentin prodrug (same allergen); unverified brand list
    "gabapentinoid": (
        "gabapentinoid", "gabapentin", "pregabalin", "Neurontin", "Gralise", "Horizant", "Lyrica",
    ),
    "gabapentin": ("gabapentin", "Neurontin", "Gralise", "Horizant"),
    "pregabalin": ("pregabalin", "Lyrica"),
}

# Product classes inside a parent drug class (issue #23): the first display pattern that matches a
# parent code names its product class; a parent code matching none stops the build. Patterns read
# the RxNorm displays of the shared value sets ("Once-Daily gabapentin" = Gralise, "24 HR pregabalin" =
# Lyrica CR, "gabapentin enacarbil" = Horizant). The same words are term-fallback rows for free text,
# where a text naming two products gets both classes (the pack then applies the lower ceiling).
# Ingredient-level codes: (allergy groups they also document).
SUBCLASS_SOURCE = (
    "product class by RxNorm display within the parent class (issue #23; pharmacist sign-off pending)"
)
SUBCLASSES: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    # parent: ((product class, display regex, free-text terms), ...) in matching order
    "gabapentinoid": (
        (
            "gabapentin_enacarbil",
            r"\bgabapentin enacarbil\b|\bHorizant\b",
            ("gabapentin enacarbil", "Horizant"),
        ),
        ("gabapentin_er", r"\bOnce-Daily gabapentin\b|\bGralise\b", ("Once-Daily gabapentin", "Gralise")),
        ("pregabalin_cr", r"\b24 HR pregabalin\b|\bLyrica CR\b", ("24 HR pregabalin", "Lyrica CR")),
        ("pregabalin", r"\bpregabalin\b|\bLyrica\b", ("pregabalin", "Lyrica")),
        ("gabapentin", r"\bgabapentin\b|\bNeurontin\b", ("gabapentin", "Neurontin")),
    ),
}
# allergy groups documented by an allergy coded with an ingredient-level code of a product class
SUBCLASS_ALLERGY: dict[str, tuple[str, ...]] = {
    "gabapentin": ("gabapentinoid", "gabapentin"),
    "pregabalin": ("gabapentinoid", "pregabalin"),
}
SUBCLASS_INGREDIENT_CONCEPT = "codes.csv:cns_depressant_ingredient_gabapentinoid"

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Concept:
    """One code from a value set or from codes.csv."""

    system: str
    code: str
    display: str


@dataclass
class ValueSet:
    """A shared ValueSet file reduced to what the build needs."""

    file: str
    title: str
    concepts: list[Concept]
    url: str = ""

    @property
    def label(self) -> str:
        """Source label written to the CSVs: folder/filename + ValueSet title."""
        return f"{self.file} ({self.title})"


def load_valuesets(root: Path) -> dict[str, ValueSet]:
    """Read every ValueSet JSON below ``root``; expansion first, compose concepts as a fallback.

    The CDC files have an empty ``compose`` and only an expansion; VSAC files have both. A
    nested expansion (``contains`` inside ``contains``) is flattened.
    """
    out: dict[str, ValueSet] = {}
    for path in sorted(root.glob("**/*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("resourceType") != "ValueSet":
            continue
        concepts: list[Concept] = []

        def walk(items: Iterable[dict[str, object]], sink: list[Concept]) -> None:
            for item in items:
                if item.get("code") and item.get("system"):
                    sink.append(
                        Concept(str(item["system"]), str(item["code"]), str(item.get("display") or ""))
                    )
                nested = item.get("contains")
                if isinstance(nested, list):
                    walk(nested, sink)

        walk(data.get("expansion", {}).get("contains", []) or [], concepts)
        if not concepts:
            for include in data.get("compose", {}).get("include", []) or []:
                for item in include.get("concept", []) or []:
                    concepts.append(Concept(include["system"], item["code"], item.get("display", "")))
        rel = path.relative_to(root).as_posix()
        out[rel] = ValueSet(
            rel, str(data.get("title") or data.get("name") or rel), concepts, str(data.get("url") or "")
        )
    return out


@dataclass(frozen=True)
class CodesCsvRow:
    """One row of shared/data/codes.csv."""

    concept: str
    system: str
    code: str
    display: str
    source: str

    @property
    def label(self) -> str:
        """Source label: the codes.csv concept and the upstream file it was read from."""
        return f"codes.csv:{self.concept} <- {self.source}"


def load_codes_csv(path: Path) -> list[CodesCsvRow]:
    """Read the hand-verified code list (columns concept,system,code,display,source)."""
    with path.open(newline="", encoding="utf-8") as fh:
        return [
            CodesCsvRow(r["concept"], r["system"], r["code"], r["display"], r["source"])
            for r in csv.DictReader(fh)
        ]


SYNTHEA_SYSTEMS = {"http://snomed.info/sct": SNOMED, "http://loinc.org": LOINC}


def load_synthea_codes(root: Path) -> dict[tuple[str, str], tuple[Counter[str], set[str]]]:
    """Collect (system, code) -> (display counts, dataset names) for Condition/Observation/Allergy codes.

    Only used to confirm that the handful of SYNTHEA_CODES exist with a real display in the shared
    test data; the engine never needs these bundles.
    """
    found: dict[tuple[str, str], tuple[Counter[str], set[str]]] = {}
    if not root.exists():
        return found
    for path in sorted(root.glob("**/*.json.gz")):
        dataset = path.relative_to(root).parts[0]
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            bundle = json.load(fh)
        for entry in bundle.get("entry", []) or []:
            res = entry.get("resource", {})
            if res.get("resourceType") not in ("Condition", "Observation", "AllergyIntolerance"):
                continue
            for coding in (res.get("code") or {}).get("coding", []) or []:
                system = SYNTHEA_SYSTEMS.get(coding.get("system", ""), coding.get("system", ""))
                key = (system, str(coding.get("code")))
                displays, datasets = found.setdefault(key, (Counter(), set()))
                displays[str(coding.get("display") or "").replace("\u200b", "")] += 1
                datasets.add(dataset)
    return found


# --------------------------------------------------------------------------------------------
# Accumulation
# --------------------------------------------------------------------------------------------


@dataclass
class CodeRow:
    """One output row of codes.csv, with every source that contributed it."""

    display: str
    sources: list[str] = field(default_factory=list)

    def add_source(self, source: str) -> None:
        """Record another source (kept in first-seen order, no duplicates)."""
        if source not in self.sources:
            self.sources.append(source)


@dataclass
class Excluded:
    """A code that was considered for a group and left out, with the reason."""

    display: str
    reasons: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


@dataclass
class TermRow:
    """One output row of ingredients.csv."""

    group: str
    kind: str
    term: str
    rxnorm_ingredient: str
    verified: str
    source: str


class Builder:
    """Collects rows for all output files; the ``write_*`` methods serialise them."""

    def __init__(
        self,
        valuesets: dict[str, ValueSet],
        codes_csv: list[CodesCsvRow],
        synthea: dict[tuple[str, str], tuple[Counter[str], set[str]]],
    ) -> None:
        self.valuesets = valuesets
        self.codes_csv = codes_csv
        self.synthea = synthea
        self.rows: dict[tuple[str, str, str, str], CodeRow] = {}
        self.excluded: dict[tuple[str, str, str, str], Excluded] = {}
        self.terms: list[TermRow] = []
        self.products: list[dict[str, str]] = []
        self.used_sets: set[str] = set()
        self.broad_excluded: dict[str, Counter[str]] = defaultdict(Counter)
        self.broad_taken: dict[str, Counter[str]] = defaultdict(Counter)
        self.missing_sets: list[WantedSet] = []  # CONDITION_VALUESETS not (yet) in shared/

    # -- primitives ----------------------------------------------------------------------
    def add(self, kind: str, group: str, system: str, code: str, display: str, source: str) -> None:
        """Add (or extend) a codes.csv row; the group must be one the engine allows."""
        if group not in ALLOWED_GROUPS[kind]:
            raise ValueError(f"group {group!r} is not allowed for kind {kind!r}")
        if system == CPT:
            display = "CPT code (descriptor omitted: AMA copyright)"
        row = self.rows.setdefault((kind, group, system, code), CodeRow(display))
        row.add_source(source)

    def exclude(
        self, kind: str, group: str, system: str, code: str, display: str, source: str, reason: str
    ) -> None:
        """Record that a code was considered for a group and deliberately left out."""
        if system == CPT:
            display = "CPT code (descriptor omitted: AMA copyright)"
        item = self.excluded.setdefault((kind, group, system, code), Excluded(display))
        if reason not in item.reasons:
            item.reasons.append(reason)
        if source not in item.sources:
            item.sources.append(source)

    def valueset(self, file: str) -> ValueSet:
        """A loaded value set by its relative path; a missing file is a build error."""
        if file not in self.valuesets:
            raise FileNotFoundError(f"value set {file} not found in the shared folder")
        self.used_sets.add(file)
        return self.valuesets[file]

    # -- drug classes ----------------------------------------------------------------------
    @staticmethod
    def classify_display(display: str) -> set[str]:
        """Engine drug classes named by a product display (whole-word ingredient match).

        Pack audience text such as "(For Patients Taking Carbamazepine, Phenytoin, Phenobarbital ...)"
        on lamotrigine starter kits names drugs the pack does NOT contain; it is removed first.
        """
        display = PACK_AUDIENCE_TEXT.sub(" ", display)
        found = {c.group for c in DRUG_CLASSES if any(matches(t, display) for t in c.terms)}
        if "naltrexone" in found and "opioid_agonist" in found:
            # abuse-deterrent morphine/naltrexone: the naltrexone is sequestered.
            found.discard("naltrexone")
        return found

    def build_drug_classes(self) -> None:
        """Tag every code of every RxNorm value set by the ingredients its display names."""
        nominal: dict[str, str | None] = {}
        for cls in DRUG_CLASSES:
            for f in cls.class_sets:
                nominal[f] = cls.group
        for f in (*BROAD_DRUG_SETS, *OTHER_DRUG_SETS):
            nominal.setdefault(f, None)
        rx_sets = {f for f, vs in self.valuesets.items() if any(c.system == RXNORM for c in vs.concepts)}
        unknown = rx_sets - set(nominal)
        if unknown:
            raise ValueError(f"RxNorm value sets with no drug-class configuration: {sorted(unknown)}")
        for f in sorted(nominal):
            vs = self.valueset(f)
            expected = nominal[f]
            broad = f in BROAD_DRUG_SETS
            for c in vs.concepts:
                if c.system != RXNORM:
                    continue
                considered = expected or "(any drug class)"
                if LOCAL_FORM.search(c.display):
                    self.exclude(
                        "drug_class",
                        considered,
                        c.system,
                        c.code,
                        c.display,
                        vs.label,
                        "local-only dose form (not a systemic exposure)",
                    )
                    if broad:
                        self.broad_excluded[f][_first_ingredient(c.display)] += 1
                    continue
                classes = self.classify_display(c.display)
                if PACK_AUDIENCE_TEXT.search(c.display):
                    audience_text = " ".join(m.group(0) for m in PACK_AUDIENCE_TEXT.finditer(c.display))
                    audience = {d.group for d in DRUG_CLASSES
                                if any(matches(t, audience_text) for t in d.terms)}
                    for group in sorted(audience - classes):
                        self.exclude(
                            "drug_class",
                            group,
                            c.system,
                            c.code,
                            c.display,
                            vs.label,
                            "named only in the kit's audience text ('for patients taking ...'), "
                            "not its content",
                        )
                for group in sorted(classes):
                    self.add("drug_class", group, c.system, c.code, c.display, vs.label)
                    if broad:
                        self.broad_taken[f][group] += 1
                if expected and expected not in classes:
                    self.exclude(
                        "drug_class",
                        expected,
                        c.system,
                        c.code,
                        c.display,
                        vs.label,
                        f"display names no {expected} ingredient",
                    )
                if not classes:
                    if expected is None:
                        self.exclude(
                            "drug_class",
                            considered,
                            c.system,
                            c.code,
                            c.display,
                            vs.label,
                            "display names no ingredient of an engine drug class",
                        )
                    if broad:
                        self.broad_excluded[f][_first_ingredient(c.display)] += 1
                if "naltrexone" not in classes and matches("naltrexone", c.display):
                    self.exclude(
                        "drug_class",
                        "naltrexone",
                        c.system,
                        c.code,
                        c.display,
                        vs.label,
                        "naltrexone sequestered in an abuse-deterrent opioid (not released as directed)",
                    )

    def build_subclasses(self) -> None:
        """Give every code of a parent class (SUBCLASSES) exactly one product class, and its terms."""
        for parent, subclasses in SUBCLASSES.items():
            parent_rows = [(k, r) for k, r in self.rows.items() if k[0] == "drug_class" and k[1] == parent]
            for (_kind, _group, system, code), row in parent_rows:
                display = row.display
                group = next((g for g, rx, _ in subclasses if re.search(rx, display, re.IGNORECASE)), None)
                if group is None:
                    raise ValueError(f"{parent} code {code} ({row.display!r}) names no product class")
                source = f"{SUBCLASS_SOURCE}; {row.sources[0]}"
                self.add("drug_class", group, system, code, display, source)
                if any(s.startswith(SUBCLASS_INGREDIENT_CONCEPT) for s in row.sources):
                    for allergy in SUBCLASS_ALLERGY.get(group, ()):
                        self.add("allergy_group", allergy, system, code, row.display, row.sources[0])
            for group, _rx, terms in subclasses:
                for term in terms:
                    self.terms.append(TermRow(group, "drug_class", term, "", "no", SUBCLASS_SOURCE))

    # -- codes.csv -------------------------------------------------------------------------
    def build_from_codes_csv(self) -> None:
        """Map every codes.csv concept to its engine groups; unknown concepts stop the build."""
        for r in self.codes_csv:
            if r.concept in CODES_CSV_TARGETS:
                for kind, group in CODES_CSV_TARGETS[r.concept]:
                    if (
                        kind == "condition_group"
                        and group == "pregnancy"
                        and re.search(PREGNANCY_EXCLUDE, r.display, re.IGNORECASE)
                    ):
                        self.exclude(
                            kind, group, r.system, r.code, r.display, r.label, "not a current pregnancy"
                        )
                        continue
                    self.add(kind, group, r.system, r.code, r.display, r.label)
                if r.concept == "esrd" and re.search(r"on dialysis", r.display, re.IGNORECASE):
                    self.add("condition_group", "dialysis", r.system, r.code, r.display, r.label)
            elif r.concept in CODES_CSV_EXCLUDED:
                kind, group, reason = CODES_CSV_EXCLUDED[r.concept]
                self.exclude(kind, group, r.system, r.code, r.display, r.label, reason)
            elif r.concept not in CODES_CSV_IGNORED:
                raise ValueError(f"codes.csv concept {r.concept!r} has no mapping; decide where it belongs")

    # -- condition / observation / indication sets -----------------------------------------
    def build_from_set_rules(self) -> None:
        """Apply SET_RULES: take a set's codes into a group, filtered by display where needed."""
        for rule in SET_RULES:
            self.apply_set_rule(rule)

    def apply_set_rule(self, rule: SetRule) -> None:
        """Take the codes of ``rule.file`` into ``rule.group``, filtered by system, code and display."""
        vs = self.valueset(rule.file)
        for c in vs.concepts:
            if rule.systems is not None and c.system not in rule.systems:
                continue
            if rule.code_filter is not None and not rule.code_filter(c.code):
                continue
            if rule.include and not re.search(rule.include, c.display, re.IGNORECASE):
                continue  # not a candidate for this group at all (e.g. non-alcohol SUD codes)
            if rule.exclude and re.search(rule.exclude, c.display, re.IGNORECASE):
                self.exclude(
                    rule.kind,
                    rule.group,
                    c.system,
                    c.code,
                    c.display,
                    vs.label,
                    rule.why or "display matches the exclusion filter for this group",
                )
                continue
            if rule.require and not re.search(rule.require, c.display, re.IGNORECASE):
                self.exclude(
                    rule.kind,
                    rule.group,
                    c.system,
                    c.code,
                    c.display,
                    vs.label,
                    rule.why or "display does not name abuse/dependence/use/misuse",
                )
                continue
            self.add(rule.kind, rule.group, c.system, c.code, c.display, vs.label)

    # -- Synthea-verified and unverified extra codes ----------------------------------------
    def build_extras(self) -> None:
        """Add the few Synthea-emitted codes, the deny list, and the unverified dialysis code."""
        for s in SYNTHEA_CODES:
            hit = self.synthea.get((s.system, s.code))
            if hit:
                displays, datasets = hit
                display = _best_display(displays) or s.fallback_display
                source = (
                    "Synthea-emitted code in shared/data/synthea/"
                    + "+".join(sorted(datasets))
                    + f" (display as emitted: {display!r})"
                )
            else:
                display, source = s.fallback_display, UNVERIFIED_CODE_SOURCE
            self.add(s.kind, s.group, s.system, s.code, display, source)
        for kind, group, system, code, reason in SYNTHEA_DENY:
            hit = self.synthea.get((system, code))
            display = _best_display(hit[0]) if hit else ""
            self.exclude(
                kind, group, system, code, display, "Synthea-emitted code (shared/data/synthea)", reason
            )
        for kind, group, system, code, display in UNVERIFIED_CODES:
            self.add(kind, group, system, code, display, UNVERIFIED_CODE_SOURCE)
        for code, display, source in CRCL_CODES:
            self.add("observation", "crcl", LOINC, code, display, source)
        for group, code, display, source in GESTATION_CODES:
            self.add("observation", group, LOINC, code, display, source)
        egfr_rows = [(k, r) for k, r in self.rows.items() if k[0] == "observation" and k[1] == "egfr"]
        for (_kind, _group, system, code), row in egfr_rows:
            for group, phrase in EGFR_STRATA:
                if phrase in row.display.lower():
                    source = f"egfr row display names the race stratum ({phrase!r}); " + row.sources[0]
                    self.add("observation", group, system, code, row.display, source)
                    break

    def find_valueset(self, oid: str) -> str | None:
        """Relative path of the shared value set with this OID (file name or canonical url), if any."""
        for rel, vs in sorted(self.valuesets.items()):
            if Path(rel).name in (f"valueset-{oid}.json", f"{oid}.json") or vs.url.endswith(f"/{oid}"):
                return rel
        return None

    def build_condition_valuesets(self) -> None:
        """CONDITION_VALUESETS found in shared/ (by OID) feed their groups; the rest stay known gaps."""
        for w in CONDITION_VALUESETS:
            rel = self.find_valueset(w.oid)
            if rel is None:
                self.missing_sets.append(w)
                continue
            rule = SetRule(
                w.kind,
                w.group,
                rel,
                include=w.include,
                exclude=w.exclude,
                why=w.why,
                systems=(ICD10CM, SNOMED),
            )
            self.apply_set_rule(rule)
        for group, system, code, display, source in HISTORY_CODES:
            self.add("condition_history", group, system, code, display, source)
            self.exclude(
                "condition_group",
                group,
                system,
                code,
                display,
                source,
                "history code: read as condition_history (cond_history.*), never as the active group",
            )

    # -- products ---------------------------------------------------------------------------
    def build_products(self) -> None:
        """Form/route/strength of the baclofen product codes, parsed from their RxNorm names."""
        for r in self.codes_csv:
            if r.concept not in BACLOFEN_PRODUCT_CONCEPTS:
                continue
            self.products.append(parse_baclofen_product(r))

    # -- term rows -------------------------------------------------------------------------
    def build_terms(self) -> None:
        """Ingredient/keyword fallback rows, with verification status and source."""
        ingredient_codes: dict[tuple[str, str], CodesCsvRow] = {}
        for r in self.codes_csv:
            if r.concept.startswith("cns_depressant_ingredient_") or r.concept == "baclofen_ingredient":
                ingredient_codes[(r.concept, r.display.lower())] = r
        # baclofen (drug class and allergy group)
        bac = next(r for r in self.codes_csv if r.concept == "baclofen_ingredient")
        product_displays = " ".join(
            r.display for r in self.codes_csv if r.concept in BACLOFEN_PRODUCT_CONCEPTS
        )
        for kind in ("drug_class", "allergy_group"):
            self.terms.append(TermRow("baclofen", kind, "baclofen", bac.code, "yes", bac.label))
            for brand in BACLOFEN_BRANDS:
                if matches(brand, product_displays):
                    self.terms.append(
                        TermRow(
                            "baclofen",
                            kind,
                            brand,
                            bac.code,
                            "yes",
                            "brand named in codes.csv:baclofen_oral_SBD product displays",
                        )
                    )
                else:
                    self.terms.append(
                        TermRow(
                            "baclofen",
                            kind,
                            brand,
                            bac.code,
                            "no",
                            "brand name from shared/clinical/baclofen-knowledge.md section 2.1 (no code "
                            "verified)",
                        )
                    )
        for cls in DRUG_CLASSES:
            set_displays = [
                (self.valuesets[f].label, c.display)
                for f in cls.class_sets
                for c in self.valuesets[f].concepts
            ]
            for term in cls.terms:
                row = ingredient_codes.get((cls.codes_csv_concept or "", term.lower()))
                seen_in = sorted({label for label, d in set_displays if matches(term, d)})
                if row is not None:
                    source = row.label
                    if seen_in:
                        source += "; named in displays of " + "; ".join(seen_in[:2])
                    self.terms.append(TermRow(cls.group, "drug_class", term, row.code, "yes", source))
                elif seen_in:
                    more = f" (+{len(seen_in) - 2} more)" if len(seen_in) > 2 else ""
                    self.terms.append(
                        TermRow(
                            cls.group,
                            "drug_class",
                            term,
                            "",
                            "yes",
                            "named in displays of " + "; ".join(seen_in[:2]) + more,
                        )
                    )
                else:
                    self.terms.append(
                        TermRow(cls.group, "drug_class", term, "", "no", cls.unverified_source)
                    )
        for kind, table in (
            ("condition_group", CONDITION_TERMS),
            ("indication", INDICATION_TERMS),
            ("observation", OBSERVATION_TERMS),
            ("allergy_group", ALLERGY_TERMS),
        ):
            for group, terms in table.items():
                for term in terms:
                    self.terms.append(TermRow(group, kind, term, "", "no", UNVERIFIED_TERM_SOURCE))
        for group, brands in CNS_BRAND_TERMS.items():
            for brand in brands:
                self.terms.append(TermRow(group, "drug_class", brand, "", "no", BRAND_TERMS_SOURCE))
        for t in self.terms:
            if t.group not in ALLOWED_GROUPS[t.kind]:
                raise ValueError(f"term group {t.group!r} not allowed for {t.kind!r}")

    # -- consistency checks ------------------------------------------------------------------
    def finalize(self) -> list[str]:
        """Drop exclusions overridden by another source; return warnings for a human to read."""
        warnings: list[str] = []
        included = set(self.rows)
        for key in list(self.excluded):
            if key in included:
                del self.excluded[key]
        opioid = {(s, c) for (k, g, s, c) in self.rows if k == "drug_class" and g == "opioid_agonist"}
        naltrexone = {(s, c) for (k, g, s, c) in self.rows if k == "drug_class" and g == "naltrexone"}
        if opioid & naltrexone:
            raise ValueError(f"codes in both opioid_agonist and naltrexone: {sorted(opioid & naltrexone)}")
        for (kind, group, system, code), row in self.rows.items():
            if kind == "drug_class" and matches("phentermine", row.display):
                raise ValueError(f"phentermine product {system}|{code} landed in drug class {group}")
        # A deny-listed code must not come back through the term fallback.
        by_group: dict[tuple[str, str], list[str]] = defaultdict(list)
        for t in self.terms:
            by_group[(t.kind, t.group)].append(t.term)
        for (kind, group, system, code), ex in self.excluded.items():
            if kind == "drug_class" or not ex.display:
                continue
            for term in by_group.get((kind, group), []):
                if matches(term, ex.display):
                    warnings.append(
                        f"term {term!r} ({kind}/{group}) matches excluded {system}|{code} {ex.display!r}"
                    )
        return warnings


_NOT_INGREDIENT = {"abuse-deterrent", "once-daily", "hr", "ml", "mg", "actuat", "pack", "day", "unt", "meq"}


def _first_ingredient(display: str) -> str:
    """First ingredient word of an RxNorm name, for summarising what a broad set held."""
    for word in re.findall(r"[A-Za-z][A-Za-z-]+", display):
        if word.lower() not in _NOT_INGREDIENT:
            return word.lower()
    return display.lower()


_SEMANTIC_TAG = re.compile(r"\((disorder|finding|substance|situation|procedure|person)\)$")


def _best_display(displays: Counter[str]) -> str:
    """Pick the display to record for a Synthea code.

    Synthea emits several spellings per code ("Stroke" vs "Cerebrovascular accident (disorder)",
    "ALT (Elevated)" vs the LOINC long name). A SNOMED fully specified name (semantic tag) wins,
    then a LOINC long name (it has a bracketed property), then the commonest spelling.
    """
    if not displays:
        return ""
    ranked = sorted(
        displays.items(),
        key=lambda kv: (not _SEMANTIC_TAG.search(kv[0]), "[" not in kv[0], -kv[1], -len(kv[0]), kv[0]),
    )
    return ranked[0][0]


# --------------------------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------------------------

PRODUCT_CAVEATS: dict[str, str] = {
    "Kemstro": "Kemstro ODT is no longer marketed (knowledge pack section 2.1)",
    "25 MG": "no 25 mg baclofen tablet found in current US listings; code suspicious (shared README)",
}


# Marketing and scoring status of each product code: (value, cited source). Only "yes" products are
# ever proposed by a one-click dose suggestion; "no" raises BAC-F04 on a new or modified order.
# "no" needs a source; what no offline source settles stays "unverified" (RxNorm and DailyMed could
# not be reached when this was built: sources are the knowledge file section 2.1 and its S31 listing).
_KF21 = "knowledge file section 2.1"
PRODUCT_MARKETED: dict[str, tuple[str, str]] = {
    "197391": ("yes", f"{_KF21}: generic baclofen tablets 5, 10, 15, 20 mg, oral (S1, S31 openFDA NDC)"),
    "197392": ("yes", f"{_KF21}: generic baclofen tablets 5, 10, 15, 20 mg, oral (S1, S31 openFDA NDC)"),
    "199280": ("no", f"{_KF21}: US tablets are 5, 10, 15, 20 mg only (S1, S31); no 25 mg tablet listed"),
    "664144": ("no", f"{_KF21}: Kemstro orally disintegrating tablet no longer marketed (secondary listing)"),
    "666857": ("no", f"{_KF21}: Kemstro orally disintegrating tablet no longer marketed (secondary listing)"),
    "1300890": ("yes", f"{_KF21}: intrathecal 1000 mcg/mL in NDC records (S6, S31)"),
    "1666613": ("yes", f"{_KF21}: intrathecal 2000 mcg/mL in NDC records (S6, S31)"),
}
PRODUCT_UNVERIFIED = "not settled by an offline source (RxNorm/DailyMed not reachable at build time)"
LIQUID_NOT_SCORED = "not a solid dose form (RxNorm name): no part units"


def product_status(code: str, form: str) -> dict[str, str]:
    """marketed / scored columns with their sources (granules stay unverified: distribution ended?)."""
    marketed, marketed_source = PRODUCT_MARKETED.get(code, ("unverified", PRODUCT_UNVERIFIED))
    if form in ("solution", "suspension", "injection"):
        scored, scored_source = "no", LIQUID_NOT_SCORED
    else:
        scored, scored_source = "unverified", PRODUCT_UNVERIFIED
    return {
        "marketed": marketed,
        "marketed_source": marketed_source,
        "scored": scored,
        "scored_source": scored_source,
    }


def parse_baclofen_product(r: CodesCsvRow) -> dict[str, str]:
    """Derive form, route, strength and concentration from an RxNorm SCD/SBD name.

    Strength is per solid unit (tablet/ODT); for liquids ``strength_mg`` is left empty on purpose
    so that "1 vial" or "1 syringe" can never be turned into milligrams: the dose must be stated
    in mg/mcg or mL with the concentration.
    """
    d = r.display
    conc = re.search(r"(\d+(?:\.\d+)?) MG/ML", d, re.IGNORECASE)
    strength = re.search(r"(\d+(?:\.\d+)?) MG(?!/)", d, re.IGNORECASE)
    if re.search(r"Disintegrating Oral Tablet", d, re.IGNORECASE):
        form = "odt"
    elif re.search(r"Oral Tablet", d, re.IGNORECASE):
        form = "tablet"
    elif re.search(r"Oral Suspension", d, re.IGNORECASE):
        form = "suspension"
    elif re.search(r"Oral Solution", d, re.IGNORECASE):
        form = "solution"
    elif re.search(r"Granules", d, re.IGNORECASE):
        form = "granules"
    elif re.search(r"Injection|Injectable", d, re.IGNORECASE):
        form = "injection"
    else:
        raise ValueError(f"cannot tell the dose form of {r.code} {d!r}")
    route = "intrathecal" if r.concept == "baclofen_intrathecal_SCD" else "oral"
    if form == "injection" and route != "intrathecal":
        raise ValueError(f"baclofen injection {r.code} not marked intrathecal")
    liquid = form in ("solution", "suspension", "injection")
    if liquid and conc is None:
        raise ValueError(f"liquid baclofen product {r.code} has no concentration in its name")
    caveats = [r.label]
    caveats += [text for key, text in PRODUCT_CAVEATS.items() if key in d]
    if route == "intrathecal":
        caveats.append(
            "route intrathecal inferred: US baclofen injections are intrathecal-only (RxNorm form says "
            "'Injection')"
        )
    return {
        "code": r.code,
        "system": r.system,
        "display": d,
        "ingredient_group": "baclofen",
        "form": form,
        "route": route,
        "strength_mg": "" if liquid or strength is None else _num(strength.group(1)),
        "concentration_mg_per_ml": _num(conc.group(1)) if liquid and conc else "",
        "source": "; ".join(caveats),
        **product_status(r.code, form),
    }


def _num(text: str) -> str:
    """Render a number without a trailing '.0'."""
    value = float(text)
    return str(int(value)) if value.is_integer() else str(value)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

KIND_ORDER = {k: i for i, k in enumerate(KINDS)}


def write_csv(path: Path, header: list[str], rows: Iterable[list[str]]) -> int:
    """Write a CSV with Unix line endings; returns the number of data rows."""
    n = 0
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow(row)
            n += 1
    return n


def write_outputs(b: Builder, out: Path) -> dict[str, int]:
    """Write codes.csv, ingredients.csv, products.csv, excluded.csv; return row counts."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    code_rows = sorted(b.rows.items(), key=lambda kv: (KIND_ORDER[kv[0][0]], kv[0][1], kv[0][2], kv[0][3]))
    counts["codes.csv"] = write_csv(
        out / "codes.csv",
        ["group", "kind", "system", "code", "display", "source"],
        ([g, k, s, c, row.display, " | ".join(row.sources)] for (k, g, s, c), row in code_rows),
    )
    term_rows = sorted(b.terms, key=lambda t: (KIND_ORDER[t.kind], t.group, t.term.lower()))
    counts["ingredients.csv"] = write_csv(
        out / "ingredients.csv",
        ["group", "kind", "term", "rxnorm_ingredient", "verified", "source"],
        ([t.group, t.kind, t.term, t.rxnorm_ingredient, t.verified, t.source] for t in term_rows),
    )
    header = [
        "code",
        "system",
        "display",
        "ingredient_group",
        "form",
        "route",
        "strength_mg",
        "concentration_mg_per_ml",
        "source",
        "marketed",
        "marketed_source",
        "scored",
        "scored_source",
    ]
    counts["products.csv"] = write_csv(
        out / "products.csv",
        header,
        (
            [p[h] for h in header]
            for p in sorted(b.products, key=lambda p: (p["route"], p["form"], p["code"]))
        ),
    )
    ex_rows = sorted(b.excluded.items(), key=lambda kv: (KIND_ORDER[kv[0][0]], kv[0][1], kv[0][2], kv[0][3]))
    counts["excluded.csv"] = write_csv(
        out / "excluded.csv",
        ["considered_for_group", "kind", "system", "code", "display", "reason", "source"],
        ([g, k, s, c, e.display, "; ".join(e.reasons), " | ".join(e.sources)] for (k, g, s, c), e in ex_rows),
    )
    counts["context.csv"] = write_csv(
        out / "context.csv",
        ["rule", "cue", "kinds", "groups", "source"],
        ([rule, cue, kinds, groups, CONTEXT_SOURCE] for rule, cue, kinds, groups in TERM_CONTEXT),
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--shared",
        type=Path,
        default=repo.parent / "shared" / "data",
        help="shared data folder (holds valuesets/, codes.csv, synthea/)",
    )
    parser.add_argument("--out", type=Path, default=repo / "rules" / "vocabulary", help="output folder")
    args = parser.parse_args(argv)
    shared: Path = args.shared
    valuesets = load_valuesets(shared / "valuesets")
    codes_csv = load_codes_csv(shared / "codes.csv")
    synthea = load_synthea_codes(shared / "synthea")
    b = Builder(valuesets, codes_csv, synthea)
    b.build_from_codes_csv()
    b.build_drug_classes()
    b.build_from_set_rules()
    b.build_extras()
    b.build_subclasses()
    b.build_condition_valuesets()
    b.build_products()
    b.build_terms()
    for f in UNUSED_SETS:
        b.valueset(f)
    unused = sorted(set(valuesets) - b.used_sets)
    if unused:
        raise ValueError(f"value sets neither used nor listed in UNUSED_SETS: {unused}")
    warnings = b.finalize()
    counts = write_outputs(b, args.out)
    (args.out / "README.md").write_text(render_readme(b, counts, valuesets), encoding="utf-8")
    for w in warnings:
        print("WARNING:", w, file=sys.stderr)
    for name, n in counts.items():
        print(f"{name}: {n} rows")
    return 0


GROUP_NOTES: dict[tuple[str, str], str] = {
    (
        "drug_class",
        "baclofen",
    ): "RxNorm ingredient 1292 + the baclofen product codes of codes.csv (see products.csv)",
    (
        "drug_class",
        "opioid_agonist",
    ): "CDC opioid sets + VSAC Opioids All / Schedule II-IV; agonist ingredient required "
    "(buprenorphine/naloxone kept, naloxone-only and naltrexone products never)",
    ("drug_class", "benzodiazepine"): "CDC benzodiazepine + VSAC Schedule IV + Beers benzodiazepines",
    (
        "drug_class",
        "z_drug",
    ): "Beers nonbenzodiazepine hypnotics (zolpidem, zaleplon, eszopiclone) + by ingredient "
    "from the broad CNS sets",
    ("drug_class", "barbiturate"): "CDC barbiturate + Beers barbiturates (primidone included as CDC does)",
    ("drug_class", "gabapentinoid"): "by ingredient (gabapentin, pregabalin) from the broad CNS sets",
    ("drug_class", "gabapentin"): "gabapentinoid codes whose display names immediate-release gabapentin "
    "(or the ingredient alone)",
    ("drug_class", "gabapentin_er"): "gabapentinoid codes displayed 'Once-Daily gabapentin' (Gralise)",
    ("drug_class", "gabapentin_enacarbil"): "gabapentinoid codes displayed 'gabapentin enacarbil' (Horizant)",
    ("drug_class", "pregabalin"): "gabapentinoid codes whose display names immediate-release pregabalin "
    "(or the ingredient alone)",
    ("drug_class", "pregabalin_cr"): "gabapentinoid codes displayed '24 HR pregabalin' (Lyrica CR)",
    ("allergy_group", "gabapentinoid"): "RxNorm ingredients gabapentin and pregabalin (US Core allergy "
    "substances)",
    ("allergy_group", "gabapentin"): "RxNorm ingredient gabapentin (gabapentin enacarbil: by term)",
    ("allergy_group", "pregabalin"): "RxNorm ingredient pregabalin",
    ("drug_class", "sedating_antihistamine"): "first-generation H1 antihistamines by display from the Beers "
    "antihistamine set and other sets",
    (
        "drug_class",
        "antipsychotic",
    ): "no public set: unverified ingredient list; codes only where a shared set display names one",
    ("drug_class", "tca"): "no public set: unverified ingredient list",
    ("drug_class", "maoi"): "no public set: unverified ingredient list",
    (
        "drug_class",
        "other_central_muscle_relaxant",
    ): "Beers skeletal muscle relaxants + tizanidine (codes.csv)",
    ("drug_class", "antihypertensive"): "no public set: unverified ingredient list",
    ("drug_class", "levodopa"): "no public set: unverified ingredient list",
    ("drug_class", "lithium"): "no public set: unverified ingredient list",
    ("drug_class", "naltrexone"): "naltrexone products (MOUD set); sequestered naltrexone (Embeda) excluded",
    ("drug_class", "strong_cns_depressant"): "oxybates, meprobamate, chloral hydrate ... by ingredient from "
    "the broad CNS sets; unverified list, sign-off pending",
    ("condition_history", "peptic_ulcer"): "history of peptic ulcer (Z87.11, unverified) + history-cue texts",
    (
        "condition_group",
        "epilepsy",
    ): "VSAC Seizure Disorder + Epilepsy + codes.csv seizure_disorder; no single/first or provoked "
    "(withdrawal, febrile) seizures, no seizure history, no psychogenic/syncopal events",
    (
        "condition_group",
        "pregnancy",
    ): "VSAC Pregnancy + Pregnant State; no post-partum, outcome or history codes",
    ("condition_group", "lactation"): "VSAC Breastfeeding (minus intention / suppressed lactation)",
    ("condition_group", "dialysis"): "dialysis *dependence* diagnoses (ESRD on dialysis; Z99.2 unverified)",
    ("condition_group", "dialysis_procedure"): "dialysis procedures (HD, PD, CRRT, ESRD dialysis services)",
    ("condition_group", "esrd"): "VSAC End Stage Renal Disease",
    ("condition_group", "ckd_stage5"): "VSAC CKD stage 5",
    ("condition_group", "aki"): "VSAC Acute Renal Failure",
    (
        "condition_group",
        "substance_use_disorder",
    ): "VSAC SUD + OUD; abuse/dependence/use codes from Substance Abuse and the CDC misuse sets",
    ("condition_group", "alcohol_use_disorder"): "alcohol codes of the SUD sets + VSAC Alcohol Withdrawal",
    ("condition_group", "respiratory_impairment"): "apnoea/hypoventilation codes of the CDC sleep-disordered "
    "breathing set + Synthea COPD/emphysema/sleep apnoea",
    (
        "condition_group",
        "multiple_sclerosis",
    ): "codes.csv MS codes + VSAC neuromuscular/movement displays naming MS",
    (
        "condition_group",
        "spinal_cord_injury",
    ): "codes.csv SCI codes + VSAC Neuromuscular Disorder spinal-cord-lesion "
    "and cervical-level quadriplegia codes",
    (
        "condition_group",
        "cerebral_palsy",
    ): "codes.csv CP codes + VSAC Neuromuscular Disorder displays naming CP",
    ("condition_group", "spasticity"): "codes.csv 221360009 (Synthea module)",
    (
        "condition_group",
        "parkinson",
    ): "ICD-10-CM G20.* from VSAC Neurologic Movement (no G21 secondary parkinsonism)",
    ("condition_group", "stroke"): "VSAC Stroke, Hemorrhagic/Ischemic Stroke, Cerebrovascular Disease "
    "(no TIA-only syndromes, no heat stroke) + Synthea code + terms",
    ("condition_group", "psychosis"): "VSAC Schizophrenia or Psychotic Disorder + psychotic codes of VSAC "
    "Mental Health Diagnoses + terms",
    ("condition_group", "delirium"): "delirium codes of VSAC Delirium/Dementia/Psychoses and Mental Health "
    "Diagnoses + terms",
    ("condition_group", "depression_suicidality"): "VSAC Suicide Attempt + suicidal/self-harm "
    "findings of VSAC Mental Health Diagnoses + terms",
    ("condition_group", "peptic_ulcer"): "VSAC Acute Peptic Ulcer + terms; history goes to "
    "condition_history",
    ("condition_group", "urinary_retention"): "VSAC Urinary retention + terms",
    ("condition_group", "liver_disease"): "VSAC Liver Disease + Chronic Liver Disease + terms",
    ("condition_group", "autonomic_dysreflexia"): "terms only (no code source in shared/)",
    (
        "condition_group",
        "diabetes",
    ): "VSAC Diabetes (no prediabetes) + Synthea code + terms (never bare `diabetes`)",
    ("condition_group", "tbi"): "Synthea TBI codes + TBI codes of VSAC Closed Head and Facial Trauma + terms",
    ("condition_group", "rheumatic_disorder"): "Synthea rheumatoid arthritis code + unverified terms",
    ("allergy_group", "baclofen"): "RxNorm 1292 + baclofen product codes; brand names as terms",
    ("allergy_group", "wheat"): "Synthea wheat substance/allergy SNOMED codes + term `wheat`",
    ("observation", "creatinine"): "VSAC Creatinine Lab Test (+ Creatinine Mass Per Volume)",
    ("observation", "pregnancy_test"): "VSAC Pregnancy Test (hCG)",
    ("indication", "spasticity"): "MS, spinal cord injury/lesion and spasticity codes",
    ("indication", "spasticity_cerebral_palsy"): "cerebral palsy codes",
    ("indication", "spasticity_parkinson"): "ICD-10-CM G20.* codes",
    ("indication", "spasticity_stroke"): "Synthea stroke code + terms",
    ("indication", "spasticity_tbi"): "Synthea TBI codes + terms",
    ("indication", "rheumatic_spasm"): "Synthea rheumatoid arthritis code + terms",
    ("indication", "musculoskeletal_pain"): "Synthea chronic low back / neck pain codes + terms",
    ("indication", "aud"): "same codes as condition_group alcohol_use_disorder",
    ("observation", "egfr"): "all LOINC of codes.csv concept egfr (incl. 33914-3 and 98979-8)",
    ("observation", "egfr_among_blacks"): "egfr rows whose display says 'among blacks' (used only "
    "when no race-free or non-black value was taken at the same time)",
    ("observation", "egfr_among_non_blacks"): "egfr rows whose display says 'among non-blacks'",
    ("observation", "crcl"): "creatinine clearance in mL/min: Cockcroft-Gault 35591-7 and measured "
    "24-hour clearance 2164-2 (not in shared/; displays verified from the public sources named per row)",
    ("observation", "lft"): "ALT, AST, ALP, total bilirubin (LOINC as emitted by Synthea)",
    ("observation", "glucose"): "glucose in blood / serum-plasma, HbA1c (LOINC as emitted by Synthea)",
    ("observation", "gestational_age"): "gestational age LOINC of VSAC Estimated Gestational Age at "
    "Delivery (11884-4, 11885-1, 18185-9, 49051-6)",
    ("observation", "delivery_date_estimated"): "estimated delivery date LOINC 11778-8, 11779-6, 11780-4",
}

REVIEW_ITEMS = (
    "**Unverified ingredient lists** (`verified=no` in ingredients.csv): antipsychotic, tca, maoi, "
    "antihypertensive, "
    "levodopa, lithium, naltrexone, and the few extra names in verified classes (zopiclone, methohexital, "
    "pethidine, diamorphine, paregoric, some antihistamines). Tizanidine is verified only through the US "
    "Core "
    "allergy-substance list. Check completeness and add local formulary brand names (brand-only strings "
    "such as "
    "`Lasix 40mg` are not matched; no RxNorm ingredient code is given for unverified names).",
    "**Mixed agonist-antagonist and partial opioid agonists** (buprenorphine, butorphanol, nalbuphine, "
    "pentazocine, "
    "meptazinol) are in `opioid_agonist`, so they trigger the opioid + baclofen and the naltrexone + opioid "
    "rules.",
    "**Excluded from opioid_agonist on purpose**: diphenoxylate, difenoxin, loperamide, eluxadoline, "
    "dextromethorphan (the CDC/VSAC opioid sets leave them out too).",
    "**MAOI**: includes the MAO-B inhibitors selegiline, rasagiline and safinamide and non-US moclobemide; "
    "linezolid, methylene blue and procarbazine are not included.",
    "**Antipsychotic**: includes prochlorperazine (antiemetic use), droperidol, pimavanserin and non-US "
    "agents "
    "(amisulpride, sulpiride, flupenthixol, zuclopenthixol, benperidol, zotepine, levomepromazine). "
    "Olanzapine/"
    "samidorphan (Lybalvi) is tagged antipsychotic only; samidorphan is an opioid antagonist like naltrexone "
    "but has no group.",
    "**TCA**: amoxapine included; maprotiline (tetracyclic) not. Low-dose doxepin (Silenor) is tagged tca; "
    "topical "
    "doxepin cream is excluded as a local form although systemic drowsiness is labelled.",
    "**Antihypertensive**: loop diuretics, nitrates, potassium-sparing diuretics alone and ophthalmic "
    "timolol are "
    "not included; minoxidil is (topical minoxidil text gets no class: local-only form, context.csv).",
    "**strong_cns_depressant** (issue #16, unverified, sign-off pending): sodium/mixed oxybates, "
    "meprobamate, chloral hydrate, clomethiazole, dexmedetomidine, propofol/fospropofol, paraldehyde and "
    "obsolete sedative-hypnotics; BAC-C04 reads it (the pack records this as a local addition). "
    "Still **no class**: "
    "suvorexant/lemborexant/daridorexant, trazodone, mirtazapine, ketamine/esketamine, inhaled anaesthetics, "
    "nabilone, dronabinol, cannabidiol. The VSAC/CDC codes include a veterinary dexmedetomidine gel (Sileo).",
    "**Brand names** (issue #16, `verified=no`, sign-off pending): Xanax, Valium, Ativan, Klonopin, "
    "Restoril, Halcion, Librium, Ambien, Lunesta, Sonata, Edluar, Intermezzo, Neurontin, Gralise, Horizant, "
    "Lyrica, Norco, Vicodin, Lortab, Percocet, OxyContin, Roxicodone, Dilaudid, MS Contin, Duragesic, "
    "Ultram, Nucynta, Suboxone, Subutex, Tylenol with Codeine, Fioricet, Fiorinal, Soma, Flexeril, "
    "Zanaflex, Robaxin, "
    "Skelaxin, Phenergan, Benadryl, Vistaril, Atarax, Xyrem, Xywav, Lumryz, Precedex, Diprivan. Add the "
    "local formulary's brands here.",
    "**Epilepsy vs single/provoked seizures** (issue #16 choice): first/single seizures, seizures due to "
    "substance withdrawal and febrile convulsions are left out of `epilepsy` (in `excluded.csv`); "
    "`Unspecified convulsions` (R56.9), post-traumatic seizures (R56.1), and epilepsy named as induced "
    "(e.g. narcotic withdrawal epilepsy) stay, because a code that cannot tell is read conservatively.",
    "**Condition value sets not in shared/** (see *Condition value sets wanted in shared/*): the groups "
    "listed there have no verified ICD-10-CM / SNOMED CT code from them and rely on term matching of the "
    "display text (a code-only record is missed); peptic-ulcer history has only the unverified Z87.11.",
    "**Sedating antihistamine**: meclizine, cyclizine and dimenhydrinate (antiemetic/antivertigo use) are "
    "included.",
    "**ESRD** includes `End stage renal failure with renal transplant`; a transplant patient may have "
    "normal eGFR.",
    "**Epilepsy** includes R56.9 `Unspecified convulsions` and R56.1 `Post traumatic seizures` (in the VSAC "
    "Epilepsy "
    "set) and acute withdrawal seizures (in the VSAC Seizure Disorder set).",
    "**Pregnancy** adds Synthea's `Antepartum eclampsia` and `Preeclampsia` (pre-eclampsia can present "
    "post-partum); "
    "`Tubal pregnancy` (only in the unused Pregnancy Obstetric or Maternal Diagnoses set) is not included.",
    "**Alcohol use disorder** excludes alcohol-related organ damage (alcoholic liver disease, pancreatitis "
    "...) and "
    "acute intoxication taken from the broad CDC set, but keeps the alcohol-induced mental disorders the "
    "VSAC SUD set "
    "lists.",
    "**Dialysis dependence**: ICD-10-CM Z99.2 is not in any shared file and was added as unverified.",
    "**Products**: Kemstro ODT codes and the 25 mg tablet (199280) are from a 2018 RxNorm snapshot and may "
    "be "
    "obsolete; the intrathecal codes come from a secondary web crosswalk. None of the other current baclofen "
    "products (5/15 mg tablets, oral solutions/suspension, granules, other IT strengths) has a verified "
    "code. "
    "`marketed` and `scored` (yes | no | unverified) each cite a source in `marketed_source` / "
    "`scored_source` (knowledge file section 2.1 and its S31 listing; RxNorm and DailyMed were not "
    "reachable offline): 199280 and Kemstro are `no`, what no source settles is `unverified`. Only "
    "`marketed: yes` products are ever proposed by a one-click dose suggestion, half units only when "
    "`scored: yes`; a new or modified order of a `no` product raises BAC-F04.",
    "**Term context** (`context.csv`) is a short NegEx-style cue list, not a parser: review the cues; "
    "uncertainty words (*possible*, *rule out*, *suspected*) are deliberately not negations (they keep "
    "the caution). Condition terms are for uncoded text only.",
)


def render_readme(b: Builder, counts: dict[str, int], valuesets: dict[str, ValueSet]) -> str:
    """Regenerate README.md so that counts, exclusions and sources never drift from the data."""
    code_counts: Counter[tuple[str, str]] = Counter((k, g) for (k, g, _s, _c) in b.rows)
    term_counts: Counter[tuple[str, str]] = Counter((t.kind, t.group) for t in b.terms)
    verified_terms: Counter[tuple[str, str]] = Counter(
        (t.kind, t.group) for t in b.terms if t.verified == "yes"
    )
    lines: list[str] = []
    add = lines.append
    add("# rules/vocabulary — the code vocabulary the engine uses at run time")
    add("")
    add(
        "Generated by `tools/build_vocabulary.py` from the shared public reference data; **do not edit by "
        "hand**. "
        "Rebuild with `python tools/build_vocabulary.py --shared <path to shared/data>` and check with "
        "`pytest tests/test_vocabulary_files.py`. The engine reads only this folder (never `shared/`)."
    )
    add("")
    add("## Files")
    add("")
    add("| file | rows | what |")
    add("|---|---|---|")
    add(
        f"| `codes.csv` | {counts['codes.csv']} | `group,kind,system,code,display,source`: one row per "
        f"(kind, group, "
        "system, code). `source` names every value set file (folder/file + ValueSet title) or codes.csv "
        "concept "
        "the row came from, separated by ` \\| `. A code may belong to several groups (e.g. a "
        "codeine/promethazine "
        "syrup is both `opioid_agonist` and `sedating_antihistamine`). |"
    )
    add(
        f"| `ingredients.csv` | {counts['ingredients.csv']} | "
        f"`group,kind,term,rxnorm_ingredient,verified,source`: "
        "name/keyword fallback for codes that are not in codes.csv (brand- or ingredient-level RxNorm "
        "codes, local "
        "codes, free text). `verified=yes` only when the name (and ingredient code, if given) comes from a "
        "shared "
        "file: codes.csv `cns_depressant_ingredient_*` / US Core allergy substances, or the displays of a "
        "value set "
        "dedicated to that class. |"
    )
    add(
        f"| `products.csv` | {counts['products.csv']} | "
        f"`code,system,display,ingredient_group,form,route,strength_mg,"
        "concentration_mg_per_ml,source`: the baclofen product codes of codes.csv. `strength_mg` is per "
        "solid unit "
        "only; liquids carry `concentration_mg_per_ml` and no strength, so a dose in vials/syringes can "
        "never be "
        "converted to mg. |"
    )
    add(
        f"| `excluded.csv` | {counts['excluded.csv']} | "
        f"`considered_for_group,kind,system,code,display,reason,source`: "
        "every code that was considered for a group and deliberately left out, with the reason. Use it as a "
        "**deny list**: a code listed here for group G must not be put into G by the term fallback. |"
    )
    add(
        f"| `context.csv` | {counts['context.csv']} | `rule,cue,kinds,groups,source`: what the words "
        "around a matched term mean (clause boundaries, negation, pseudo-negation, glued prefixes, "
        "history routing, local-only drug forms); see *How matching works* 3. |"
    )
    add("| `README.md` | | this file |")
    add("")
    add("## How matching works (runtime contract)")
    add("")
    add(
        "1. **Code first.** Look up (system, code) in `codes.csv` for the kind asked (`drug_class`, "
        "`condition_group`, `condition_history`, `allergy_group`, `observation`, `indication`). If the code "
        "is there, its groups are the answer and the term fallback is **not** used (the code was curated; "
        "terms would only add errors). A code listed in `excluded.csv` for a group is a **deny list** entry: "
        "the term fallback never puts it back into that group (`(any drug class)`: no drug class at all)."
    )
    add(
        "2. **Term fallback** only for codings not in `codes.csv` for that kind: a term of "
        "`ingredients.csv` matches the coding display or free text **case-insensitively as a whole word**, "
        "regex `(?<!\\w)TERM(?!\\w)` (`cds_engine.vocabulary.TERM_REGEX`). A hyphen is a word boundary, "
        "so free text such as `hydrocodone-acetaminophen` and `carbidopa-levodopa` still names its "
        "ingredients; `apomorphine` does not match `morphine`, `Parkinson's` matches `parkinson`."
    )
    add(
        "3. **Context** (`context.csv`, `cds_engine.term_context`): each occurrence of a term is judged by "
        "the words around it, within its clause (a clause ends at `. ; : ( ) [ ]`, a line break, *but*, "
        "*however* ...; for conditions also at a comma) and at most `scope` words away. **Negated** "
        "mentions never match (*no*, *not*, *without*, *denies*, *no history of*, *negative for*, "
        "*family history of* (someone else's condition) before the term; *ruled out*, *absent* after it); "
        "pseudo-cues such as *not elsewhere classified* are not negations. A **glued prefix** (*non-*, "
        "*pre-*, *anti-*; *heat*/*sun* before `stroke`) means another concept. A **history** cue (*history "
        "of*, *h/o*, *previous*, *healed* ...) moves the mention to kind `condition_history` for the groups "
        "whose history is its own fact (`peptic_ulcer`: the pack reads `cond_history.peptic_ulcer`); for "
        "every other group history stays in the active group (stroke, psychosis, epilepsy: the caution "
        "covers past events). When in doubt a term matches: a comma ends a negation's reach, so `denies "
        "psychosis, suicidal ideation` still counts suicidality (an extra caution, never a hidden one)."
    )
    add(
        "4. **Local-only dose forms**: a drug text naming a local-only form (topical, ophthalmic, otic, "
        "cream, ointment, lotion, eye/ear drops, shampoo, soap, mouthwash, vaginal, medicated pad) gets no "
        "drug class from terms (e.g. `diphenhydramine 2% topical cream`); such product codes were already "
        "dropped from every drug class at build time. A pack's own drug (`drug: class:` of any pack) is "
        "exempt: a topical baclofen text is still baclofen, so the pack's product/route rules can flag it. "
        "Kit names saying *for patients taking ...* do not name the kit's content."
    )
    add(
        "5. **Indications**: when several indication groups match free text, prefer the specific one "
        "(`spasticity_stroke/_cerebral_palsy/_parkinson/_tbi` over `spasticity`; `rheumatic_spasm` over "
        "`musculoskeletal_pain`)."
    )
    add(
        "6. Observations are matched **by LOINC code only** (Synthea displays vary); the few observation "
        "terms "
        "are for free-text monitoring entries."
    )
    add("")
    add("### Matching examples (executed by `tests/test_vocabulary_readme.py`)")
    add("")
    add("| kind | system | code | display or free text | groups |")
    add("|---|---|---|---|---|")
    for kind, system, code, display, groups in MATCHING_EXAMPLES:
        add(f"| {kind} | {system or ''} | {code or ''} | {display or ''} | {', '.join(groups) or '(none)'} |")
    add("")
    add("## Groups")
    add("")
    add("| kind | group | code rows | term rows (verified) | content |")
    add("|---|---|---|---|---|")
    for kind in KINDS:
        for group in ALLOWED_GROUPS[kind]:
            note = GROUP_NOTES.get((kind, group), "")
            if not note and term_counts[(kind, group)] and not code_counts[(kind, group)]:
                note = "no code source in shared/: term rows only (unverified)"
            missing = sorted({w.oid for w in b.missing_sets if (w.kind, w.group) == (kind, group)})
            if missing:
                note += f" — **gap**: {len(missing)} VSAC set(s) not in shared/ (see below)"
            add(
                f"| {kind} | `{group}` | {code_counts[(kind, group)]} | {term_counts[(kind, group)]} "
                f"({verified_terms[(kind, group)]}) | {note} |"
            )
    add("")
    add("## Never take a broad set wholesale")
    add("")
    add(
        "Some value sets mix classes. The CDC *CNS depressant medications* set (DailyMed EPC) holds "
        "stimulants and "
        "anorectics (phentermine, benzphetamine, methamphetamine, diethylpropion, phendimetrazine), "
        "anaesthetics and "
        "oxybates; the archived CDC *Ambulatory setting non-opioid CNS depressant medications* set holds "
        "topical "
        "anaesthetics, ethanol-containing OTC products, anticonvulsants and antidepressants; the VSAC "
        "*Central Nervous "
        "System Depressants* set holds anticonvulsants and SSRIs. **The rule: a code enters a drug class "
        "only if its "
        "display names an ingredient of that class** (whole word) and it is not a local-only dose form. The "
        "same "
        "rule is applied to the class-specific sets, which is what keeps naloxone-only products out of "
        "`opioid_agonist`. Condition sets that mix concepts are filtered by display in the same spirit."
    )
    add("")
    add(
        "What the build took from, and left out of, the broad drug sets (left-out counts by first "
        "ingredient word; "
        "every code is in `excluded.csv`):"
    )
    add("")
    for f in BROAD_DRUG_SETS:
        vs = valuesets[f]
        taken = ", ".join(f"{g} {n}" for g, n in sorted(b.broad_taken[f].items()))
        left = ", ".join(f"{i} {n}" for i, n in b.broad_excluded[f].most_common())
        add(f"* **{vs.label}** — {len(vs.concepts)} codes. Taken: {taken or 'nothing'}. Left out: {left}.")
    add("")
    add("Left out of condition / observation groups (details and reasons in `excluded.csv`):")
    add("")
    reasons: Counter[tuple[str, str, str]] = Counter()
    for (kind, group, _s, _c), ex in b.excluded.items():
        if kind != "drug_class":
            reasons[(kind, group, "; ".join(ex.reasons))] += 1
    add("| kind | group | codes | reason |")
    add("|---|---|---|---|")
    for (kind, group, reason), n in sorted(reasons.items()):
        add(f"| {kind} | `{group}` | {n} | {reason} |")
    drug_reasons: Counter[tuple[str, str]] = Counter()
    for (kind, group, _s, _c), ex in b.excluded.items():
        if kind == "drug_class":
            drug_reasons[(group, "; ".join(ex.reasons))] += 1
    add("")
    add("| drug class considered | codes | reason |")
    add("|---|---|---|")
    for (group, reason), n in sorted(drug_reasons.items()):
        add(f"| `{group}` | {n} | {reason} |")
    add("")
    add(
        "codes.csv concepts not used: "
        + "; ".join(f"`{k}` ({v})" for k, v in sorted(CODES_CSV_IGNORED.items()))
        + "."
    )
    add("")
    add("Shared value sets read but not used for any group:")
    add("")
    for f, why in sorted(UNUSED_SETS.items()):
        add(f"* `{f}` ({valuesets[f].title}): {why}.")
    add("")
    add("## Condition value sets wanted in shared/")
    add("")
    add(
        "Condition groups a rule reads take their codes from these VSAC value sets, read by OID from "
        "`shared/data/valuesets/**` when the file is there (`CONDITION_VALUESETS` in "
        "`tools/build_vocabulary.py`, with the display filters applied). Only data in the read-only "
        "`shared/` folder may feed the vocabulary. A set marked *missing* is a known gap "
        "(`tests/test_vocabulary_coverage.py`): the group falls back to term matching of the display "
        "text until the project lead adds the set to shared/ and the vocabulary is rebuilt (then also add "
        "its gzip copy under `tools/vocabulary-sources/valuesets/`, which the provenance test reads, and "
        "drop the gap from `KNOWN_GAPS`)."
    )
    add("")
    add("| group | value set OID | title | in shared/ |")
    add("|---|---|---|---|")
    missing_oids = {w.oid for w in b.missing_sets}
    for w in CONDITION_VALUESETS:
        add(
            f"| `{w.group}` | `{w.oid}` | {w.title} | "
            f"{'**missing**' if w.oid in missing_oids else 'yes'} |"
        )
    for (kind, group), why in sorted(CONDITION_GAPS_WITHOUT_SET.items()):
        add(f"| `{group}` ({kind}) | — | {why} | **missing** |")
    add("")
    add("## Upstream sources")
    add("")
    add("| source | repository / origin | commit | licence | used for |")
    add("|---|---|---|---|---|")
    add(
        "| `shared/data/valuesets/cdc-opioid-cds-r4/*` | `cqframework/opioid-cds-r4` (CDC Opioid "
        "Prescribing Guideline "
        "CDS IG source; `non-opioid-cns-depressant-medications.json` from its `archive/` folder) | "
        "`b29bdcbf6db6f3de26486dbc3820572ee9a78b89` (2025-09-26) | CC0-1.0 | opioid, benzodiazepine, "
        "barbiturate, "
        "CNS-depressant medication sets; substance misuse, opioid misuse, sleep-disordered breathing "
        "conditions |"
    )
    add(
        "| `shared/data/valuesets/vsac-ecqm-content-qicore-2024/*` | `cqframework/ecqm-content-qicore-2024` "
        "(NLM VSAC "
        "expansions, mostly 2025-01-10) | `9ebd48ffebf2ed2489f3904cc8393ebf8979bfc9` (2025-01-15) | CC0-1.0 "
        "(VSAC content normally under a UMLS licence; redistributed publicly by cqframework) | all VSAC sets "
        "(opioids, benzodiazepines, Beers sets, CNS depressants, pregnancy, lactation, seizure, SUD, renal, "
        "dialysis, eGFR, creatinine, hCG, neuromuscular/movement disorders) |"
    )
    add(
        "| `shared/data/codes.csv` (148 hand-picked codes) | US Core `us-core-allergy-substance` ValueSet in "
        "`cqframework/ecqm-content-qicore-2024` (same commit as above, CC0-1.0): baclofen 1292 and the "
        "`cns_depressant_ingredient_*` RxNorm ingredients; VSAC files above; Synthea data below | see rows | "
        "see rows | baclofen ingredient, egfr, creatinine, pregnancy test, indication and renal codes |"
    )
    add(
        "| codes.csv `baclofen_oral_SCD/SBD` | `cds-hooks/sandbox:src/assets/medication-list.js` (RxNorm "
        "name "
        "snapshot, last changed 2018-04) | not recorded | Apache-2.0 | baclofen tablet/ODT product codes "
        "(may be obsolete/remapped) |"
    )
    add(
        "| codes.csv `baclofen_intrathecal_SCD` | **secondary**: ndclist.com/ndc/72888-145 NDC→RxNorm "
        "crosswalk web "
        "page (no repository data file) | — | — | intrathecal 1 and 2 mg/mL codes |"
    )
    add(
        "| codes.csv `indication_cerebral_palsy` 128188000, `indication_spasticity` 221360009 | "
        "`synthetichealth/synthea:src/main/resources/modules/cerebral_palsy.json` | not recorded | "
        "Apache-2.0 | "
        "CP and spasticity SNOMED codes |"
    )
    add(
        "| Synthea-emitted codes (source `Synthea-emitted code in shared/data/synthea/...`) | "
        "`smart-on-fhir/generated-sample-data` R4/SYNTHEA; `Exafluence-Inc/exf-qicore-synthea-dataset` | "
        "`25ac8089f0464b8673c7669509dc0bb8f4883773`; `dcaf099a3c0ffedd21932d225f3e579a65cdf382` | "
        "Apache-2.0; "
        "MIT | LFT/glucose LOINC, stroke, TBI, diabetes, COPD/emphysema/sleep apnoea, wheat allergy, low "
        "back / "
        "neck pain, rheumatoid arthritis, pre-eclampsia codes (code + display confirmed in the bundles at "
        "build "
        "time) |"
    )
    add(
        f"| `{UNVERIFIED_DRUG_SOURCE}` / `{UNVERIFIED_TERM_SOURCE}` / `{UNVERIFIED_CODE_SOURCE}` | "
        f"researcher "
        "background knowledge | — | — | ingredient and term lists for classes/groups with no shared code "
        "source; "
        "ICD-10-CM Z99.2 |"
    )
    add(
        "| baclofen brand names Gablofen, Ozobax, Fleqsuvy, Lyvispah | "
        "`shared/clinical/baclofen-knowledge.md` §2.1 "
        "| — | — | allergy/drug term rows (no code) |"
    )
    add("")
    add(
        "Code systems keep their own terms: LOINC (Regenstrief licence, free with attribution), SNOMED CT "
        "(free in "
        "the US under the UMLS/SNOMED affiliate licence), RxNorm (NLM), ICD-10-CM / ICD-10-PCS and HCPCS "
        "Level II "
        "(public domain). **CPT** is AMA-copyrighted: the CPT codes of the dialysis sets are kept, their "
        "descriptors are replaced by `CPT code (descriptor omitted: AMA copyright)`; production use of CPT "
        "needs "
        "an AMA licence."
    )
    add("")
    add("## Needs pharmacist / clinical review")
    add("")
    for item in REVIEW_ITEMS:
        add(f"* {item}")
    add("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
