"""Which JSON Schema validator should check every record? Correctness first, then speed.

Compares the reference implementation (jsonschema) with fastjsonschema and
jsonschema-rs, when installed, on the bundled DfE record schema:

* correctness: the format cases (``date`` must reject 2024-02-30, 2024-13-01,
  ``2024-1-5``) and a corpus of synthetic records with typical council mistakes,
  compared record by record with the reference;
* speed: records validated per second over synthetic valid records.

    python benchmarks/bench_validators.py --records 5000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable

from api_pipeline.dfe.schema import load_bundled_schema
from api_pipeline.rehearsal.synthetic import make_children

FORMAT_CASES = {
    "2024-02-29": True,
    "2024-02-30": False,
    "2023-02-29": False,
    "2024-13-01": False,
    "2024-1-5": False,
    "20240105": False,
    "2024-01-05T00:00:00": False,
}


def candidates(schema: dict) -> dict[str, Callable[[dict], bool]]:
    from jsonschema import Draft7Validator

    reference = Draft7Validator(schema, format_checker=Draft7Validator.FORMAT_CHECKER)
    found: dict[str, Callable[[dict], bool]] = {"jsonschema": reference.is_valid}
    try:
        import fastjsonschema

        compiled = fastjsonschema.compile(schema)

        def fast(record: dict) -> bool:
            try:
                compiled(record)
                return True
            except fastjsonschema.JsonSchemaException:
                return False

        found["fastjsonschema"] = fast
    except ImportError:
        pass
    try:
        import jsonschema_rs

        rs = jsonschema_rs.Draft7Validator(schema, validate_formats=True)
        found["jsonschema-rs"] = rs.is_valid
    except ImportError:
        pass
    return found


def corrupt(rng: random.Random, record: dict) -> dict:
    record = json.loads(json.dumps(record))
    details = record.setdefault("child_details", {})
    choice = rng.randrange(8)
    if choice == 0:
        details["date_of_birth"] = rng.choice(["2024-02-30", "2019-11-31", "2020-1-1"])
    elif choice == 1:
        details["sex"] = "Female"
    elif choice == 2:
        details["uasc_flag"] = "true"
    elif choice == 3:
        record["la_child_id"] = "X" * 21
    elif choice == 4:
        details["postcode"] = None
    elif choice == 5:
        record["unexpected"] = 1
    elif choice == 6 and record.get("social_care_episodes"):
        record["social_care_episodes"][0].pop("social_care_episode_id")
    else:
        details["disabilities"] = ["HAND", "HAND"]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=5000)
    args = parser.parse_args(argv)
    schema = load_bundled_schema()
    validators = candidates(schema)
    valid = list(make_children(args.records, seed=3))
    rng = random.Random(4)
    corpus = valid[:500] + [corrupt(rng, r) for r in valid[:1000]]
    reference = [validators["jsonschema"](r) for r in corpus]
    rows = []
    for name, is_valid in validators.items():
        date_ok = all(
            is_valid({"la_child_id": "A1", "child_details": {"date_of_birth": text}}) == expected
            for text, expected in FORMAT_CASES.items()
        )
        agree = sum(is_valid(r) == ref for r, ref in zip(corpus, reference, strict=True))
        started = time.perf_counter()
        for record in valid:
            is_valid(record)
        per_second = len(valid) / (time.perf_counter() - started)
        rows.append(
            {
                "validator": name,
                "date_format_correct": date_ok,
                "agrees_with_reference": f"{agree}/{len(corpus)}",
                "records_per_second": round(per_second),
            }
        )
    print(f"{'validator':<16}{'date format':>12}{'agreement':>14}{'records/s':>12}")
    for row in rows:
        print(
            f"{row['validator']:<16}{'correct' if row['date_format_correct'] else 'WRONG':>12}"
            f"{row['agrees_with_reference']:>14}{row['records_per_second']:>12,}"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
