"""Synthetic children: realistic, schema-valid, obviously invented records.

Used by the ``demo`` command, the tests and the benchmarks, so no real data is ever needed to
exercise the pipeline. Everything is drawn from one seeded ``random.Random`` and dates are
relative to a fixed :data:`TODAY`, so a seed always gives the same children on any machine.
Names are mostly plain, with a few apostrophes and non-ASCII letters (O'Brien, Zoë, Siân,
Łukasz, Nguyễn) because those are what break encodings. How a child changes between two
nights is in :mod:`api_pipeline.rehearsal.synthetic_changes`, which uses the names here without an underscore.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

TODAY = date(2026, 3, 31)
"""Fixed "today" for generated dates: output depends on the seed only, never on the clock."""

FIRST_NAMES = (
    "Amelia", "Oliver", "Isla", "Noah", "Ava", "Leo", "Mia", "Jack", "Freya", "Harry", "Ella",
    "Theo", "Ruby", "Arlo", "Grace", "Oscar", "Lily", "Alfie", "Evie", "Finley", "Poppy", "Jacob",
    "Maya", "Reuben", "Aisha", "Yusuf", "Priya", "Kwame", "Ifeoma", "Tomasz", "Hana", "Mohammed",
    "Sofia", "Kai", "Daisy", "Carl", "Alice", "Ben",
)  # fmt: skip
FIRST_NAMES_SPECIAL = ("Zoë", "Siân", "Łukasz", "Chloë", "Seán", "Dáithí", "Renée", "Zoltán", "Eilís")
SURNAMES = (
    "Testwell", "Sampleton", "Demoford", "Fakesley", "Exampleby", "Mockridge", "Placeholder",
    "Dummett", "Specimen", "Trialsworth", "Pilotson", "Draftley", "Protoby", "Stubbings",
    "Fixturer", "Schemaford", "Testchild", "Example", "Sample", "Updatecase", "Synthwick",
    "Mockley", "Fauxton", "Madeupson",
)  # fmt: skip
SURNAMES_SPECIAL = (
    "O'Brien", "O'Testigan", "D'Sample", "Nguyễn", "Müller-Demo", "Ó Fakeáin", "Łęcka-Test",
    "Núñez-Sample", "Dé Mockley",
)  # fmt: skip
_SPECIAL_NAME_RATE = 0.07

_UPN_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"
_UPN_UNKNOWN = ("UN1", "UN2", "UN3", "UN4", "UN5", "UN6", "UN7", "UN8", "UN9", "UN10")
SEXES = ("M", "F", "M", "F", "U")
ETHNICITIES = (
    "WBRI", "WIRI", "WIRT", "WOTH", "WROM", "MWBC", "MWBA", "MWAS", "MOTH", "AIND", "APKN",
    "ABAN", "AOTH", "BCRB", "BAFR", "BOTH", "CHNE", "OOTH", "REFU", "NOBT",
)  # fmt: skip
DISABILITIES = ("MOB", "HAND", "PC", "INC", "COMM", "LD", "HEAR", "VIS", "BEH", "CON", "AUT", "DDA")
_POSTCODE_AREAS = ("BN", "AB", "LS", "M", "B", "NE", "CF", "EX", "NR", "YO", "SW", "E", "TS", "PL")
_POSTCODE_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
REFERRAL_SOURCES = (
    "1A", "1B", "1C", "1D", "2A", "2B", "3A", "3B", "3C", "3D", "3E", "3F", "4", "5A", "5B",
    "5C", "5D", "6", "7", "8", "9", "10",
)  # fmt: skip
CLOSURE_REASONS = ("RC1", "RC2", "RC3", "RC4", "RC5", "RC6", "RC7", "RC8", "RC9")
FACTORS = (
    "1A", "1B", "1C", "2A", "2B", "2C", "3A", "3B", "3C", "4A", "4B", "4C", "5A", "5B", "5C",
    "6A", "6B", "6C", "7A", "8B", "8C", "8D", "8E", "8F", "9A", "10A", "11A", "12A", "13A",
    "14A", "15A", "16A", "17A", "18B", "18C", "19A", "19B", "19C", "20", "21", "22A", "23A", "24A",
)  # fmt: skip
_START_REASONS = ("B", "C", "D", "E", "G", "H", "J", "L", "N", "S", "T", "U", "V")
PLACEMENT_TYPES = (
    "A3", "A4", "A5", "A6", "H5", "K1", "K2", "P1", "P2", "P3", "R1", "R2", "R3", "R5", "S1",
    "T0", "T1", "T2", "T3", "T4", "U1", "U2", "U3", "U4", "U5", "U6", "Z1",
)  # fmt: skip
END_REASONS = (
    "E11", "E12", "E13", "E14", "E15", "E16", "E17", "E2", "E3", "E4A", "E4B", "E41", "E45",
    "E46", "E47", "E48", "E5", "E6", "E7", "E8", "E9",
)  # fmt: skip
_CHANGE_REASONS = ("ALLEG", "APPRR", "CARPL", "CLOSE", "CREQB", "CREQO", "CHILD", "LAREQ", "OTHER", "PLACE")
_ACTIVITIES = ("F1", "P1", "F2", "P2", "F4", "P4", "F5", "P5", "G4", "G5", "G6")
_ACCOMMODATIONS = ("B", "C", "D", "E", "G", "H", "K", "R", "S", "T", "U", "V", "W", "X", "Y", "Z")

# id'd collections inside an episode and their id keys (makers: ITEM_MAKERS, further down).
ITEM_KINDS = (
    ("child_and_family_assessments", "child_and_family_assessment_id"),
    ("child_in_need_plans", "child_in_need_plan_id"),
    ("section_47_assessments", "section_47_assessment_id"),
    ("child_protection_plans", "child_protection_plan_id"),
    ("child_looked_after_placements", "child_looked_after_placement_id"),
)

Rec = dict[str, Any]


# --------------------------------------------------------------------------------------
# small helpers


def iso(d: date) -> str:
    return d.isoformat()


def parse_day(s: Any, default: date) -> date:
    """Parse a record's date, falling back when it is missing or odd."""
    if isinstance(s, str):
        try:
            return date.fromisoformat(s)
        except ValueError:
            return default
    return default


