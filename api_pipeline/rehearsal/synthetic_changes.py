"""How a synthetic child changes between two nights, for the demo, the tests and the benchmarks.

:func:`mutate` makes the kinds of change an LA's nightly SQL produces to a child from
:mod:`api_pipeline.rehearsal.synthetic`; the same seeded ``random.Random`` gives the same changes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import date, timedelta

from api_pipeline.dfe.payload import clone
from api_pipeline.rehearsal.synthetic import (
    CLOSURE_REASONS,
    DISABILITIES,
    END_REASONS,
    ETHNICITIES,
    FACTORS,
    FIRST_NAMES,
    FIRST_NAMES_SPECIAL,
    ITEM_KINDS,
    ITEM_MAKERS,
    PLACEMENT_TYPES,
    REFERRAL_SOURCES,
    SEXES,
    SURNAMES,
    SURNAMES_SPECIAL,
    TODAY,
    Ctx,
    Rec,
    adoption,
    after,
    between,
    care_leavers,
    child_details,
    health,
    iso,
    make_episode,
    parse_day,
    pick_name,
    postcode,
    upn,
)


def _ctx_for(rng: random.Random, record: Rec) -> Ctx:
    details = record.get("child_details") or {}
    dob = parse_day(details.get("date_of_birth") or details.get("expected_date_of_birth"), TODAY)
    ctx = Ctx(rng, min(dob, TODAY), purge_flags=record.get("purge") is False)
    for episode in record.get("social_care_episodes") or ():
        ctx.ids.add(str(episode.get("social_care_episode_id")))
        for key, id_key in ITEM_KINDS:
            for item in episode.get(key) or ():
                ctx.ids.add(str(item.get(id_key)))
    return ctx


def _window(ctx: Ctx, episode: Rec) -> tuple[date, date]:
    lo = parse_day(episode.get("referral_date"), ctx.dob)
    hi = parse_day(episode.get("closure_date"), TODAY)
    return lo, max(lo, hi)


def _pick_episode(ctx: Ctx, record: Rec) -> Rec | None:
    episodes = record.get("social_care_episodes")
    return ctx.rng.choice(episodes) if episodes else None


def _drop_empty(container: Rec, key: str) -> None:
    if not container.get(key):
        container.pop(key, None)


def _edit_child_details(ctx: Ctx, record: Rec) -> bool:
    rng = ctx.rng
    details = record.get("child_details")
    if details is None:
        record["child_details"] = child_details(ctx, unborn=False)
        return True
    field = rng.choice(("first_name", "surname", "postcode", "ethnicity", "sex", "disabilities", "upn"))
    if field == "first_name":
        details["first_name"] = pick_name(rng, FIRST_NAMES, FIRST_NAMES_SPECIAL)
    elif field == "surname":
        details["surname"] = pick_name(rng, SURNAMES, SURNAMES_SPECIAL)
    elif field == "postcode":
        details["postcode"] = postcode(rng)
    elif field == "ethnicity":
        details["ethnicity"] = rng.choice(ETHNICITIES)
    elif field == "sex":
        details["sex"] = rng.choice(SEXES)
    elif field == "disabilities":
        details["disabilities"] = rng.sample(DISABILITIES, rng.randint(1, 4))
    else:
        if "unique_pupil_number" in details and rng.random() < 0.5:
            details["former_unique_pupil_number"] = details["unique_pupil_number"]
        details["unique_pupil_number"] = upn(rng)
        details.pop("unique_pupil_number_unknown_reason", None)
    return True


def _drop_optional_detail(ctx: Ctx, record: Rec) -> bool:
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


def _add_episode(ctx: Ctx, record: Rec) -> bool:
    rng = ctx.rng
    episodes = record.setdefault("social_care_episodes", [])
    taken = {str(e.get("social_care_episode_id")) for e in episodes}
    lo = min(max(ctx.dob, TODAY - timedelta(days=365 * 3)), TODAY)
    referral = between(rng, lo, TODAY)
    closure = after(rng, referral, 7, 300, TODAY) if rng.random() < 0.3 else None
    episodes.append(make_episode(ctx, referral, closure, taken))
    return True


def _remove_episode(ctx: Ctx, record: Rec) -> bool:
    episodes = record.get("social_care_episodes")
    if not episodes:
        return False
    episodes.pop(ctx.rng.randrange(len(episodes)))
    _drop_empty(record, "social_care_episodes")
    return True


def _edit_episode(ctx: Ctx, record: Rec) -> bool:
    rng = ctx.rng
    episode = _pick_episode(ctx, record)
    if episode is None:
        return False
    choice = rng.randrange(4)
    if choice == 0:
        episode["referral_source"] = rng.choice(REFERRAL_SOURCES)
    elif choice == 1 and "closure_date" not in episode:
        lo, _ = _window(ctx, episode)
        episode["closure_date"] = iso(after(rng, lo, 7, 400, TODAY))
        episode["closure_reason"] = rng.choice(CLOSURE_REASONS)
    elif choice == 1:  # reopened: closure recorded in error
        episode.pop("closure_date")
        episode.pop("closure_reason", None)
    elif choice == 2:
        episode["referral_no_further_action_flag"] = not episode.get("referral_no_further_action_flag", False)
    else:
        lo, hi = _window(ctx, episode)
        episode["referral_date"] = iso(between(rng, lo - timedelta(days=10), min(lo + timedelta(days=10), hi)))
    return True


def _add_item(ctx: Ctx, record: Rec) -> bool:
    episode = _pick_episode(ctx, record)
    if episode is None:
        return False
    key, _ = ctx.rng.choice(ITEM_KINDS)
    lo, hi = _window(ctx, episode)
    episode.setdefault(key, []).append(ITEM_MAKERS[key](ctx, lo, hi))
    return True


def _remove_item(ctx: Ctx, record: Rec) -> bool:
    episodes = [e for e in record.get("social_care_episodes") or () if any(e.get(k) for k, _ in ITEM_KINDS)]
    if not episodes:
        return False
    episode = ctx.rng.choice(episodes)
    key = ctx.rng.choice([k for k, _ in ITEM_KINDS if episode.get(k)])
    items = episode[key]
    items.pop(ctx.rng.randrange(len(items)))
    _drop_empty(episode, key)
    return True


def _edit_item(ctx: Ctx, record: Rec) -> bool:
    rng = ctx.rng
    episodes = [e for e in record.get("social_care_episodes") or () if any(e.get(k) for k, _ in ITEM_KINDS)]
    if not episodes:
        return False
    episode = rng.choice(episodes)
    key = rng.choice([k for k, _ in ITEM_KINDS if episode.get(k)])
    item = rng.choice(episode[key])
    lo, hi = _window(ctx, episode)
    start = parse_day(item.get("start_date"), lo)
    if key == "child_and_family_assessments":
        item["factors"] = rng.sample(FACTORS, rng.randint(1, 6))
    elif key == "child_looked_after_placements" and rng.random() < 0.5:
        item["placement_type"] = rng.choice(PLACEMENT_TYPES)
    elif key == "section_47_assessments" and rng.random() < 0.5:
        item["icpc_required_flag"] = not item.get("icpc_required_flag", False)
        if item["icpc_required_flag"]:
            item["icpc_date"] = iso(after(rng, start, 3, 15, max(hi, start)))
        else:
            item.pop("icpc_date", None)
    elif "end_date" in item:
        del item["end_date"]  # end recorded in error
        item.pop("end_reason", None)
        item.pop("change_reason", None)
    else:
        item["end_date"] = iso(after(rng, start, 1, 300, TODAY))
        if key == "child_looked_after_placements":
            item["end_reason"] = rng.choice(END_REASONS)
    return True


def _edit_care_workers(ctx: Ctx, record: Rec) -> bool:
    rng = ctx.rng
    episode = _pick_episode(ctx, record)
    if episode is None:
        return False
    workers = episode.setdefault("care_worker_details", [])
    lo, hi = _window(ctx, episode)
    if workers and rng.random() < 0.4:
        workers.pop(rng.randrange(len(workers)))
    elif workers and rng.random() < 0.3 and "end_date" not in workers[-1]:
        workers[-1]["end_date"] = iso(after(rng, parse_day(workers[-1].get("start_date"), lo), 1, 200, hi))
    else:
        workers.append(
            {
                "worker_id": f"W{rng.randrange(1_000_000, 10_000_000)}",
                "start_date": iso(between(rng, lo, hi)),
            }
        )
    _drop_empty(episode, "care_worker_details")
    return True


def _toggle_block(ctx: Ctx, record: Rec) -> bool:
    rng = ctx.rng
    if rng.random() < 0.35:
        if "health_and_wellbeing" in record and rng.random() < 0.5:
            del record["health_and_wellbeing"]
        else:
            record["health_and_wellbeing"] = health(ctx)
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
    episode[key] = (adoption if key == "adoption" else care_leavers)(ctx, lo, hi)
    return True


def _toggle_purge_flags(ctx: Ctx, record: Rec) -> bool:
    # The LA's SQL starts or stops writing "purge": false on an entity.
    targets: list[Rec] = [record]
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


_MUTATIONS: tuple[tuple[Callable[[Ctx, Rec], bool], int], ...] = (
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
    new = clone(record)
    ctx = _ctx_for(rng, new)
    for _ in range(rng.choice((1, 1, 2, 3))):
        for _attempt in range(5):
            if rng.choices(_MUTATION_FUNCS, weights=_MUTATION_WEIGHTS)[0](ctx, new):
                break
    return new
