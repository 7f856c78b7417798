"""The package's shape (issue 27): one name per class, and modules that fit in one sitting."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "api_pipeline"
MAX_MODULE_LINES = 600


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


def test_no_module_of_the_package_is_over_600_lines():
    long = {
        path.relative_to(PACKAGE).as_posix(): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
