"""`python -m bench`: generate the cities, start Mosquitto and the HTTP servers, run every scenario and baseline
in processes of their own, print the table and write bench/results/latest.json.

Options: `--scales 1,4,10` (scale factors; the first is the reference for the ratios), `--reps 3` (cold starts
per scale), `--ticks 10` (steady ticks; the median counts), `--rounds 40` (emergencies), `--out PATH`, `--keep`
(keep the work folder).
`--compare` runs the quick k = 1 set twice and prints each headline figure beside the committed one. `--fanout` adds the
fan-out scenario (bench/fanout.py: a display swarm on one broker, a NATS cluster and a bridge tree; minutes more).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bench import compare, fanout, paths, report
from bench.city import CityFiles, write_city

#: Without it Mosquitto leaves Nagle's algorithm on for its clients: a PUBACK written while an earlier one is
#: unacknowledged waits for the client's delayed ACK (~40 ms), which swamps every latency measured here.
BROKER_CONFIG = "set_tcp_nodelay true"


def _run(module: str, arguments: dict[str, Any], log: IO[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `python -m module ARGS` and return its RESULT; its stderr goes to the log."""
    command = [sys.executable, "-m", module, json.dumps(arguments)]
    completed = subprocess.run(
        command, cwd=paths.ROOT, stdout=subprocess.PIPE, stderr=log, text=True, check=False,
        env={**os.environ, **(env or {})}, timeout=900,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    raise RuntimeError(f"{module} {arguments.get('scenario', '')} failed (exit {completed.returncode}); see {log.name}")


def _scale(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("scale factors must be positive")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,4,10", type=lambda s: [_scale(x) for x in s.split(",")])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=paths.RESULTS / "latest.json")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (cities, databases, logs)")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of each scenario into this folder")
    parser.add_argument("--fanout", action="store_true",
                        help="also run the fan-out scenario (bench/fanout.py; not part of --compare)")
    parser.add_argument("--compare", action="store_true",
                        help="run the quick k = 1 set and compare its headline figures with bench/results/latest.json")
    args = parser.parse_args(argv)
    if args.compare:
        return _compare(args.out)
    scales: list[float] = args.scales
    reference = scales[0]

    paths.add_test_support()
    from support import MosquittoBroker

    started = time.perf_counter()
    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    log_path = work / "bench.log"
    print(f"bench: work folder {work}; scales {scales}", flush=True)
    cities: dict[float, CityFiles] = {}
    for k in scales:
        cities[k] = write_city(work / f"k{k:g}", k, ticks=args.ticks, emergencies=args.rounds if k == reference else 0)
    broker = MosquittoBroker(work / "mosquitto", persistence=False, extra_config=BROKER_CONFIG)
    broker.start()
    servers = subprocess.Popen(
        [sys.executable, "-m", "bench.servers", str(work)], cwd=paths.ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    results: dict[str, Any] = {"scenarios": {}, "baselines": {}}
    try:
        assert servers.stdout is not None
        urls = json.loads(servers.stdout.readline())
        common = {"work": str(work / "state"), "feeds_url": urls["feeds"], "mqtt_url": broker.url, "run_id": run_id}
        env = {"BENCH_MASTODON_TOKEN": urls["mastodon_token"]}
        with log_path.open("a", encoding="utf-8") as log:

            def scenario(name: str, k: float, **extra: Any) -> dict[str, Any]:
                print(f"bench: {name} at k={k:g} ...", end=" ", flush=True)
                profile = {}
                if args.profile:
                    args.profile.mkdir(parents=True, exist_ok=True)
                    profile = {"BENCH_PROFILE": str(args.profile.resolve() / f"{name}-k{k:g}.prof")}
                result = _run("bench.scenarios", {"scenario": name, "k": k, "city": str(cities[k].root),
                                                  **common, **extra}, log, {**env, **profile})
                print(f"{result['wall_s']:.1f} s", flush=True)
                results["scenarios"][f"{name}@{k:g}"] = result
                return result

            capture = work / "full-refresh.msgs"
            full_ref = scenario("full", reference, reps=args.reps, capture=str(capture))
            print("bench: baselines (floor, limit, naive) ...", end=" ", flush=True)
            www = f"{urls['feeds']}/{cities[reference].root.name}/www"
            results["baselines"] = _run("bench.baselines", {
                "messages": str(capture), "prefix": full_ref["prefix"], "mqtt_host": broker.host,
                "mqtt_port": broker.port, "run_id": run_id, "reps": args.reps,
                "feed_urls": [f"{www}/{name}" for name in ("alerts.pb", "trips.pb", "vehicles.pb", "flow.json")],
            }, log)
            print("done", flush=True)
            scenario("tick", reference, ticks=args.ticks)
            scenario("emergency", reference, rounds=args.rounds, microblog_url=urls["microblog"],
                     mastodon_token=urls["mastodon_token"])
            for k in scales[1:]:
                scenario("full", k, reps=args.reps)
                scenario("tick", k, ticks=args.ticks)
            if args.fanout:
                results["fanout"] = _fanout(cities, work, urls["feeds"], run_id, log)
    finally:
        if servers.stdin is not None:
            servers.stdin.close()
        try:
            servers.wait(timeout=15)
        except subprocess.TimeoutExpired:
            servers.kill()
            servers.wait()
        broker.stop()
    results["meta"] = {
        "commit": compare.git_commit(), "machine_name": compare.machine(),
        "run_id": run_id, "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - started, "python": platform.python_version(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "scales": scales, "reference_k": reference, "reps": args.reps,
        "ticks": args.ticks, "rounds": args.rounds,
        "shapes": {f"{k:g}": dataclasses.asdict(cities[k].shape) for k in scales},
    }
    document = report.summarise(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.out.resolve() == (paths.RESULTS / "latest.json").resolve() and len(scales) > 1 and args.reps >= 3:
        compare.append_history(document)  # a full run: one line of the trend, committed with latest.json
    print()
    print(report.table(document))
    if "fanout" in document:
        print()
        print(fanout.table(document["fanout"]))
    print(f"\nbench: wrote {args.out} in {document['meta']['wall_s']:.0f} s")
    if args.keep:
        print(f"bench: work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _fanout(cities: dict[float, CityFiles], work: Path, feeds_url: str, run_id: str, log: IO[str]) -> dict[str, Any]:
    """The fan-out scenario with its default options on the k = 1 city (written now if the run has none)."""
    city = cities.get(1.0) or write_city(work / "fanout-k1", 1.0, ticks=0, emergencies=0)
    defaults = fanout.options_dict(_fanout_defaults())
    layers = ", ".join(defaults["setups"])
    print(f"bench: fan-out ({defaults['displays']} displays on {layers}) ...", end=" ", flush=True)
    result = _run("bench.fanout", {**defaults, "city": str(city.root), "work": str(work / "fanout"),
                                   "feeds_url": feeds_url, "run_id": run_id}, log)
    print(f"{result['wall_s']:.0f} s", flush=True)
    return result


def _fanout_defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    fanout.add_options(parser)
    return parser.parse_args([])


def _compare(committed_path: Path) -> int:
    """The quick set on this code beside the committed figures; flags, never fails (benchmarks are not CI)."""
    if not committed_path.exists():
        print(f"bench --compare: no committed results at {committed_path}", file=sys.stderr)
        return 2
    committed = json.loads(committed_path.read_text(encoding="utf-8"))
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as folder:
        for run in range(compare.QUICK_RUNS):
            quick = Path(folder) / f"quick-{run + 1}.json"
            status = main([*compare.QUICK_ARGS, "--out", str(quick)])
            if status != 0:
                return status
            runs.append(json.loads(quick.read_text(encoding="utf-8")))
    text, _ = compare.comparison(committed, runs)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
