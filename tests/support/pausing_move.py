"""`broadcaster storage move`, stopped part-way: the crash point of tests/test_storage_move.py.

    python tests/support/pausing_move.py TABLE ARGS...

It runs the real command (`broadcaster ARGS...`); once table TABLE is copied, inside the move's one transaction,
it prints `paused TABLE` on stdout and waits for a line on stdin (or a SIGKILL); a line lets the move finish.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from broadcaster import cli
from broadcaster.store import transfer


def main(table: str, argv: list[str]) -> int:
    real_copy = transfer.copy_state

    def pausing_copy(source: Any, target: Any, *, after_table: Callable[[str, int], None] | None = None) -> Any:
        def after(name: str, rows: int) -> None:
            if after_table is not None:
                after_table(name, rows)
            if name == table:
                print(f"paused {name}", flush=True)
                sys.stdin.readline()
        return real_copy(source, target, after_table=after)

    transfer.copy_state = pausing_copy  # the test's crash point, in this process only
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
