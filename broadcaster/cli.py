"""The `broadcaster` command: check, once, run, schemas, demo.

Exit status: 0 success; 1 a run-time failure (a feed, the broker, the outbox); 2 a usage or configuration
error, reported as one line naming the file, the key and the bad value (or a state database of a newer release).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broadcaster import __version__
from broadcaster.errors import (
    BroadcasterError,
    ConfigError,
    DatabaseTooNew,
    IdempotencyKeyReused,
    NetworkDataError,
    RequestInvalid,
    StoreError,
    UnknownNotice,
)

if TYPE_CHECKING:
    from broadcaster.config import Config

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

DEFAULT_CONFIG = "broadcaster.toml"


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("BROADCASTER_CONFIG") or DEFAULT_CONFIG)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO; one line per poll is noise for an operator.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _cmd_check(args: argparse.Namespace) -> int:
    """Exit 2 for a config problem (a missing secret too), 1 for a feed, the broker or a channel failing."""
    from broadcaster.checking import check_offline, check_online
    from broadcaster.store.factory import refuse_newer

    config = _load(args)
    refuse_newer(config)  # the release would refuse to start on it
    report = check_offline(config)
    if not args.offline:
        asyncio.run(check_online(config, report))
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(report.as_text())
    for line in report.problems + report.failures:
        print(f"broadcaster: {line}", file=sys.stderr)
    return EXIT_USAGE if report.problems else EXIT_FAILURE if report.failures else EXIT_OK


def _load(args: argparse.Namespace) -> Config:
    """The config, with command-line overrides applied and validated like the file's own values."""
    from broadcaster.config import load_config, with_mqtt_url

    path = _config_path(args)
    config = load_config(path)
    if args.mqtt_url:
        config = with_mqtt_url(config, args.mqtt_url)
    return config


def _cmd_once(args: argparse.Namespace) -> int:
    from broadcaster.runner import run_once

    return asyncio.run(run_once(_load(args), drain_timeout=args.wait))


def _cmd_run(args: argparse.Namespace) -> int:
    from broadcaster.runner import run_forever

    return asyncio.run(run_forever(_load(args)))


def _texts(args: argparse.Namespace) -> dict[str, str]:
    """The texts given, as given: an empty one is refused by the request model, not dropped here."""
    texts = {"zh": args.text_zh, "en": args.text_en}
    return {k: v for k, v in texts.items() if v is not None}


#: "HH:MM" (or "HH:MM:SS"): a time of day in the operator's zone.
_TIME_OF_DAY = re.compile(r"\s*(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?\s*")


def _until(value: str, config: Config) -> str:
    """--until as the request's RFC 3339 time: "HH:MM" is the next such time (today, or tomorrow if past) and an
    ISO time without an offset is read in the operator's zone; anything else goes to the request model as it is.

    Raises:
        RequestInvalid: an "HH:MM" that is no time of day (25:99).
    """
    now = datetime.now(config.zone)
    clock = _TIME_OF_DAY.fullmatch(value)
    if clock:
        hour, minute, second = (int(part or 0) for part in clock.groups())
        if hour > 23 or minute > 59 or second > 59:
            raise RequestInvalid([{"field": "until",
                                   "message": f"{value!r} is not a time of day (HH:MM, 00:00 to 23:59)"}])
        until = datetime.combine(now.date(), time(hour, minute, second), tzinfo=config.zone)
        return (until + timedelta(days=1) if until <= now else until).isoformat()
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return value
    return at.replace(tzinfo=config.zone).isoformat() if at.tzinfo is None else value


#: Request fields as the command line spells them.
_FLAGS = {"texts": "--text-zh/--text-en", "texts.zh": "--text-zh", "texts.en": "--text-en", "line_ids": "--line",
          "station_ids": "--station", "severity": "--severity", "effect": "--effect", "until": "--until"}


