"""The results: headline ratios against the targets (the keys of latest.json) and a table for people."""

from __future__ import annotations

import math
from typing import Any

from bench.scenarios import STAGES

#: key -> the value it must stay at or below (the performance issue's targets: a full refresh within 2x the
#: floor, the longer-term goal 1.5x; a steady tick at most 0.2x a full refresh; an emergency's last display
#: within 30 ms at p99; k = 1 in 100 MB, k = 10 in at most 10x that)
TARGETS: dict[str, float] = {
    "full_refresh_ratio_vs_floor": 2.0,
    "full_refresh_ratio_vs_limit": 5.0,
    "change_tick_ratio_vs_full": 0.2,
    "scale10_ratio_vs_scale1": 10.0,
    "emergency_p99_ms": 30.0,
    "rss_mb_k1": 100.0,
    "rss_ratio_k10_vs_k1": 10.0,
}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Add the headline keys to the raw results."""
    meta = results["meta"]
    ref = meta["reference_k"]
    scenarios = results["scenarios"]
    base = results["baselines"]

    def e2e(name: str, k: float) -> float | None:
        found = scenarios.get(f"{name}@{k:g}")
        return float(found["e2e_ms"]) if found else None

    def rss(k: float) -> float | None:
        values = [s["rss_mb"] for s in scenarios.values() if s["k"] == k]
        return max(values) if values else None

    full_ref = e2e("full", ref)
    emergency = scenarios.get(f"emergency@{ref:g}")
    keys: dict[str, Any] = {
        "full_refresh_ratio_vs_floor": _ratio(full_ref, base.get("floor_ms")),
        "full_refresh_ratio_vs_limit": _ratio(full_ref, base.get("limit_ms")),
        "change_tick_ratio_vs_full": _ratio(e2e("tick", ref), full_ref),
        "scale10_ratio_vs_scale1": _ratio(e2e("full", 10), e2e("full", 1)),
        "scale10_tick_ratio_vs_scale1": _ratio(e2e("tick", 10), e2e("tick", 1)),
        "emergency_p99_ms": emergency["all_retained_ms"]["p99"] if emergency else None,
        "emergency_microblog_p99_ms": emergency["microblog_ms"]["p99"] if emergency else None,
        "rss_mb_k1": rss(1),
        "rss_mb_k10": rss(10),
        "rss_mb_reference": rss(ref),
        "rss_ratio_k10_vs_k1": _ratio(rss(10), rss(1)),
        "cpu_ms_full": scenarios.get(f"full@{ref:g}", {}).get("cpu_ms"),
        "cpu_ms_tick": scenarios.get(f"tick@{ref:g}", {}).get("cpu_ms"),
        "naive_ratio": _ratio(base.get("naive_ms"), full_ref),
        "full_refresh_ms": full_ref,
        "floor_ms": base.get("floor_ms"),
        "limit_ms": base.get("limit_ms"),
        "naive_ms": base.get("naive_ms"),
    }
    checks = {
        key: {"value": keys[key], "target": target, "met": keys[key] is not None and keys[key] <= target}
        for key, target in TARGETS.items()
    }
    return {**keys, "targets": checks, **results}


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table(document: dict[str, Any]) -> str:
    """Per-scenario stage times, baselines, and the ratios against the targets, as Markdown."""
    columns = ["fetch", "parse", "diff", "render", "outbox", "publish", "other"]
    lines = [
        "| scenario | k | msgs | " + " | ".join(columns) + " | end to end | CPU | msgs/s | peak RSS |",
        "|---|---:|---:|" + "---:|" * len(columns) + "---:|---:|---:|---:|",
    ]
    for name, s in document["scenarios"].items():
        if "stages_ms" not in s:
            continue
        st = s["stages_ms"]
        render = st["compose"] + st["render_notices"] + st["render_retained"]
        cells = [st["fetch"], st["parse"], st["diff"], render, st["outbox"], st["publish"], s["other_ms"]]
        rate = s["published"] / (s["e2e_ms"] / 1000) if s["e2e_ms"] else None
        lines.append(
            f"| {name.split('@')[0]} | {s['k']:g} | {s['published']:,} | " + " | ".join(_fmt(c) for c in cells)
            + f" | **{_fmt(s['e2e_ms'])}** | {_fmt(s.get('cpu_ms'))} | {_fmt(rate, 0)} | {_fmt(s['rss_mb'], 0)} MB |"
        )
    lines.append("")
    lines.append("Times in ms (median run); `render` = compose + notice templates + retained payloads "
                 f"({', '.join(STAGES[3:6])}); `other` = end to end minus the stages; "
                 "`CPU` = the broadcaster process's CPU time during the tick (median).")
    for name, s in document["scenarios"].items():
        if s.get("delivered_ms") is not None:
            lines.append(f"`{name}`: until its notices are delivered too (the drain loops'), "
                         f"{_fmt(s['delivered_ms'])} ms end to end, {_fmt(s['delivered_cpu_ms'])} ms of CPU (median).")
    b = document["baselines"]
    if b:
        lines += [
            "",
            f"| baseline ({b['messages']:,} messages, {b['payload_bytes'] / 1e6:.2f} MB) | ms | msgs/s |",
            "|---|---:|---:|",
        ]
        for window, ms in b["floor_ms_by_window"].items():
            lines.append(f"| floor: aiomqtt, {window} in flight | {_fmt(ms)} | {_fmt(b['messages'] / ms * 1000, 0)} |")
        lines.append(f"| limit: raw socket MQTT 3.1.1 | {_fmt(b['limit_ms'])} | "
                     f"{_fmt(b['messages'] / b['limit_ms'] * 1000, 0)} |")
        if b.get("naive_ms"):
            lines.append(f"| naive: connection per message | {_fmt(b['naive_ms'])} | "
                         f"{_fmt(b['messages'] / b['naive_ms'] * 1000, 0)} |")
    emergencies = [s for n, s in document["scenarios"].items() if n.startswith("emergency")]
    for s in emergencies:
        lines += [
            "",
            f"| emergency (k={s['k']:g}, {s['rounds']} rounds, {s['displays_per_round']} displays) "
            "| p50 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|",
        ]
        for key, label in (("alert_topic_ms", "feed response -> alert topic PUBACK"),
                           ("displays_ms", "feed response -> last affected display PUBACK"),
                           ("all_retained_ms", "feed response -> alert and every display acked"),
                           ("microblog_ms", "feed response -> micro-blog 2xx"),
                           ("poll_ms", "whole poll (fetch to return)"),
                           ("cpu_ms", "CPU of the round (poll, publishes, posts)")):
            v = s.get(key)
            if v is None:
                continue  # a result from before this figure was measured
            lines.append(f"| {label} | {_fmt(v['p50'])} | {_fmt(v['p99'])} | {_fmt(v['max'])} |")
    lines += ["", "| ratio | value | target | met |", "|---|---:|---:|---|"]
    for key, check in document["targets"].items():
        met = "yes" if check["met"] else ("-" if check["value"] is None else "**no**")
        lines.append(f"| {key} | {_fmt(check['value'], 2)} | {'<= ' + _fmt(check['target'], 2)} | {met} |")
    lines.append(f"| naive_ratio (naive / broadcaster) | {_fmt(document['naive_ratio'], 2)} | | |")
    return "\n".join(lines)
