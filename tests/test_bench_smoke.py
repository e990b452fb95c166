"""The benchmark harness still runs: `python -m bench` on a tiny city (k = 0.1). Nothing here is timed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

REQUIRED_KEYS = (
    "full_refresh_ratio_vs_floor",
    "full_refresh_ratio_vs_limit",
    "change_tick_ratio_vs_full",
    "scale10_ratio_vs_scale1",
    "emergency_p99_ms",
    "rss_mb_k1",
    "rss_mb_k10",
    "naive_ratio",
)


@pytest.mark.timeout(120)
def test_bench_runs_on_a_tiny_city_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--scales", "0.1", "--reps", "1", "--ticks", "1", "--rounds", "3",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "| full | 0.1 |" in completed.stdout  # the table for people
    doc = json.loads(out.read_text(encoding="utf-8"))

    for key in REQUIRED_KEYS:
        assert key in doc, key
    assert doc["meta"]["commit"]  # which code was measured, and on what
    assert doc["meta"]["machine_name"]
    # Measured at the reference scale, so present and positive; the k = 1 / k = 10 figures need those scales.
    for key in ("full_refresh_ratio_vs_floor", "full_refresh_ratio_vs_limit", "change_tick_ratio_vs_full",
                "emergency_p99_ms", "naive_ratio", "rss_mb_reference"):
        value = doc[key]
        assert isinstance(value, float), (key, value)
        assert math.isfinite(value), (key, value)
        assert value > 0, (key, value)
    for key in ("scale10_ratio_vs_scale1", "rss_mb_k1", "rss_mb_k10"):
        assert doc[key] is None, key

    full = doc["scenarios"]["full@0.1"]
    tick = doc["scenarios"]["tick@0.1"]
    # Every retained topic of the tiny city went out; a steady tick publishes only some of them.
    assert full["retained_topics"] > 0
    assert full["published"] >= full["retained_topics"]
    assert 0 < tick["published"] < full["published"]
    assert set(full["stages_ms"]) == {"fetch", "parse", "diff", "compose", "render_notices", "render_retained",
                                      "outbox", "publish"}
    assert all(ms >= 0 for ms in full["stages_ms"].values())
    assert 0 < full["rss_mb"] < 1024
    emergency = doc["scenarios"]["emergency@0.1"]
    assert emergency["rounds"] == 3
    assert emergency["displays_per_round"] > 0
    assert emergency["microblog_ms"]["p99"] > 0
    base = doc["baselines"]
    assert base["messages"] == full["retained_topics"]
    for key in ("limit_ms", "floor_ms", "naive_ms"):
        assert base[key] > 0, key


@pytest.mark.timeout(120)
def test_outage_bench_runs_its_three_phases_and_writes_its_results(tmp_path: Path) -> None:
    out = tmp_path / "outage.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.outage", "--notices", "2", "--rounds", "1", "--interval", "0.05",
         "--mastodon-deadline", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "| Mastodon 503 for 1 h | bluesky |" in completed.stdout  # the table for people
    doc = json.loads(out.read_text(encoding="utf-8"))

    platforms = {"bluesky", "weibo", "webhook"}
    assert doc["target_ratio"] == 1.1
    assert set(doc["phases"]) == {"baseline", "down", "hang"}
    for phase in doc["phases"].values():
        for name in platforms:
            assert phase[name]["samples"] == 2
            assert 0 < phase[name]["median_ms"] <= phase[name]["p95_ms"]
        assert phase["cpu_ms_per_notice"] > 0
    for outage in ("down", "hang"):
        assert set(doc["ratios"][outage]) == platforms
        for ratio in doc["ratios"][outage].values():
            assert ratio["median"] > 0
            assert ratio["p95"] > 0
            assert len(ratio["median_by_round"]) == 1
        assert set(doc["targets"][outage]) == {"target", "worst_median_ratio", "median_met", "worst_p95_ratio",
                                               "p95_met"}
    # Mastodon really failed as each phase says, and only there.
    assert set(doc["phases"]["baseline"]["mastodon"]["answers"]) == {"200"}
    assert set(doc["phases"]["down"]["mastodon"]["answers"]) == {"down"}
    assert set(doc["phases"]["hang"]["mastodon"]["answers"]) == {"hang"}


def test_compare_flags_a_headline_more_than_15_percent_worse_in_every_run_and_names_both_commits() -> None:
    from bench import compare

    committed = {"meta": {"commit": "aaa", "machine_name": "m"}, "full_refresh_ratio_vs_floor": 2.0,
                 "change_tick_ratio_vs_full": 0.4, "emergency_p99_ms": 40.0, "naive_ratio": 2.0,
                 "rss_mb_reference": 90.0}
    steady = {**committed, "meta": {"commit": "bbb", "machine_name": "m"}, "full_refresh_ratio_vs_floor": 2.2}
    text, worse = compare.comparison(committed, [steady])
    assert not worse  # 10 % worse is within the noise allowed
    assert "aaa" in text
    assert "bbb" in text
    regressed = {**steady, "emergency_p99_ms": 47.0, "naive_ratio": 1.6}  # 17.5 % and 25 % worse
    text, worse = compare.comparison(committed, [regressed])
    assert worse
    flagged = [line.split()[0] for line in text.splitlines() if "worse in every" in line]
    assert flagged == ["emergency_p99_ms", "naive_ratio_inverse"]
    # A slow phase in one run: the other run's figure is within the allowance, so nothing is flagged...
    text, worse = compare.comparison(committed, [regressed, steady])
    assert not worse
    # ...but a regression that every run shows is, judged by the best of them.
    also = {**steady, "emergency_p99_ms": 48.0}
    text, worse = compare.comparison(committed, [regressed, also])
    assert worse
    flagged = [line.split()[0] for line in text.splitlines() if "worse in every" in line]
    assert flagged == ["emergency_p99_ms"]
    assert "47.000" in next(line for line in text.splitlines() if line.startswith("emergency_p99_ms"))


def test_history_gets_a_header_once_and_one_line_per_full_run(tmp_path: Path) -> None:
    from bench import compare

    doc = {"meta": {"finished_at": "2026-12-03T10:00:00+00:00", "commit": "abc123", "machine_name": "2 cpus"},
           "full_refresh_ratio_vs_floor": 2.5, "change_tick_ratio_vs_full": 0.3, "emergency_p99_ms": 30.0,
           "naive_ratio": 2.0, "rss_mb_reference": 80.0}
    history = tmp_path / "history.csv"
    compare.append_history(doc, history)
    compare.append_history(doc, history)
    lines = history.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(compare.HISTORY_COLUMNS)
    assert lines[1:] == ["2026-12-03,abc123,2 cpus,2.500,0.300,30.000,0.500,80.000"] * 2
