"""GTFS-Realtime protobuf to domain objects: service alerts, line delays and line occupancy.

This is the only package that imports `gtfs_realtime_pb2`. Fields are read straight from the messages
(`HasField`, local names): `MessageToDict` costs a hundred times more (docs/design.md, "Measured facts").
Alert texts are neutralised here, at the boundary, by `broadcaster.text` (controls, bidi overrides, HTML,
mentions, size).

- `message`: `parse_gtfs_rt`, the entry point: the FeedMessage decoded, its header checked, its entities
  handed out by kind;
- `alerts`: alert entities to `Alert`s on the network, invalid ones skipped with the reason;
- `trips`: trip updates and vehicle positions to delays and occupancy per line and direction;
- `incremental`: `EntityCache`, a feed's previous entities by their bytes, so a parse decodes only what changed;
- `fields`: reading field values alike everywhere, and quoting examples in problem lines.
"""

from broadcaster.feeds.gtfs_rt.fields import MAX_EPOCH_SECONDS
from broadcaster.feeds.gtfs_rt.incremental import EntityCache
from broadcaster.feeds.gtfs_rt.message import KINDS, parse_gtfs_rt

__all__ = ["KINDS", "MAX_EPOCH_SECONDS", "EntityCache", "parse_gtfs_rt"]
