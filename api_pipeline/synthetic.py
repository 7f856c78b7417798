"""Synthetic children: realistic, schema-valid, obviously invented records.

Used by the ``demo`` command, the tests and the benchmarks, so no real data is ever needed to
exercise the pipeline. Everything is drawn from one seeded ``random.Random`` and dates are
relative to a fixed :data:`TODAY`, so a seed always gives the same children on any machine.
Names are mostly plain, with a few apostrophes and non-ASCII letters (O'Brien, Zoë, Siân,
Łukasz, Nguyễn) because those are what break encodings.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from typing import Any

TODAY = date(2026, 3, 31)
"""Fixed "today" for generated dates: output depends on the seed only, never on the clock."""

_FIRST_NAMES = (
    "Amelia", "Oliver", "Isla", "Noah", "Ava", "Leo", "Mia", "Jack", "Freya", "Harry", "Ella",
    "Theo", "Ruby", "Arlo", "Grace", "Oscar", "Lily", "Alfie", "Evie", "Finley", "Poppy", "Jacob",
    "Maya", "Reuben", "Aisha", "Yusuf", "Priya", "Kwame", "Ifeoma", "Tomasz", "Hana", "Mohammed",
    "Sofia", "Kai", "Daisy", "Carl", "Alice", "Ben",
)  # fmt: skip
_FIRST_NAMES_SPECIAL = ("Zoë", "Siân", "Łukasz", "Chloë", "Seán", "Dáithí", "Renée", "Zoltán", "Eilís")
_SURNAMES = (
    "Testwell", "Sampleton", "Demoford", "Fakesley", "Exampleby", "Mockridge", "Placeholder",
    "Dummett", "Specimen", "Trialsworth", "Pilotson", "Draftley", "Protoby", "Stubbings",
    "Fixturer", "Schemaford", "Testchild", "Example", "Sample", "Updatecase", "Synthwick",
    "Mockley", "Fauxton", "Madeupson",
)  # fmt: skip
_SURNAMES_SPECIAL = (
    "O'Brien", "O'Testigan", "D'Sample", "Nguyễn", "Müller-Demo", "Ó Fakeáin", "Łęcka-Test",
    "Núñez-Sample", "Dé Mockley",
)  # fmt: skip
_SPECIAL_NAME_RATE = 0.07

_UPN_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"
_UPN_UNKNOWN = ("UN1", "UN2", "UN3", "UN4", "UN5", "UN6", "UN7", "UN8", "UN9", "UN10")
_SEXES = ("M", "F", "M", "F", "U")
_ETHNICITIES = (
    "WBRI", "WIRI", "WIRT", "WOTH", "WROM", "MWBC", "MWBA", "MWAS", "MOTH", "AIND", "APKN",
    "ABAN", "AOTH", "BCRB", "BAFR", "BOTH", "CHNE", "OOTH", "REFU", "NOBT",
)  # fmt: skip
_DISABILITIES = ("MOB", "HAND", "PC", "INC", "COMM", "LD", "HEAR", "VIS", "BEH", "CON", "AUT", "DDA")
_POSTCODE_AREAS = ("BN", "AB", "LS", "M", "B", "NE", "CF", "EX", "NR", "YO", "SW", "E", "TS", "PL")
_POSTCODE_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
_REFERRAL_SOURCES = (
    "1A", "1B", "1C", "1D", "2A", "2B", "3A", "3B", "3C", "3D", "3E", "3F", "4", "5A", "5B",
    "5C", "5D", "6", "7", "8", "9", "10",
)  # fmt: skip
_CLOSURE_REASONS = ("RC1", "RC2", "RC3", "RC4", "RC5", "RC6", "RC7", "RC8", "RC9")
_FACTORS = (
    "1A", "1B", "1C", "2A", "2B", "2C", "3A", "3B", "3C", "4A", "4B", "4C", "5A", "5B", "5C",
    "6A", "6B", "6C", "7A", "8B", "8C", "8D", "8E", "8F", "9A", "10A", "11A", "12A", "13A",
    "14A", "15A", "16A", "17A", "18B", "18C", "19A", "19B", "19C", "20", "21", "22A", "23A", "24A",
)  # fmt: skip
_START_REASONS = ("B", "C", "D", "E", "G", "H", "J", "L", "N", "S", "T", "U", "V")
_PLACEMENT_TYPES = (
    "A3", "A4", "A5", "A6", "H5", "K1", "K2", "P1", "P2", "P3", "R1", "R2", "R3", "R5", "S1",
    "T0", "T1", "T2", "T3", "T4", "U1", "U2", "U3", "U4", "U5", "U6", "Z1",
)  # fmt: skip
_END_REASONS = (
    "E11", "E12", "E13", "E14", "E15", "E16", "E17", "E2", "E3", "E4A", "E4B", "E41", "E45",
    "E46", "E47", "E48", "E5", "E6", "E7", "E8", "E9",
)  # fmt: skip
_CHANGE_REASONS = ("ALLEG", "APPRR", "CARPL", "CLOSE", "CREQB", "CREQO", "CHILD", "LAREQ", "OTHER", "PLACE")
_ACTIVITIES = ("F1", "P1", "F2", "P2", "F4", "P4", "F5", "P5", "G4", "G5", "G6")
_ACCOMMODATIONS = ("B", "C", "D", "E", "G", "H", "K", "R", "S", "T", "U", "V", "W", "X", "Y", "Z")

# id'd collections inside an episode and their id keys (makers: _ITEM_MAKERS, further down).
_ITEM_KINDS = (
    ("child_and_family_assessments", "child_and_family_assessment_id"),
    ("child_in_need_plans", "child_in_need_plan_id"),
    ("section_47_assessments", "section_47_assessment_id"),
    ("child_protection_plans", "child_protection_plan_id"),
    ("child_looked_after_placements", "child_looked_after_placement_id"),
)

_Rec = dict[str, Any]


# --------------------------------------------------------------------------------------
# small helpers


def _iso(d: date) -> str:
    return d.isoformat()


def _day(s: Any, default: date) -> date:
    """Parse a record's date, falling back when it is missing or odd."""
    if isinstance(s, str):
        try:
            return date.fromisoformat(s)
        except ValueError:
            return default
    return default