def between(rng: random.Random, lo: date, hi: date) -> date:
    """A day in [lo, hi]; ``lo`` when the window is empty."""
    span = (hi - lo).days
    return lo if span <= 0 else lo + timedelta(days=rng.randint(0, span))


def after(rng: random.Random, start: date, lo_days: int, hi_days: int, limit: date) -> date:
    return min(start + timedelta(days=rng.randint(lo_days, hi_days)), limit)


def _new_id(rng: random.Random, taken: set[str], prefix: str = "") -> str:
    while True:
        ident = f"{prefix}{rng.randrange(10_000_000, 100_000_000)}"
        if ident not in taken:
            taken.add(ident)
            return ident


def pick_name(rng: random.Random, plain: tuple[str, ...], special: tuple[str, ...]) -> str:
    return rng.choice(special) if rng.random() < _SPECIAL_NAME_RATE else rng.choice(plain)


def postcode(rng: random.Random) -> str:
    letters = _POSTCODE_LETTERS
    return (
        f"{rng.choice(_POSTCODE_AREAS)}{rng.randint(1, 29)} "
        f"{rng.randint(0, 9)}{rng.choice(letters)}{rng.choice(letters)}"
    )


def upn(rng: random.Random) -> str:
    return f"{rng.choice(_UPN_LETTERS)}{rng.randrange(10**12):012d}"


class Ctx:
    """What item makers need to keep dates plausible and ids unique within one child."""

    __slots__ = ("rng", "dob", "purge_flags", "ids")

    def __init__(self, rng: random.Random, dob: date, purge_flags: bool) -> None:
        self.rng = rng
        self.dob = dob
        self.purge_flags = purge_flags
        self.ids: set[str] = set()

    def flag(self, entity: Rec) -> Rec:
        # Many LAs' SQL writes "purge": false on every entity that may carry it.
        if self.purge_flags:
            entity["purge"] = False
        return entity


# --------------------------------------------------------------------------------------
# makers


def child_details(ctx: Ctx, unborn: bool) -> Rec:
    rng = ctx.rng
    d: Rec = {}
    if not unborn and rng.random() < 0.85:
        d["unique_pupil_number"] = upn(rng)
        if rng.random() < 0.05:
            d["former_unique_pupil_number"] = upn(rng)
    elif not unborn:
        d["unique_pupil_number_unknown_reason"] = rng.choice(_UPN_UNKNOWN)
    d["first_name"] = pick_name(rng, FIRST_NAMES, FIRST_NAMES_SPECIAL)
    d["surname"] = pick_name(rng, SURNAMES, SURNAMES_SPECIAL)
    if unborn:
        d["expected_date_of_birth"] = iso(ctx.dob)
    else:
        d["date_of_birth"] = iso(ctx.dob)
        if rng.random() < 0.15:
            d["expected_date_of_birth"] = iso(ctx.dob + timedelta(days=rng.randint(-20, 20)))
    d["sex"] = rng.choice(SEXES)
    d["ethnicity"] = rng.choice(ETHNICITIES)
    if rng.random() < 0.15:
        d["disabilities"] = rng.sample(DISABILITIES, rng.randint(1, 3))
    if rng.random() < 0.95:
        d["postcode"] = postcode(rng)
    r = rng.random()
    if r < 0.04 and not unborn:
        d["uasc_flag"] = True
        if rng.random() < 0.5:
            d["uasc_end_date"] = iso(between(rng, max(ctx.dob, TODAY - timedelta(days=365 * 3)), TODAY))
    elif r < 0.3:
        d["uasc_flag"] = False
    return ctx.flag(d)