def _flag(field: str) -> str:
    return _FLAGS.get(field) or _FLAGS.get(re.sub(r"\[\d+\]$", "", field)) or field


def _refuse(command: str, exc: RequestInvalid | UnknownNotice | IdempotencyKeyReused) -> int:
    """Print what is wrong, one line per problem, with the admin API's message; usage errors exit 2."""
    if isinstance(exc, RequestInvalid):
        for problem in exc.problems:
            print(f"broadcaster: {command}: {_flag(problem['field'])}: {problem['message']}", file=sys.stderr)
    else:
        print(f"broadcaster: {command}: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _with_key(body: dict[str, Any], key: str | None) -> dict[str, Any]:
    """The desk request, with its idempotency key when one was given.

    Raises:
        RequestInvalid: the key is malformed.
    """
    from broadcaster import idempotency

    if key is None:
        return body
    if not idempotency.valid_key(key):
        raise RequestInvalid([{"field": "--idempotency-key", "message": idempotency.KEY_RULE}])
    return {**body, "idempotency_key": key}


def _cmd_announce(args: argparse.Namespace) -> int:
    from broadcaster.feeds.network import load_network
    from broadcaster.operator import notice_request

    config = _load(args)
    body: dict[str, Any] = {"texts": _texts(args), "line_ids": args.line or [], "station_ids": args.station or [],
                            "severity": args.severity, "effect": args.effect}
    try:
        if args.until is not None:
            body["until"] = _until(args.until, config)
        # Validated here, like the admin API does, before the database or the broker is touched.
        network = load_network(config.network.gtfs, config.network.default_language)
        request = notice_request(body, network=network, languages=config.network.languages, now=datetime.now(UTC))
        queued = _with_key({**request.model_dump(mode="json"), "author": args.author}, args.idempotency_key)
        from broadcaster.runner import run_request  # the pipeline loads only for a valid request

        print(asyncio.run(run_request(config, "announce", queued)))
    except (RequestInvalid, IdempotencyKeyReused) as exc:
        return _refuse("announce", exc)
    return EXIT_OK


def _cmd_correct(args: argparse.Namespace) -> int:
    from broadcaster import desk
    from broadcaster.operator import correction_request
    from broadcaster.store.factory import open_database

    config = _load(args)
    try:
        request = correction_request({"texts": _texts(args)}, languages=config.network.languages)
        db = open_database(config)
        try:
            known = desk.notice_known(db, args.notice_id)
        finally:
            db.close()
        if not known:
            raise UnknownNotice(args.notice_id)
        queued = _with_key({"notice_id": args.notice_id, "texts": dict(request.texts), "author": args.author,
                            "delete_originals": args.delete_originals}, args.idempotency_key)
        from broadcaster.runner import run_request  # the pipeline loads only for a valid request

        print(asyncio.run(run_request(config, "correct", queued)))
    except (RequestInvalid, UnknownNotice, IdempotencyKeyReused) as exc:
        return _refuse("correct", exc)
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from broadcaster.status import status_report

    report = status_report(_load(args))
    print(json.dumps(report.as_dict(), ensure_ascii=False, indent=2) if args.json else report.as_text())
    return EXIT_OK


def _cmd_preview(args: argparse.Namespace) -> int:
    from broadcaster.preview import as_json, preview, render_for_people

    report = asyncio.run(preview(_load(args)))
    print(as_json(report) if args.json else render_for_people(report))
    for name in report.failed_feeds():
        print(f"broadcaster: feed {name!r}: {report.feeds[name]}", file=sys.stderr)
    for notice in report.unrouted():  # worth a look, not a failure: the MQTT notice stream still carries it
        print(f"broadcaster: notice {notice} reaches no channel (their filters leave it out)", file=sys.stderr)
    return EXIT_FAILURE if report.failed_feeds() else EXIT_OK


def _cmd_storage_move(args: argparse.Namespace) -> int:
    """Copy the stopped SQLite state into an empty PostgreSQL database, in one transaction; counts per table."""
    from pydantic import ValidationError

    from broadcaster.config import SecretRef
    from broadcaster.config.storage import StorageConfig
    from broadcaster.store.postgres import describe
    from broadcaster.store.transfer import move_to_postgres

    config = _load(args)
    try:
        StorageConfig(url=args.to)
    except ValidationError as exc:  # the URL itself is never shown: it may hold a password
        message = exc.errors(include_input=False, include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise ConfigError(Path("<command line>"), "--to", message) from None
    ref = (SecretRef(env=args.password_env) if args.password_env else
           SecretRef(file=Path(args.password_file)) if args.password_file else
           config.storage.password if config.storage is not None else None)
    password = ref.require(config.source, "storage.password") if ref is not None else None
    copied = move_to_postgres(
        config.database_path, args.to, password=password.reveal() if password else None,
        after_table=lambda table, rows: print(f"{table}: {rows} rows", flush=True))
    print(f"moved {sum(copied.values())} rows into {describe(args.to)}; now set [storage] url in the config")
    return EXIT_OK


def _cmd_schemas(args: argparse.Namespace) -> int:
    from broadcaster.contract import json_schemas

    out = Path(args.directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(schema, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(path)
    return EXIT_OK


def _number(*, above: float | None = None, at_least: float | None = None, at_most: float) -> Callable[[str], float]:
    """An argparse type: a number above `above` (or at least `at_least`) and at most `at_most`."""
    floor = f"above {above:g}" if above is not None else f"at least {at_least:g}"

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        too_low = number <= above if above is not None else at_least is not None and number < at_least
        if too_low or not number <= at_most:  # `not <=` also refuses nan
            raise argparse.ArgumentTypeError(f"{value!r}: must be {floor} and at most {at_most:g}")
        return number

    return parse


def _cmd_demo(args: argparse.Namespace) -> int:
    from broadcaster.demo.app import DemoOptions, run_demo

    for noisy in ("amqtt", "transitions", "websockets"):  # the embedded broker logs every connection at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    options = DemoOptions(host=args.host, port=args.port, speed=args.speed)
    try:
        return asyncio.run(run_demo(options, sys.stdout, hint=not args.no_browser_hint))
    except OSError as exc:  # a port already taken, most likely
        print(f"broadcaster: demo: cannot listen on {args.host} ports {args.port}-{args.port + 2}: "
              f"{exc.strerror or exc} (choose others with --port)", file=sys.stderr)
        return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broadcaster",
        description="Real-time transit notices: GTFS-Realtime and passenger-flow feeds to MQTT and micro-blogs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("BROADCASTER_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="default: info")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", metavar="FILE",
                       help=f"config file (default: $BROADCASTER_CONFIG or ./{DEFAULT_CONFIG})")

    def with_broker(p: argparse.ArgumentParser) -> None:
        p.add_argument("--mqtt-url", metavar="URL",
                       help="use this broker alone instead of the config's mqtt.url or mqtt.urls")

    p = sub.add_parser("check", help="validate the config, the network and every template, fetch every feed, connect"
                       " to the broker, verify every channel's credentials; publish and post nothing")
    with_config(p)
    with_broker(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--offline", action="store_true",
                   help="config, network and templates only: no feed, broker, secret or platform is touched")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("once", help="poll every feed once, publish, deliver the outbox, exit")
    with_config(p)
    with_broker(p)
    p.add_argument("--wait", type=_number(at_least=0, at_most=3600), default=30.0, metavar="SECONDS",
                   help="how long to keep delivering, retries included, before exiting 1 with notices still"
                   " queued (they stay queued for the next run; default 30)")
    p.set_defaults(func=_cmd_once)

    p = sub.add_parser("run", help="poll on schedule and publish until SIGINT/SIGTERM")
    with_config(p)
    with_broker(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="run a simulated metro city, a broker, the broadcaster and a station display")
    p.add_argument("--port", type=int, default=8080,
                   help="web pages on PORT, MQTT on PORT+1, MQTT over WebSocket on PORT+2 "
                        "(0: free ports; default 8080)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for a LAN)")
    p.add_argument("--speed", type=_number(above=0, at_most=3600), default=30.0,
                   help="simulated minutes per real minute (default 30)")
    p.add_argument("--no-browser-hint", action="store_true", help="print only the URLs, without the how-to lines")
    p.set_defaults(func=_cmd_demo)

    def with_texts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--text-zh", metavar="TEXT", help="the text in Chinese")
        p.add_argument("--text-en", metavar="TEXT", help="the text in English")
        p.add_argument("--author", default=os.environ.get("USER", "operator"),
                       help="who sends it, for the audit log (default: $USER)")
        p.add_argument("--idempotency-key", metavar="KEY",
                       help="retrying with the same key (within 24 h) gives the first result instead of a second"
                            " notice; the same key with another request exits 2 (1-255 visible ASCII characters)")

    p = sub.add_parser("announce", help="send an operator's notice to every channel, now")
    with_config(p)
    p.add_argument("--line", action="append", metavar="LINE", help="a line it concerns (repeatable)")
    p.add_argument("--station", action="append", metavar="STATION", help="a station it concerns (repeatable)")
    p.add_argument("--severity", default="warning", metavar="SEVERITY",
                   help="info, warning or severe; severe notices jump the queue and skip quiet windows"
                        " (default: warning)")
    p.add_argument("--effect", default="OTHER_EFFECT", metavar="EFFECT",
                   help="GTFS-RT effect, e.g. NO_SERVICE or SIGNIFICANT_DELAYS (sets the line status)")
    p.add_argument("--until", metavar="TIME", help="when it ends: HH:MM local time, or ISO 8601")
    with_texts(p)
    p.set_defaults(func=_cmd_announce, mqtt_url=None)

    p = sub.add_parser("correct", help="correct an earlier notice everywhere it went")
    with_config(p)
    p.add_argument("notice_id", metavar="NOTICE_ID", help="e.g. alert-A-2-signal (from the notice stream or status)")
    p.add_argument("--delete-originals", action="store_true",
                   help="also delete the original posts where the platform allows it (Mastodon, Bluesky; webhooks"
                        " get a delete event), after the correction is posted")
    with_texts(p)
    p.set_defaults(func=_cmd_correct, mqtt_url=None)

    p = sub.add_parser("status", help="feed health, outbox depth per channel, parked and latest posts")
    with_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_cmd_status, mqtt_url=None)

    p = sub.add_parser("preview", help="fetch every feed once and show what would be posted; publish nothing")
    with_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable report with every payload")
    p.set_defaults(func=_cmd_preview, mqtt_url=None)

    p = sub.add_parser("storage", help="the state database: move a SQLite state into PostgreSQL")
    storage = p.add_subparsers(dest="storage_command", required=True, metavar="ACTION")
    p = storage.add_parser("move", help="copy the stopped SQLite state (state directory) into an empty PostgreSQL"
                           " database, in one transaction; prints the rows per table")
    with_config(p)
    p.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host:port/database (no password)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("--password-env", metavar="VAR", help="the password is in this environment variable"
                        " (default: the config's storage.password, if any)")
    secret.add_argument("--password-file", metavar="FILE", help="the password is in this file")
    p.set_defaults(func=_cmd_storage_move, mqtt_url=None)

    p = sub.add_parser("schemas", help="write the MQTT payloads' JSON Schemas into a folder")
    p.add_argument("directory", help="e.g. docs/schemas/mqtt")
    p.set_defaults(func=_cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    try:
        status: int = args.func(args)
    except (ConfigError, NetworkDataError, DatabaseTooNew) as exc:
        print(f"broadcaster: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"broadcaster: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BroadcasterError as exc:
        print(f"broadcaster: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
