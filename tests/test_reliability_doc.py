"""docs/reliability.md names the test that proves each guarantee: every name it gives must be a real test."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reliability.md"


def cited_tests() -> list[tuple[str, str | None]]:
    """(file, test name or None) for every `tests/...` citation; `::name` alone continues the previous file."""
    cited: list[tuple[str, str | None]] = []
    current: str | None = None
    for token in re.findall(r"`([^`]+)`", DOC.read_text(encoding="utf-8")):
        if token.startswith("tests/"):
            current, _, name = token.partition("::")
            cited.append((current, name or None))
        elif token.startswith("::") and current is not None:
            cited.append((current, token[2:]))
    return cited


def test_every_test_the_reliability_doc_cites_exists() -> None:
    cited = cited_tests()
    assert len(cited) > 50  # the parse found the tables
    missing = []
    for file, name in cited:
        path = ROOT / file.split(" ")[0]
        if not path.is_file():
            missing.append(file)
            continue
        if name is None:
            continue
        function = name.split("[")[0]  # a parametrised case: the function is what must exist
        if not re.search(rf"^(async )?def {re.escape(function)}\(", path.read_text(encoding="utf-8"), re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert not missing, "docs/reliability.md cites tests that do not exist:\n" + "\n".join(missing)