def health(ctx: Ctx) -> Rec:
    rng = ctx.rng
    block: Rec = {}
    lo = ctx.dob + timedelta(days=365 * 4)
    if lo < TODAY and rng.random() < 0.8:
        block["sdq_assessments"] = [
            {"date": iso(between(rng, lo, TODAY)), "score": rng.randint(0, 40)} for _ in range(rng.randint(1, 3))
        ]
    block = ctx.flag(block)
    return block or {"purge": False}


def _care_workers(ctx: Ctx, start: date, end: date | None) -> list[Rec]:
    rng = ctx.rng
    workers = []
    day = start
    count = rng.randint(1, 3)
    for n in range(count):
        w: Rec = {"worker_id": f"W{rng.randrange(1_000_000, 10_000_000)}", "start_date": iso(day)}
        last = n == count - 1
        if not last or (end is not None and rng.random() < 0.7):
            finish = after(rng, day, 20, 400, end or TODAY)
            w["end_date"] = iso(finish)
            day = finish
        workers.append(w)
        if day >= (end or TODAY):
            break
    return workers


def _assessment(ctx: Ctx, lo: date, hi: date) -> Rec:
    rng = ctx.rng
    start = between(rng, lo, hi)
    a: Rec = {"child_and_family_assessment_id": _new_id(rng, ctx.ids, "A"), "start_date": iso(start)}
    if start < hi or rng.random() < 0.8:
        a["authorisation_date"] = iso(after(rng, start, 5, 45, hi))
        a["factors"] = rng.sample(FACTORS, rng.randint(1, 5))
    return ctx.flag(a)


def _cin_plan(ctx: Ctx, lo: date, hi: date) -> Rec:
    rng = ctx.rng
    start = between(rng, lo, hi)
    p: Rec = {"child_in_need_plan_id": _new_id(rng, ctx.ids, "N"), "start_date": iso(start)}
    if hi < TODAY or rng.random() < 0.5:
        p["end_date"] = iso(after(rng, start, 30, 500, hi))
    return ctx.flag(p)


def _s47(ctx: Ctx, lo: date, hi: date) -> Rec:
    rng = ctx.rng
    start = between(rng, lo, hi)
    s: Rec = {"section_47_assessment_id": _new_id(rng, ctx.ids, "S"), "start_date": iso(start)}
    icpc = rng.random() < 0.6
    s["icpc_required_flag"] = icpc
    if icpc:
        s["icpc_date"] = iso(after(rng, start, 3, 15, hi))
    if hi < TODAY or rng.random() < 0.7:
        s["end_date"] = iso(after(rng, start, 5, 40, hi))
    return ctx.flag(s)


def _cp_plan(ctx: Ctx, lo: date, hi: date) -> Rec:
    rng = ctx.rng
    start = between(rng, lo, hi)
    p: Rec = {"child_protection_plan_id": _new_id(rng, ctx.ids, "P"), "start_date": iso(start)}
    if hi < TODAY or rng.random() < 0.4:
        p["end_date"] = iso(after(rng, start, 60, 700, hi))
    return ctx.flag(p)


def _placement(ctx: Ctx, lo: date, hi: date, ended: bool | None = None) -> Rec:
    rng = ctx.rng
    start = between(rng, lo, hi)
    p: Rec = {
        "child_looked_after_placement_id": _new_id(rng, ctx.ids, "L"),
        "start_date": iso(start),
        "start_reason": rng.choice(_START_REASONS),
        "placement_type": rng.choice(PLACEMENT_TYPES),
    }
    if rng.random() < 0.9:
        p["postcode"] = postcode(rng)
    if ended is None:
        ended = hi < TODAY or rng.random() < 0.4
    if ended:
        p["end_date"] = iso(after(rng, start, 14, 600, hi))
        p["end_reason"] = rng.choice(END_REASONS)
        p["change_reason"] = rng.choice(_CHANGE_REASONS)
    return ctx.flag(p)


def adoption(ctx: Ctx, lo: date, hi: date) -> Rec:
    rng = ctx.rng
    decided = between(rng, lo, hi)
    a: Rec = {"initial_decision_date": iso(decided)}
    if rng.random() < 0.7:
        matched = after(rng, decided, 30, 300, hi)
        a["matched_date"] = iso(matched)
        if rng.random() < 0.7:
            a["placed_date"] = iso(after(rng, matched, 7, 120, hi))
    return ctx.flag(a)


