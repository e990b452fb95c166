"""The shared message-expiry property of publishes: packed once, it must be the bytes paho would pack itself,
for every expiry a config can give (MQTT 5 Four Byte Integer), or displays get a wrong expiry (or none)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broadcaster.channels.mqtt.clients import _expiry


@given(st.integers(min_value=-5, max_value=2**32 - 1))
def test_the_packed_once_expiry_is_what_paho_packs(seconds: int) -> None:
    fresh = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    fresh.MessageExpiryInterval = max(1, seconds)
    shared = _expiry(seconds)
    assert shared.pack() == fresh.pack()  # type: ignore[no-untyped-call]
    assert shared.pack() == fresh.pack()  # type: ignore[no-untyped-call]  # and again, from the cache
    assert shared.MessageExpiryInterval == max(1, seconds)  # type: ignore[attr-defined]


def test_the_shared_expiry_property_cannot_be_changed() -> None:
    """Every publish with this expiry shares the object and its packed bytes: a change would not reach the wire."""
    shared = _expiry(600)
    with pytest.raises(AttributeError, match="read-only"):
        shared.MessageExpiryInterval = 5
    assert shared.pack() == _expiry(600).pack()  # type: ignore[no-untyped-call]