def _between(rng: random.Random, lo: date, hi: date) -> date:
    """A day in [lo, hi]; ``lo`` when the window is empty."""
    span = (hi - lo).days
    return lo if span <= 0 else lo + timedelta(days=rng.randint(0, span))


def _after(rng: random.Random, start: date, lo_days: int, hi_days: int, limit: date) -> date:
    return min(start + timedelta(days=rng.randint(lo_days, hi_days)), limit)


def _new_id(rng: random.Random, taken: set[str], prefix: str = "") -> str:
    while True:
        ident = f"{prefix}{rng.randrange(10_000_000, 100_000_000)}"
        if ident not in taken:
            taken.add(ident)
            return ident


def _name(rng: random.Random, plain: tuple[str, ...], special: tuple[str, ...]) -> str:
    return rng.choice(special) if rng.random() < _SPECIAL_NAME_RATE else rng.choice(plain)


def _postcode(rng: random.Random) -> str:
    letters = _POSTCODE_LETTERS
    return (
        f"{rng.choice(_POSTCODE_AREAS)}{rng.randint(1, 29)} "
        f"{rng.randint(0, 9)}{rng.choice(letters)}{rng.choice(letters)}"
    )


def _upn(rng: random.Random) -> str:
    return f"{rng.choice(_UPN_LETTERS)}{rng.randrange(10**12):012d}"


def _copy(value: Any) -> Any:
    """Deep copy of JSON data, much faster than ``copy.deepcopy``."""
    if type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if type(value) is list:
        return [_copy(v) for v in value]
    return value


class _Ctx:
    """What item makers need to keep dates plausible and ids unique within one child."""

    __slots__ = ("rng", "dob", "purge_flags", "ids")

    def __init__(self, rng: random.Random, dob: date, purge_flags: bool) -> None:
        self.rng = rng
        self.dob = dob
        self.purge_flags = purge_flags
        self.ids: set[str] = set()

    def flag(self, entity: _Rec) -> _Rec:
        # Many LAs' SQL writes "purge": false on every entity that may carry it.
        if self.purge_flags:
            entity["purge"] = False
        return entity