def care_leavers(ctx: Ctx, lo: date, hi: date) -> Rec:
    rng = ctx.rng
    c: Rec = {
        "contact_date": iso(between(rng, lo, hi)),
        "activity": rng.choice(_ACTIVITIES),
        "accommodation": rng.choice(_ACCOMMODATIONS),
    }
    return ctx.flag(c)


ITEM_MAKERS: dict[str, Callable[[Ctx, date, date], Rec]] = {
    "child_and_family_assessments": _assessment,
    "child_in_need_plans": _cin_plan,
    "section_47_assessments": _s47,
    "child_protection_plans": _cp_plan,
    "child_looked_after_placements": _placement,
}


def make_episode(ctx: Ctx, referral: date, closure: date | None, taken: set[str]) -> Rec:
    rng = ctx.rng
    hi = closure or TODAY
    e: Rec = {
        "social_care_episode_id": _new_id(rng, taken),
        "referral_date": iso(referral),
        "referral_source": rng.choice(REFERRAL_SOURCES),
    }
    nfa = closure is not None and rng.random() < 0.1
    if nfa or rng.random() < 0.3:
        e["referral_no_further_action_flag"] = nfa
    e["care_worker_details"] = _care_workers(ctx, referral, closure)
    if not nfa:
        e["child_and_family_assessments"] = [_assessment(ctx, referral, hi) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.6:
            e["child_in_need_plans"] = [_cin_plan(ctx, referral, hi) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.25:
            s47s = [_s47(ctx, referral, hi) for _ in range(rng.randint(1, 2))]
            e["section_47_assessments"] = s47s
            icpc = [s for s in s47s if s.get("icpc_date")]
            if icpc and rng.random() < 0.6:
                e["child_protection_plans"] = [_cp_plan(ctx, parse_day(icpc[0]["icpc_date"], referral), hi)]
        if rng.random() < 0.25:
            count = rng.randint(1, 3)
            e["child_looked_after_placements"] = [
                _placement(ctx, referral, hi, ended=True if n < count - 1 else None) for n in range(count)
            ]
            if rng.random() < 0.2:
                e["adoption"] = adoption(ctx, referral, hi)
        if ctx.dob + timedelta(days=365 * 16) < hi and rng.random() < 0.5:
            e["care_leavers"] = care_leavers(ctx, max(referral, ctx.dob + timedelta(days=365 * 16)), hi)
    if closure is not None:
        e["closure_date"] = iso(closure)
        e["closure_reason"] = rng.choice(CLOSURE_REASONS)
    return ctx.flag(e)


def _episodes(ctx: Ctx, count: int, unborn: bool) -> list[Rec]:
    rng = ctx.rng
    lo = TODAY - timedelta(days=200) if unborn else max(ctx.dob, TODAY - timedelta(days=365 * 12))
    referrals = sorted(between(rng, lo, TODAY - timedelta(days=7)) for _ in range(count))
    taken: set[str] = set()
    out = []
    for n, referral in enumerate(referrals):
        nxt = referrals[n + 1] if n + 1 < count else None
        if nxt is not None:
            closure: date | None = between(rng, referral, nxt)
        elif rng.random() < 0.5:
            closure = after(rng, referral, 7, 700, TODAY)
        else:
            closure = None
        out.append(make_episode(ctx, referral, closure, taken))
    return out


def make_child(rng: random.Random, index: int) -> dict:
    """One realistic, schema-valid synthetic child with ids derived from ``index``."""
    unborn = rng.random() < 0.03
    if unborn:
        dob = TODAY + timedelta(days=rng.randint(10, 150))
    else:
        dob = between(rng, TODAY - timedelta(days=int(365.25 * 17.5)), TODAY - timedelta(days=30))
    ctx = Ctx(rng, dob, purge_flags=rng.random() < 0.6)
    record: Rec = {"la_child_id": f"C{index:07d}", "mis_child_id": f"MIS-{index:07d}"}
    if ctx.purge_flags:
        record["purge"] = False
    record["child_details"] = child_details(ctx, unborn)
    if rng.random() < 0.45:
        record["health_and_wellbeing"] = health(ctx)
    count = rng.choices((1, 2, 3, 4), weights=(50, 30, 13, 7))[0]
    record["social_care_episodes"] = _episodes(ctx, count, unborn)
    return record


def make_children(n: int, seed: int = 1, *, first: int = 1) -> Iterator[dict]:
    """``n`` children (``C0000001``... from ``first``), the same for the same seed."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    for index in range(first, first + n):
        yield make_child(rng, index)
