"""A passenger-flow feed's `ReadingCache` and the crowding state's shortcut (`_made_from`): parsing a sequence of
documents through the cache, and folding each into the state, gives exactly what parsing without the cache and
folding without the shortcut give (the code before them): the same snapshots, the same records, the same changes,
step after step."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from unittest.mock import patch

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tiny_network import tiny_network

from broadcaster import poller
from broadcaster.config.sections import FeedConfig
from broadcaster.errors import FeedFormatError
from broadcaster.feeds.passenger_flow import ReadingCache, parse_passenger_flow
from broadcaster.model import FeedSnapshot
from broadcaster.state import crowding
from broadcaster.state.model import CrowdingChange, NetworkState, StatePolicy, Transition
from broadcaster.state.transition import apply_snapshot
from broadcaster.store import decode_snapshot, encode_snapshot

NETWORK = tiny_network()
START = datetime(2026, 11, 25, 0, 0, tzinfo=UTC)
STAMPS = [1796314346, 1796314406, "2026-11-25T08:00:00+08:00"]

#: Records that repeat from one document to the next, with platforms under the same line and direction (their
#: order in the document then decides theirs), whole-station readings beside platforms, and the odd values a
#: JSON document can hold where a number goes (true, 1.0), which must never be taken for another record's.
_RECORD = st.fixed_dictionaries(
    {"station_id": st.sampled_from(["S01", "S02", "S02-P1", "nowhere"]),
     "level": st.sampled_from(["EMPTY", "FEW_SEATS_AVAILABLE", "STANDING_ROOM_ONLY", "FULL", "BUSY"])},
    optional={
        "percentage": st.sampled_from([0, 10, 12, 40, 90, 1, True, 1.0, None]),
        "observed_at": st.sampled_from([*STAMPS, True, None, [1]]),
        "line_id": st.sampled_from(["L1", "L2", "L9", None]),
        "direction_id": st.sampled_from([0, 1, True, 0.0, None]),
    },
)


def folded_without_shortcut(state: NetworkState, snapshot: FeedSnapshot, now: datetime,
                            policy: StatePolicy) -> Transition:
    """`apply_snapshot` as it was before `_made_from`: every station through `_next_crowding`."""
    with patch.object(crowding, "_made_from", lambda *args: False):
        return apply_snapshot(state, snapshot, network=NETWORK, now=now, policy=policy)


#: Values equal in Python but not the same in JSON: a twin record must never be taken for the original.
#: Keyed by type and value, since in a dict `True`, `1` and `1.0` are one key.
_TWINS: dict[tuple[type, object], list[object]] = {
    (int, 1): [True, 1.0], (int, 0): [False, 0.0], (bool, True): [1, 1.0], (float, 1.0): [1, True],
}


def _twin(record: dict[str, object], field: str, data: st.DataObject) -> dict[str, object]:
    value = record.get(field)
    twins = _TWINS.get((type(value), value)) if isinstance(value, (int, float)) else None
    if not twins:
        return record
    return {**record, field: data.draw(st.sampled_from(twins))}


@settings(max_examples=400, deadline=None, database=None)
@given(first=st.lists(_RECORD, max_size=8), steps=st.integers(1, 4), dwell_s=st.sampled_from([0, 30, 120]),
       data=st.data())
def test_parsing_and_folding_through_the_cache_changes_nothing(
    first: list[dict[str, object]], steps: int, dwell_s: int, data: st.DataObject,
) -> None:
    policy = StatePolicy(crowding_min_dwell=timedelta(seconds=dwell_s))
    cache = ReadingCache()
    cached_state = plain_state = NetworkState()
    records = first
    for step in range(steps + 1):
        if step:
            # The next document: mostly the same records again, as a feed republishes them, in another order,
            # with a few twins and a few new ones.
            records = list(data.draw(st.permutations(records)))
            for i in sorted(data.draw(st.sets(st.integers(0, max(len(records) - 1, 0)), max_size=2)), reverse=True):
                if i < len(records):
                    del records[i]  # a record the feed no longer sends (a whole-station reading, say)
            for i in data.draw(st.lists(st.integers(0, max(len(records) - 1, 0)), max_size=2)):
                if records:
                    records[i] = _twin(records[i], data.draw(st.sampled_from(["percentage", "direction_id"])), data)
            records += data.draw(st.lists(_RECORD, max_size=2))
        body = orjson.dumps({"schema": "broadcaster.passenger-flow/1", "timestamp": 1796314346 + step,
                             "stations": records})
        through_cache = parse_passenger_flow("flow", body, NETWORK, cache)
        plain = parse_passenger_flow("flow", body, NETWORK)
        assert through_cache == plain
        now = START + timedelta(seconds=60 * step)
        cached = apply_snapshot(cached_state, through_cache, network=NETWORK, now=now, policy=policy)
        fresh = folded_without_shortcut(plain_state, plain, now, policy)
        assert cached.changes == fresh.changes
        assert dict(cached.state.crowding) == dict(fresh.state.crowding)
        cached_state, plain_state = cached.state, fresh.state


def test_a_repeated_record_is_the_same_reading_and_its_station_the_same_record() -> None:
    records = [{"station_id": "S01", "level": "FULL", "observed_at": 1796314346, "line_id": "L1", "direction_id": 0},
               {"station_id": "S02", "level": "EMPTY", "observed_at": 1796314346, "line_id": "L1", "direction_id": 1}]
    cache = ReadingCache()

    def parse(stations: list[dict[str, object]], timestamp: int) -> FeedSnapshot:
        return parse_passenger_flow("flow", orjson.dumps(
            {"schema": "broadcaster.passenger-flow/1", "timestamp": timestamp, "stations": stations}), NETWORK, cache)

    first = parse(records, 1796314346)
    changed = [records[0], {**records[1], "level": "FULL", "observed_at": 1796314406}]
    second = parse(changed, 1796314406)
    assert first.crowding is not None
    assert second.crowding is not None
    assert second.crowding[0] is first.crowding[0]
    assert second.crowding[1] is not first.crowding[1]
    policy = StatePolicy(crowding_min_dwell=timedelta(0))
    one = apply_snapshot(NetworkState(), first, network=NETWORK, now=START, policy=policy)
    two = apply_snapshot(one.state, second, network=NETWORK, now=START + timedelta(minutes=1), policy=policy)
    assert two.state.crowding["S01"] is one.state.crowding["S01"]
    assert [c.station_id for c in two.changes if isinstance(c, CrowdingChange)] == ["S02"]
    assert len(two.changes) == 1


def test_two_platforms_under_one_line_and_direction_keep_the_order_a_fresh_parse_gives() -> None:
    """Their order in the document decides their order in the record: the identity test must not keep the old
    order when the document swaps them."""
    a = {"station_id": "S01", "level": "FULL", "percentage": 90, "observed_at": 1796314346, "line_id": "L1",
         "direction_id": 0}
    b = {**a, "level": "EMPTY", "percentage": 10}
    policy = StatePolicy(crowding_min_dwell=timedelta(0))
    cache = ReadingCache()
    states = [NetworkState(), NetworkState()]
    for step, records in enumerate([[a, b], [b, a]]):
        body = orjson.dumps({"schema": "broadcaster.passenger-flow/1", "timestamp": 1796314346 + step,
                             "stations": records})
        now = START + timedelta(minutes=step)
        states[0] = apply_snapshot(states[0], parse_passenger_flow("flow", body, NETWORK, cache), network=NETWORK,
                                   now=now, policy=policy).state
        states[1] = folded_without_shortcut(states[1], parse_passenger_flow("flow", body, NETWORK), now, policy).state
        assert dict(states[0].crowding) == dict(states[1].crowding)


def test_a_station_whose_whole_reading_goes_takes_its_most_crowded_platform() -> None:
    """The whole-station reading set the station's level; when the feed drops it and the platforms repeat, the
    station takes its most crowded platform's level, as before the shortcut (the record keeps no whole reading,
    so its platforms alone do not tell)."""
    at = 1796314346
    whole = {"station_id": "S01", "level": "EMPTY", "percentage": 10, "observed_at": at}
    platform = {"station_id": "S01", "level": "FULL", "percentage": 95, "observed_at": at, "line_id": "L1",
                "direction_id": 0}
    policy = StatePolicy(crowding_min_dwell=timedelta(0))
    cache = ReadingCache()
    state = NetworkState()
    for step, records in enumerate([[whole, platform], [platform], [platform]]):
        body = orjson.dumps({"schema": "broadcaster.passenger-flow/1", "timestamp": at + step, "stations": records})
        state = apply_snapshot(state, parse_passenger_flow("flow", body, NETWORK, cache), network=NETWORK,
                               now=START + timedelta(minutes=step), policy=policy).state
        assert state.crowding["S01"].level.name == ("EMPTY" if step == 0 else "FULL")


# -- byte for byte: the cache reads records by their bytes, so the bytes are what the property varies ------------

#: JSON text that orjson refuses although its structure is sound (msgspec passes over it unread), text at the
#: edges of what it reads, and ordinary values.
_ODD_VALUES = st.sampled_from([
    b"1e400", b"-1e400", b"123456789012345678901234567890", b"18446744073709551616", b"-0", b"1E5", b"0.5",
    b'"\xff"', b'"\xc3\x28"', b'"\xed\xa0\x80"', b'"\\ud800"', b'"\\udc00x"', b'"\\u0000"', b'"caf\xc3\xa9"',
    b"[" * 1021 + b"]" * 1021, b"[" * 1022 + b"]" * 1022, b"[" * 1030 + b"]" * 1030,
    b"null", b"true", b"[]", b"{}", b'""', b'"x"', b"12",
])
_SPACE = st.sampled_from([b"", b" ", b"\n", b"\t ", b"\r\n  "])


@st.composite
def _record_text(draw: st.DrawFn, pool: list[bytes]) -> bytes:
    """A record as a producer might write it: fields in any order, spaced any way, sometimes a key twice or an odd
    value; often the very bytes of a record written before (the cache's case)."""
    again = draw(st.integers(0, 2)) > 0
    if pool and again:
        return draw(st.sampled_from(pool))
    record = draw(_RECORD)
    items = [orjson.dumps(k) + draw(_SPACE) + b":" + draw(_SPACE) + orjson.dumps(v) for k, v in record.items()]
    if draw(st.integers(0, 3)) == 0:
        items.append(orjson.dumps(draw(st.sampled_from(["level", "x", "observed_at", "percentage"]))) + b":"
                     + draw(_ODD_VALUES))
    items = list(draw(st.permutations(items)))
    text = b"{" + draw(_SPACE) + (b"," + draw(_SPACE)).join(items) + draw(_SPACE) + b"}"
    pool.append(text)
    return text


@st.composite
def _document_text(draw: st.DrawFn, pool: list[bytes], step: int) -> bytes:
    records = draw(st.lists(_record_text(pool), max_size=6))
    stations = b"[" + draw(_SPACE) + b",".join(records) + b"]"
    top = [b'"schema":"broadcaster.passenger-flow/1"', b'"timestamp":' + str(1796314346 + step).encode()]
    shape = draw(st.integers(0, 9))
    if shape == 0:
        stations = draw(st.sampled_from([b"null", b"{}", b'"S01"', b"[", b"[1,]"]))
    if shape != 1:
        top.append(b'"stations":' + draw(_SPACE) + stations)
    if shape == 2:  # a repeated key: orjson keeps the last
        top.append(b'"stations":' + draw(st.sampled_from([b"[]", stations, b"null"])))
    if shape == 3:  # the array's very text elsewhere, as a value or inside a string
        before, after = draw(st.sampled_from([(b'"copy":', b""), (b'"copy":{"stations":', b"}"),
                                              (b'"copy":"x', b'"')]))
        top.append(before + stations + after)
    for _ in range(draw(st.integers(0, 2))):
        top.append(orjson.dumps(draw(st.sampled_from(["extra", "stations2", "\x00", "timestamp"]))) + b":"
                   + draw(_ODD_VALUES))
    if draw(st.integers(0, 9)) == 0:
        top.append(b'"\\ud800":1')
    top = list(draw(st.permutations(top)))
    body = draw(_SPACE) + b"{" + b",".join(top) + b"}" + draw(_SPACE)
    if draw(st.integers(0, 7)) == 0:  # one byte changed, added or dropped anywhere
        at = draw(st.integers(0, len(body) - 1))
        byte = bytes([draw(st.integers(0, 255))])
        body = draw(st.sampled_from([body[:at] + byte + body[at + 1:], body[:at] + byte + body[at:],
                                     body[:at] + body[at + 1:]]))
    return body


def _outcome(body: bytes, cache: ReadingCache | None) -> FeedSnapshot | str:
    try:
        return parse_passenger_flow("flow", body, NETWORK, cache)
    except FeedFormatError as exc:
        return str(exc)


@settings(max_examples=400, deadline=None, database=None)
@given(data=st.data(), steps=st.integers(1, 5))
def test_any_document_reads_the_same_through_the_cache_byte_for_byte(data: st.DataObject, steps: int) -> None:
    """Documents as bytes, one after another through one cache: the same snapshot, or the same error word for word,
    as reading each alone. Among them the text orjson refuses where the cache passes over records unread (a byte
    that is not UTF-8, a number past a double, nesting past orjson's depth limit), repeated keys and broken bytes."""
    cache = ReadingCache()
    pool: list[bytes] = []
    for step in range(steps):
        body = data.draw(_document_text(pool, step))
        assert _outcome(body, cache) == _outcome(body, None)


def test_a_record_known_by_its_bytes_is_not_read_again() -> None:
    """The cache's point: a record whose bytes the last document had is not decoded again (a record orjson could
    not read now would say so), and a changed byte is a new record."""
    record = b'{"station_id":"S01","level":"FULL","observed_at":1796314346}'
    cache = ReadingCache()

    def body(*records: bytes) -> bytes:
        return (b'{"schema":"broadcaster.passenger-flow/1","timestamp":1796314346,"stations":['
                + b",".join(records) + b"]}")

    first = parse_passenger_flow("flow", body(record), NETWORK, cache)
    again = parse_passenger_flow("flow", body(record, record.replace(b"FULL", b"EMPTY")), NETWORK, cache)
    assert first.crowding is not None
    assert again.crowding is not None
    assert again.crowding[0] is first.crowding[0]
    assert again.crowding[1].level.name == "EMPTY"
    spaced = parse_passenger_flow("flow", body(record.replace(b",", b", ")), NETWORK, cache)
    assert spaced.crowding == first.crowding
    assert spaced.crowding is not None
    assert spaced.crowding[0] is not first.crowding[0]


def test_a_record_without_its_own_time_takes_each_documents_time() -> None:
    """Its bytes repeat but its reading does not: it is stamped with each document's timestamp."""
    record = b'{"station_id":"S01","level":"FULL"}'
    cache = ReadingCache()
    times = []
    for stamp in (1796314346, 1796314406):
        body = (b'{"schema":"broadcaster.passenger-flow/1","timestamp":' + str(stamp).encode() + b',"stations":['
                + record + b"]}")
        snapshot = parse_passenger_flow("flow", body, NETWORK, cache)
        assert snapshot.crowding is not None
        times.append(snapshot.crowding[0].observed_at)
    assert times == [datetime.fromtimestamp(1796314346, UTC), datetime.fromtimestamp(1796314406, UTC)]


def test_a_stored_flow_snapshot_keeps_its_bytes_and_reads_back() -> None:
    """The stored snapshot (what a restart answered 304 reads back) of a passenger-flow feed: each reading an
    array of six in a fixed order, the level its number, the time RFC 3339. A database written by an earlier
    release holds these bytes, so they are pinned, and they decode to the snapshot."""
    body = (b'{"schema":"broadcaster.passenger-flow/1","timestamp":1796314346,"stations":['
            b'{"station_id":"S01","level":"FULL","percentage":95,"observed_at":1796314346},'
            b'{"station_id":"S02-P1","level":"EMPTY","line_id":"L1","direction_id":1}]}')
    snapshot = parse_passenger_flow("flow", body, NETWORK, ReadingCache())
    encoded = encode_snapshot(snapshot)
    assert orjson.loads(encoded)["crowding"] == [
        ["S01", 5, "2026-12-03T16:12:26+00:00", 95, None, None],
        ["S02", 0, "2026-12-03T16:12:26+00:00", None, "L1", 1],
    ]
    assert decode_snapshot(encoded) == snapshot


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("limit", [None, 20_000])
@pytest.mark.parametrize("depth", [990, 1000, 1021, 1022, 1030, 5000])
@pytest.mark.parametrize("where", ["top", "record", "field"])
def test_deep_nesting_reads_the_same_through_the_cache(depth: int, where: str, limit: int | None) -> None:
    """msgspec counts nesting against Python's recursion limit (1,000 by default), orjson against its own 1,024
    levels: whatever the depth and whichever the limit, the cache gives what a read without it gives, and
    nothing but a FeedFormatError leaves the parse. A record's depth in the document is 3 levels in: 1,021
    more fits orjson's limit, 1,022 does not, so the records the cache decodes must sit that deep too."""
    deep = _nested(depth)
    record = b'{"station_id":"S01","level":"FULL","observed_at":1796314346}'
    if where == "record":
        record = record[:-1] + b',"x":' + deep + b"}"
    elif where == "field":
        record = record.replace(b'"FULL"', deep)
    top = b',"x":' + deep if where == "top" else b""
    body = (b'{"schema":"broadcaster.passenger-flow/1","timestamp":1796314346' + top + b',"stations":[' + record
            + b"]}")
    before = sys.getrecursionlimit()
    if limit is not None:
        sys.setrecursionlimit(limit)
    try:
        cache = ReadingCache()
        for _ in range(2):  # the second time, the record is known by its bytes
            assert _outcome(body, cache) == _outcome(body, None)
    finally:
        sys.setrecursionlimit(before)


def test_a_reading_is_known_by_its_bytes_only_within_one_network() -> None:
    """A new network (a new static GTFS) may put a stop under another station, or drop it: the cache forgets."""
    record = b'{"station_id":"S04-P1","level":"FULL","observed_at":1796314346}'
    body = b'{"schema":"broadcaster.passenger-flow/1","timestamp":1796314346,"stations":[' + record + b"]}"
    moved = replace(NETWORK, stop_to_station=MappingProxyType({**NETWORK.stop_to_station, "S04-P1": "S02"}))
    cache = ReadingCache()
    first = parse_passenger_flow("flow", body, NETWORK, cache)
    after = parse_passenger_flow("flow", body, moved, cache)
    assert first.crowding is not None
    assert after.crowding is not None
    assert [r.station_id for r in first.crowding] == ["S04"]
    assert after == parse_passenger_flow("flow", body, moved)
    assert [r.station_id for r in after.crowding] == ["S02"]


def test_what_a_parser_did_not_foresee_fails_the_feed_not_the_round(caplog: pytest.LogCaptureFixture) -> None:
    """The one seam faked here: a parser raising what it should not (a bug, a recursion limit). The poller gets
    a FeedFormatError (the feed fails like any unreadable body: counted, its last good state kept) and the log
    has the traceback."""
    feed = FeedConfig(name="flow", kind="passenger-flow", url="http://127.0.0.1:9/flow.json")

    def broken(*args: object) -> FeedSnapshot:
        raise RecursionError("maximum recursion depth exceeded")

    with patch.object(poller, "parse_passenger_flow", broken), pytest.raises(FeedFormatError) as raised:
        poller.parse_feed(feed, b"{}", NETWORK, "zh", ReadingCache())
    assert "could not be read (RecursionError; see the log)" in str(raised.value)
    assert "Traceback" not in str(raised.value)
    assert any(r.exc_info and r.exc_info[0] is RecursionError for r in caplog.records)
    good = b'{"schema":"broadcaster.passenger-flow/1","timestamp":1796314346,"stations":[]}'
    assert poller.parse_feed(feed, good, NETWORK, "zh", ReadingCache()).crowding == ()


_RECORDS_TEXT = b'[{"station_id":"S01","level":"BUSY"},{"station_id":"S02","level":"FULL"}]'


@pytest.mark.parametrize(("stations", "copy"), [
    (_RECORDS_TEXT, b'"copy":' + _RECORDS_TEXT),
    (_RECORDS_TEXT, b'"copy":{"stations":' + _RECORDS_TEXT + b"}"),
    (b"[1,2]", b'"copy":"x[1,2]"'),  # only a text without quotes can sit inside a string
])
@pytest.mark.parametrize("copy_first", [False, True])
def test_the_records_array_repeated_elsewhere_is_not_taken_for_it(stations: bytes, copy: bytes,
                                                                   copy_first: bool) -> None:
    """The cut empties the records' array where it finds its text: the same text under another key (or in a
    string) must not be emptied instead, or the envelope's model would read the records and refuse the
    document for one bad record, where a read without the cache skips that record."""
    members = [b'"schema":"broadcaster.passenger-flow/1"', b'"timestamp":1796314346', b'"stations":' + stations,
               copy]
    if copy_first:
        members.reverse()
    body = b"{" + b",".join(members) + b"}"
    plain = _outcome(body, None)
    assert isinstance(plain, FeedSnapshot)
    assert plain.problems
    assert _outcome(body, ReadingCache()) == plain


@pytest.mark.parametrize("body", [
    b'{"timestamp":"2026-01-01T00:00:00Z","stations":[ ],"schema":"bad[ ]"}',  # the string ends at the last ]
    b'{"schema":"bad[ ]","timestamp":"2026-01-01T00:00:00Z","stations":[ ],"z":"]"}',  # found first, in a string
    b'{"schema":"bad[  ]","stations":[  ],"timestamp":"2026-01-01T00:00:00Z","z":"]"}',
])
def test_an_empty_records_array_is_not_looked_for_in_a_string(body: bytes) -> None:
    """An empty array written with a space inside is text a string can hold: emptying the string instead would
    pass for the array (both read as []), and the error would quote the schema changed. Found by review."""
    plain = _outcome(body, None)
    assert isinstance(plain, str)
    assert "got 'bad[" in plain
    assert _outcome(body, ReadingCache()) == plain