# --------------------------------------------------------------------------------------
# makers


def _child_details(ctx: _Ctx, unborn: bool) -> _Rec:
    rng = ctx.rng
    d: _Rec = {}
    if not unborn and rng.random() < 0.85:
        d["unique_pupil_number"] = _upn(rng)
        if rng.random() < 0.05:
            d["former_unique_pupil_number"] = _upn(rng)
    elif not unborn:
        d["unique_pupil_number_unknown_reason"] = rng.choice(_UPN_UNKNOWN)
    d["first_name"] = _name(rng, _FIRST_NAMES, _FIRST_NAMES_SPECIAL)
    d["surname"] = _name(rng, _SURNAMES, _SURNAMES_SPECIAL)
    if unborn:
        d["expected_date_of_birth"] = _iso(ctx.dob)
    else:
        d["date_of_birth"] = _iso(ctx.dob)
        if rng.random() < 0.15:
            d["expected_date_of_birth"] = _iso(ctx.dob + timedelta(days=rng.randint(-20, 20)))
    d["sex"] = rng.choice(_SEXES)
    d["ethnicity"] = rng.choice(_ETHNICITIES)
    if rng.random() < 0.15:
        d["disabilities"] = rng.sample(_DISABILITIES, rng.randint(1, 3))
    if rng.random() < 0.95:
        d["postcode"] = _postcode(rng)
    r = rng.random()
    if r < 0.04 and not unborn:
        d["uasc_flag"] = True
        if rng.random() < 0.5:
            d["uasc_end_date"] = _iso(_between(rng, max(ctx.dob, TODAY - timedelta(days=365 * 3)), TODAY))
    elif r < 0.3:
        d["uasc_flag"] = False
    return ctx.flag(d)


def _health(ctx: _Ctx) -> _Rec:
    rng = ctx.rng
    block: _Rec = {}
    lo = ctx.dob + timedelta(days=365 * 4)
    if lo < TODAY and rng.random() < 0.8:
        block["sdq_assessments"] = [
            {"date": _iso(_between(rng, lo, TODAY)), "score": rng.randint(0, 40)} for _ in range(rng.randint(1, 3))
        ]
    block = ctx.flag(block)
    return block or {"purge": False}


def _care_workers(ctx: _Ctx, start: date, end: date | None) -> list[_Rec]:
    rng = ctx.rng
    workers = []
    day = start
    count = rng.randint(1, 3)
    for n in range(count):
        w: _Rec = {"worker_id": f"W{rng.randrange(1_000_000, 10_000_000)}", "start_date": _iso(day)}
        last = n == count - 1
        if not last or (end is not None and rng.random() < 0.7):
            finish = _after(rng, day, 20, 400, end or TODAY)
            w["end_date"] = _iso(finish)
            day = finish
        workers.append(w)
        if day >= (end or TODAY):
            break
    return workers


def _assessment(ctx: _Ctx, lo: date, hi: date) -> _Rec:
    rng = ctx.rng
    start = _between(rng, lo, hi)
    a: _Rec = {"child_and_family_assessment_id": _new_id(rng, ctx.ids, "A"), "start_date": _iso(start)}
    if start < hi or rng.random() < 0.8:
        a["authorisation_date"] = _iso(_after(rng, start, 5, 45, hi))
        a["factors"] = rng.sample(_FACTORS, rng.randint(1, 5))
    return ctx.flag(a)


def _cin_plan(ctx: _Ctx, lo: date, hi: date) -> _Rec:
    rng = ctx.rng
    start = _between(rng, lo, hi)
    p: _Rec = {"child_in_need_plan_id": _new_id(rng, ctx.ids, "N"), "start_date": _iso(start)}
    if hi < TODAY or rng.random() < 0.5:
        p["end_date"] = _iso(_after(rng, start, 30, 500, hi))
    return ctx.flag(p)


def _s47(ctx: _Ctx, lo: date, hi: date) -> _Rec:
    rng = ctx.rng
    start = _between(rng, lo, hi)
    s: _Rec = {"section_47_assessment_id": _new_id(rng, ctx.ids, "S"), "start_date": _iso(start)}
    icpc = rng.random() < 0.6
    s["icpc_required_flag"] = icpc
    if icpc:
        s["icpc_date"] = _iso(_after(rng, start, 3, 15, hi))
    if hi < TODAY or rng.random() < 0.7:
        s["end_date"] = _iso(_after(rng, start, 5, 40, hi))
    return ctx.flag(s)


