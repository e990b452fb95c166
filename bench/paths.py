"""Where things are: the repository, the tests' support package (real brokers and servers), the results."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TESTS = ROOT / "tests"


def add_test_support() -> None:
    """Make `support` (tests/support: MosquittoBroker, MicroblogServer) importable, as the tests see it."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
