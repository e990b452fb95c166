"""A passenger-flow feed's `ReadingCache` and the crowding state's identity test (`_made_from`): parsing a sequence
of documents through the cache, and folding each into the state, gives exactly what parsing and folding without
it gives: the same snapshots, the same records, the same changes, step after step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tiny_network import tiny_network

from broadcaster.feeds.passenger_flow import ReadingCache, parse_passenger_flow
from broadcaster.model import FeedSnapshot
from broadcaster.state.model import CrowdingChange, NetworkState, StatePolicy
from broadcaster.state.transition import apply_snapshot

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
        "percentage": st.sampled_from([10, 12, 40, 90, 1, True, 1.0, None]),
        "observed_at": st.sampled_from([*STAMPS, True, None, [1]]),
        "line_id": st.sampled_from(["L1", "L2", "L9", None]),
        "direction_id": st.sampled_from([0, 1, True, 0.0, None]),
    },
)


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
        fresh = apply_snapshot(plain_state, plain, network=NETWORK, now=now, policy=policy)
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
        for i, snapshot in enumerate([parse_passenger_flow("flow", body, NETWORK, cache),
                                      parse_passenger_flow("flow", body, NETWORK)]):
            states[i] = apply_snapshot(states[i], snapshot, network=NETWORK, now=now, policy=policy).state
        assert dict(states[0].crowding) == dict(states[1].crowding)