def _cp_plan(ctx: _Ctx, lo: date, hi: date) -> _Rec:
    rng = ctx.rng
    start = _between(rng, lo, hi)
    p: _Rec = {"child_protection_plan_id": _new_id(rng, ctx.ids, "P"), "start_date": _iso(start)}
    if hi < TODAY or rng.random() < 0.4:
        p["end_date"] = _iso(_after(rng, start, 60, 700, hi))
    return ctx.flag(p)


def _placement(ctx: _Ctx, lo: date, hi: date, ended: bool | None = None) -> _Rec:
    rng = ctx.rng
    start = _between(rng, lo, hi)
    p: _Rec = {
        "child_looked_after_placement_id": _new_id(rng, ctx.ids, "L"),
        "start_date": _iso(start),
        "start_reason": rng.choice(_START_REASONS),
        "placement_type": rng.choice(_PLACEMENT_TYPES),
    }
    if rng.random() < 0.9:
        p["postcode"] = _postcode(rng)
    if ended is None:
        ended = hi < TODAY or rng.random() < 0.4
    if ended:
        p["end_date"] = _iso(_after(rng, start, 14, 600, hi))
        p["end_reason"] = rng.choice(_END_REASONS)
        p["change_reason"] = rng.choice(_CHANGE_REASONS)
    return ctx.flag(p)


def _adoption(ctx: _Ctx, lo: date, hi: date) -> _Rec:
    rng = ctx.rng
    decided = _between(rng, lo, hi)
    a: _Rec = {"initial_decision_date": _iso(decided)}
    if rng.random() < 0.7:
        matched = _after(rng, decided, 30, 300, hi)
        a["matched_date"] = _iso(matched)
        if rng.random() < 0.7:
            a["placed_date"] = _iso(_after(rng, matched, 7, 120, hi))
    return ctx.flag(a)


def _care_leavers(ctx: _Ctx, lo: date, hi: date) -> _Rec:
    rng = ctx.rng
    c: _Rec = {
        "contact_date": _iso(_between(rng, lo, hi)),
        "activity": rng.choice(_ACTIVITIES),
        "accommodation": rng.choice(_ACCOMMODATIONS),
    }
    return ctx.flag(c)


_ITEM_MAKERS: dict[str, Callable[[_Ctx, date, date], _Rec]] = {
    "child_and_family_assessments": _assessment,
    "child_in_need_plans": _cin_plan,
    "section_47_assessments": _s47,
    "child_protection_plans": _cp_plan,
    "child_looked_after_placements": _placement,
}


