"""Guarding the figures: what a results file says about where it was measured, the committed trend, and the
quick comparison of this code's headline ratios with the committed ones (`python -m bench --compare`)."""

from __future__ import annotations

import csv
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import paths

#: The headline figures compared and kept in history.csv. All of them are "lower is better".
HEADLINES: tuple[str, ...] = (
    "full_refresh_ratio_vs_floor",
    "change_tick_ratio_vs_full",
    "emergency_p99_ms",
    "naive_ratio_inverse",
    "rss_mb_reference",
)
#: A figure worse than the committed one by more than this in every quick run is flagged.
WORSE_BY = 0.15
#: The quick set: k = 1 only, three cold starts (a single one swings most), ten ticks (the median of two or three
#: swung as much as a slow phase: 23-39 ms) and twenty emergencies (about 14 s on 2 cores).
QUICK_ARGS = ["--scales", "1", "--reps", "3", "--ticks", "10", "--rounds", "20"]
#: Quick runs per comparison. A shared machine's phases move one run's figures by 20-50 % (the floor alone from
#: 78 to 159 ms within minutes): a figure is judged by its best run, so a flag needs every run worse, which a
#: real regression makes and a slow phase seldom does. Two runs stay under 30 s.
QUICK_RUNS = 2

HISTORY = paths.RESULTS / "history.csv"
HISTORY_COLUMNS = ("date", "commit", "machine", *HEADLINES)


def git_commit() -> str:
    """The commit measured, with "+dirty" when the work tree differs from it (such figures are not its own)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=paths.ROOT, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "broadcaster", "bench"],
                               cwd=paths.ROOT, capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def machine() -> str:
    """A short description of the machine: figures from different machines are not comparable."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cpus {platform.machine()} {model}".strip()


def headline(document: dict[str, Any], key: str) -> float | None:
    """One headline figure of a results document (lower is better for every one)."""
    if key == "naive_ratio_inverse":  # the pipeline over a connection-per-message script: lower is better
        naive = document.get("naive_ratio")
        return 1 / naive if isinstance(naive, int | float) and naive > 0 else None
    value = document.get(key)
    return float(value) if isinstance(value, int | float) else None


def append_history(document: dict[str, Any], path: Path = HISTORY) -> None:
    """One line per committed full run: date, commit, machine and the headline figures."""
    meta = document.get("meta", {})
    new = not path.exists()
    with path.open("a", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(HISTORY_COLUMNS)
        figures = [headline(document, key) for key in HEADLINES]
        writer.writerow([str(meta.get("finished_at", ""))[:10], meta.get("commit", ""), meta.get("machine_name", ""),
                         *("" if f is None else f"{f:.3f}" for f in figures)])


def comparison(committed: dict[str, Any], runs: Sequence[dict[str, Any]]) -> tuple[str, bool]:
    """A table of each headline figure, committed beside this code's quick runs, and whether any is worse than
    allowed: its best run (every figure is lower-is-better) more than `WORSE_BY` above the committed figure."""
    was_meta = committed.get("meta", {})
    now_meta = runs[0].get("meta", {}) if runs else {}
    lines = [
        f"committed: {was_meta.get('commit', 'unknown commit')} on "
        f"{was_meta.get('machine_name', 'an unnamed machine')}",
        f"this code: {now_meta.get('commit', 'unknown')} on {now_meta.get('machine_name', '')}, {len(runs)} quick"
        " run(s), the best of them compared",
        "",
        f"{'figure':<32} {'committed':>10} " + " ".join(f"{f'run {i + 1}':>10}" for i in range(len(runs)))
        + f" {'best':>10} {'ratio':>7}",
    ]
    worse = False
    for key in HEADLINES:
        was = headline(committed, key)
        values = [headline(run, key) for run in runs]
        known = [v for v in values if v is not None]
        best = min(known) if known else None
        row = f"{key:<32} {_fmt(was):>10} " + " ".join(f"{_fmt(v):>10}" for v in values) + f" {_fmt(best):>10}"
        if was is None or best is None or was <= 0:
            lines.append(row)
            continue
        ratio = best / was
        flag = ""
        if ratio > 1 + WORSE_BY:
            flag = f"  <-- more than {WORSE_BY:.0%} worse in every run"
            worse = True
        lines.append(f"{row} {ratio:>7.2f}{flag}")
    lines += ["", "Quick runs on a shared machine are noisy: rerun before you believe a flag; a full run"
                  " (`python -m bench`) decides."]
    return "\n".join(lines), worse


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
