"""The DfE side's structure (issue 27): one name per class, one home per idea, modules that fit in one sitting."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "api_pipeline"


def _classes() -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                found[node.name].append(path.relative_to(PACKAGE).as_posix())
    return found


def test_no_two_classes_share_a_name():
    # Two RecordValidators (the pipeline's and the simulator's) once read as one class in a traceback.
    shared = {name: homes for name, homes in _classes().items() if len(homes) > 1}
    assert shared == {}