def _episode(ctx: _Ctx, referral: date, closure: date | None, taken: set[str]) -> _Rec:
    rng = ctx.rng
    hi = closure or TODAY
    e: _Rec = {
        "social_care_episode_id": _new_id(rng, taken),
        "referral_date": _iso(referral),
        "referral_source": rng.choice(_REFERRAL_SOURCES),
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
                e["child_protection_plans"] = [_cp_plan(ctx, _day(icpc[0]["icpc_date"], referral), hi)]
        if rng.random() < 0.25:
            count = rng.randint(1, 3)
            e["child_looked_after_placements"] = [
                _placement(ctx, referral, hi, ended=True if n < count - 1 else None) for n in range(count)
            ]
            if rng.random() < 0.2:
                e["adoption"] = _adoption(ctx, referral, hi)
        if ctx.dob + timedelta(days=365 * 16) < hi and rng.random() < 0.5:
            e["care_leavers"] = _care_leavers(ctx, max(referral, ctx.dob + timedelta(days=365 * 16)), hi)
    if closure is not None:
        e["closure_date"] = _iso(closure)
        e["closure_reason"] = rng.choice(_CLOSURE_REASONS)
    return ctx.flag(e)


def _episodes(ctx: _Ctx, count: int, unborn: bool) -> list[_Rec]:
    rng = ctx.rng
    lo = TODAY - timedelta(days=200) if unborn else max(ctx.dob, TODAY - timedelta(days=365 * 12))
    referrals = sorted(_between(rng, lo, TODAY - timedelta(days=7)) for _ in range(count))
    taken: set[str] = set()
    out = []
    for n, referral in enumerate(referrals):
        nxt = referrals[n + 1] if n + 1 < count else None
        if nxt is not None:
            closure: date | None = _between(rng, referral, nxt)
        elif rng.random() < 0.5:
            closure = _after(rng, referral, 7, 700, TODAY)
        else:
            closure = None
        out.append(_episode(ctx, referral, closure, taken))
    return out


def make_child(rng: random.Random, index: int) -> dict:
    """One realistic, schema-valid synthetic child with ids derived from ``index``."""
    unborn = rng.random() < 0.03
    if unborn:
        dob = TODAY + timedelta(days=rng.randint(10, 150))
    else:
        dob = _between(rng, TODAY - timedelta(days=int(365.25 * 17.5)), TODAY - timedelta(days=30))
    ctx = _Ctx(rng, dob, purge_flags=rng.random() < 0.6)
    record: _Rec = {"la_child_id": f"C{index:07d}", "mis_child_id": f"MIS-{index:07d}"}
    if ctx.purge_flags:
        record["purge"] = False
    record["child_details"] = _child_details(ctx, unborn)
    if rng.random() < 0.45:
        record["health_and_wellbeing"] = _health(ctx)
    count = rng.choices((1, 2, 3, 4), weights=(50, 30, 13, 7))[0]
    record["social_care_episodes"] = _episodes(ctx, count, unborn)
    return record


def make_children(n: int, seed: int = 1, *, first: int = 1) -> Iterator[dict]:
    """``n`` children (``C0000001``... from ``first``), the same for the same seed."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    for index in range(first, first + n):
        yield make_child(rng, index)


# --------------------------------------------------------------------------------------
# mutations: the kinds of change an LA's nightly SQL produces


def _ctx_for(rng: random.Random, record: _Rec) -> _Ctx:
    details = record.get("child_details") or {}
    dob = _day(details.get("date_of_birth") or details.get("expected_date_of_birth"), TODAY)
    ctx = _Ctx(rng, min(dob, TODAY), purge_flags=record.get("purge") is False)
    for episode in record.get("social_care_episodes") or ():
        ctx.ids.add(str(episode.get("social_care_episode_id")))
        for key, id_key in _ITEM_KINDS:
            for item in episode.get(key) or ():
                ctx.ids.add(str(item.get(id_key)))
    return ctx


def _window(ctx: _Ctx, episode: _Rec) -> tuple[date, date]:
    lo = _day(episode.get("referral_date"), ctx.dob)
    hi = _day(episode.get("closure_date"), TODAY)
    return lo, max(lo, hi)


def _pick_episode(ctx: _Ctx, record: _Rec) -> _Rec | None:
    episodes = record.get("social_care_episodes")
    return ctx.rng.choice(episodes) if episodes else None


def _drop_empty(container: _Rec, key: str) -> None:
    if not container.get(key):
        container.pop(key, None)


def _edit_child_details(ctx: _Ctx, record: _Rec) -> bool:
    rng = ctx.rng
    details = record.get("child_details")
    if details is None:
        record["child_details"] = _child_details(ctx, unborn=False)
        return True
    field = rng.choice(("first_name", "surname", "postcode", "ethnicity", "sex", "disabilities", "upn"))
    if field == "first_name":
        details["first_name"] = _name(rng, _FIRST_NAMES, _FIRST_NAMES_SPECIAL)
    elif field == "surname":
        details["surname"] = _name(rng, _SURNAMES, _SURNAMES_SPECIAL)
    elif field == "postcode":
        details["postcode"] = _postcode(rng)
    elif field == "ethnicity":
        details["ethnicity"] = rng.choice(_ETHNICITIES)
    elif field == "sex":
        details["sex"] = rng.choice(_SEXES)
    elif field == "disabilities":
        details["disabilities"] = rng.sample(_DISABILITIES, rng.randint(1, 4))
    else:
        if "unique_pupil_number" in details and rng.random() < 0.5:
            details["former_unique_pupil_number"] = details["unique_pupil_number"]
        details["unique_pupil_number"] = _upn(rng)
        details.pop("unique_pupil_number_unknown_reason", None)
    return True


def _drop_optional_detail(ctx: _Ctx, record: _Rec) -> bool:
    details = record.get("child_details")
    if not details:
        return False
    optional = [
        k
        for k in (
            "expected_date_of_birth",
            "former_unique_pupil_number",
            "uasc_end_date",
            "disabilities",
            "postcode",
            "unique_pupil_number_unknown_reason",
            "purge",
        )
        if k in details
    ]
    if not optional:
        return False
    details.pop(ctx.rng.choice(optional))
    _drop_empty(record, "child_details")
    return True


def _add_episode(ctx: _Ctx, record: _Rec) -> bool:
    rng = ctx.rng
    episodes = record.setdefault("social_care_episodes", [])
    taken = {str(e.get("social_care_episode_id")) for e in episodes}
    lo = min(max(ctx.dob, TODAY - timedelta(days=365 * 3)), TODAY)
    referral = _between(rng, lo, TODAY)
    closure = _after(rng, referral, 7, 300, TODAY) if rng.random() < 0.3 else None
    episodes.append(_episode(ctx, referral, closure, taken))
    return True


def _remove_episode(ctx: _Ctx, record: _Rec) -> bool:
    episodes = record.get("social_care_episodes")
    if not episodes:
        return False
    episodes.pop(ctx.rng.randrange(len(episodes)))
    _drop_empty(record, "social_care_episodes")
    return True


def _edit_episode(ctx: _Ctx, record: _Rec) -> bool:
    rng = ctx.rng
    episode = _pick_episode(ctx, record)
    if episode is None:
        return False
    choice = rng.randrange(4)
    if choice == 0:
        episode["referral_source"] = rng.choice(_REFERRAL_SOURCES)
    elif choice == 1 and "closure_date" not in episode:
        lo, _ = _window(ctx, episode)
        episode["closure_date"] = _iso(_after(rng, lo, 7, 400, TODAY))
        episode["closure_reason"] = rng.choice(_CLOSURE_REASONS)
    elif choice == 1:  # reopened: closure recorded in error
        episode.pop("closure_date")
        episode.pop("closure_reason", None)
    elif choice == 2:
        episode["referral_no_further_action_flag"] = not episode.get("referral_no_further_action_flag", False)
    else:
        lo, hi = _window(ctx, episode)
        episode["referral_date"] = _iso(_between(rng, lo - timedelta(days=10), min(lo + timedelta(days=10), hi)))
    return True


def _add_item(ctx: _Ctx, record: _Rec) -> bool:
    episode = _pick_episode(ctx, record)
    if episode is None:
        return False
    key, _ = ctx.rng.choice(_ITEM_KINDS)
    lo, hi = _window(ctx, episode)
    episode.setdefault(key, []).append(_ITEM_MAKERS[key](ctx, lo, hi))
    return True


def _remove_item(ctx: _Ctx, record: _Rec) -> bool:
    episodes = [e for e in record.get("social_care_episodes") or () if any(e.get(k) for k, _ in _ITEM_KINDS)]
    if not episodes:
        return False
    episode = ctx.rng.choice(episodes)
    key = ctx.rng.choice([k for k, _ in _ITEM_KINDS if episode.get(k)])
    items = episode[key]
    items.pop(ctx.rng.randrange(len(items)))
    _drop_empty(episode, key)
    return True


def _edit_item(ctx: _Ctx, record: _Rec) -> bool:
    rng = ctx.rng
    episodes = [e for e in record.get("social_care_episodes") or () if any(e.get(k) for k, _ in _ITEM_KINDS)]
    if not episodes:
        return False
    episode = rng.choice(episodes)
    key = rng.choice([k for k, _ in _ITEM_KINDS if episode.get(k)])
    item = rng.choice(episode[key])
    lo, hi = _window(ctx, episode)
    start = _day(item.get("start_date"), lo)
    if key == "child_and_family_assessments":
        item["factors"] = rng.sample(_FACTORS, rng.randint(1, 6))
    elif key == "child_looked_after_placements" and rng.random() < 0.5:
        item["placement_type"] = rng.choice(_PLACEMENT_TYPES)
    elif key == "section_47_assessments" and rng.random() < 0.5:
        item["icpc_required_flag"] = not item.get("icpc_required_flag", False)
        if item["icpc_required_flag"]:
            item["icpc_date"] = _iso(_after(rng, start, 3, 15, max(hi, start)))
        else:
            item.pop("icpc_date", None)
    elif "end_date" in item:
        del item["end_date"]  # end recorded in error
        item.pop("end_reason", None)
        item.pop("change_reason", None)
    else:
        item["end_date"] = _iso(_after(rng, start, 1, 300, TODAY))
        if key == "child_looked_after_placements":
            item["end_reason"] = rng.choice(_END_REASONS)
    return True


def _edit_care_workers(ctx: _Ctx, record: _Rec) -> bool:
    rng = ctx.rng
    episode = _pick_episode(ctx, record)
    if episode is None:
        return False
    workers = episode.setdefault("care_worker_details", [])
    lo, hi = _window(ctx, episode)
    if workers and rng.random() < 0.4:
        workers.pop(rng.randrange(len(workers)))
    elif workers and rng.random() < 0.3 and "end_date" not in workers[-1]:
        workers[-1]["end_date"] = _iso(_after(rng, _day(workers[-1].get("start_date"), lo), 1, 200, hi))
    else:
        workers.append(
            {
                "worker_id": f"W{rng.randrange(1_000_000, 10_000_000)}",
                "start_date": _iso(_between(rng, lo, hi)),
            }
        )
    _drop_empty(episode, "care_worker_details")
    return True


def _toggle_block(ctx: _Ctx, record: _Rec) -> bool:
    rng = ctx.rng
    if rng.random() < 0.35:
        if "health_and_wellbeing" in record and rng.random() < 0.5:
            del record["health_and_wellbeing"]
        else:
            record["health_and_wellbeing"] = _health(ctx)
        return True
    episodes = record.get("social_care_episodes") or []
    held = [(e, k) for e in episodes for k in ("adoption", "care_leavers") if k in e]
    if held and rng.random() < 0.5:
        episode, key = rng.choice(held)
        if rng.random() < 0.7:
            del episode[key]
            return True
    elif episodes:
        episode, key = rng.choice(episodes), rng.choice(("adoption", "care_leavers"))
    else:
        return False
    lo, hi = _window(ctx, episode)
    episode[key] = (_adoption if key == "adoption" else _care_leavers)(ctx, lo, hi)
    return True


def _toggle_purge_flags(ctx: _Ctx, record: _Rec) -> bool:
    # The LA's SQL starts or stops writing "purge": false on an entity.
    targets: list[_Rec] = [record]
    targets.extend(v for k, v in record.items() if isinstance(v, dict))
    for episode in record.get("social_care_episodes") or ():
        targets.append(episode)
    entity = ctx.rng.choice(targets)
    if "purge" in entity:
        del entity["purge"]
        if not entity:
            entity["purge"] = False  # a block kept as {"purge": false}, as LAs send it
    else:
        entity["purge"] = False
    return True


_MUTATIONS: tuple[tuple[Callable[[_Ctx, _Rec], bool], int], ...] = (
    (_edit_child_details, 4),
    (_drop_optional_detail, 2),
    (_add_episode, 2),
    (_remove_episode, 2),
    (_edit_episode, 3),
    (_add_item, 3),
    (_remove_item, 3),
    (_edit_item, 3),
    (_edit_care_workers, 3),
    (_toggle_block, 3),
    (_toggle_purge_flags, 1),
)
_MUTATION_FUNCS = tuple(f for f, _ in _MUTATIONS)
_MUTATION_WEIGHTS = tuple(w for _, w in _MUTATIONS)


def mutate(rng: random.Random, record: dict) -> dict:
    """A new, still schema-valid record with one to three realistic edits; ``record`` is untouched."""
    new = _copy(record)
    ctx = _ctx_for(rng, new)
    for _ in range(rng.choice((1, 1, 2, 3))):
        for _attempt in range(5):
            if rng.choices(_MUTATION_FUNCS, weights=_MUTATION_WEIGHTS)[0](ctx, new):
                break
    return new
