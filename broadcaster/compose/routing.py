"""Which notices a channel takes: its `notices` (kinds), `min_severity`, `emergencies_only`, `lines` and
`stations` (docs/channels.md, "Which notices a channel posts").

The rule, for a notice and a channel:

- its kind is one of the channel's `notices`, its severity is at least `min_severity` (an emergency passes
  whatever its severity), and with `emergencies_only` it is about an emergency;
- and, when the channel names lines or stations, the notice touches one of them: it names one of the lines,
  or one of the stations, or it names no station but a line that serves one of the stations (a line-wide
  notice concerns every station of the line). A notice that names no line and no station concerns the whole
  network (an operator's network-wide announcement) and reaches every channel: a rider of line 2 must hear that
  the whole network stops.

A notice that names its audience was routed already, and only its kind is judged here: a digest slot is composed
for each channel's own lines and stations (`Area`), for the channels whose filter takes a digest; an operator's
correction of a notice no longer in the state goes to the channels that carried that notice.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from broadcaster.compose.notice import Notice, NoticeKind
from broadcaster.config import ChannelConfig, Config
from broadcaster.errors import ConfigError
from broadcaster.model import Network, Severity

#: How many known ids an unknown-id message lists before "...".
KNOWN_SHOWN = 20


@dataclass(frozen=True, slots=True)
class Area:
    """The part of the network a channel follows: its lines and stations (both empty: all of it)."""

    lines: frozenset[str] = frozenset()
    stations: frozenset[str] = frozenset()

    @property
    def whole_network(self) -> bool:
        return not self.lines and not self.stations

    def digest_lines(self, network: Network) -> tuple[str, ...]:
        """The lines a digest for this area lists, in the network's order: its lines and those serving its
        stations (every line for the whole network)."""
        if self.whole_network:
            return tuple(network.lines)
        serving = {line for station in self.stations for line in network.lines_at(station)}
        return tuple(line for line in network.lines if line in self.lines or line in serving)

    def digest_stations(self, network: Network) -> frozenset[str]:
        """The stations whose crowding a digest for this area may list: its stations and those of its lines
        (every station for the whole network)."""
        if self.whole_network:
            return frozenset(network.stations)
        return self.stations | {station for line in self.lines for station in network.stations_of(line)}

    def label(self) -> str:
        """For people: "lines 1, 2; stations S1" or "the whole network"."""
        parts = [f"{name} {', '.join(sorted(ids))}" for name, ids in (("lines", self.lines),
                                                                        ("stations", self.stations)) if ids]
        return "; ".join(parts) or "the whole network"


@dataclass(frozen=True, slots=True)
class Route:
    """One channel's filter, with its stations' lines looked up once in the network."""

    notices: frozenset[str]
    area: Area = Area()
    min_severity: Severity | None = None
    emergencies_only: bool = False
    #: The lines serving `area.stations`: a notice naming one of them and no station concerns those stations.
    station_lines: frozenset[str] = frozenset()

    def takes(self, notice: Notice) -> bool:
        """Whether the channel posts `notice` (the rule in the module's docstring)."""
        if notice.audience is not None:
            return notice.kind.value in self.notices  # routed already: a digest slot, a late correction
        if not self.admits(notice.kind, notice.severity, emergency=notice.emergency):
            return False
        return self.covers(notice.line_ids, notice.station_ids)

    def admits(self, kind: NoticeKind, severity: Severity, *, emergency: bool) -> bool:
        """The kind and severity half of the rule."""
        if kind.value not in self.notices:
            return False
        # An emergency passes whatever severity it carries: feeds often rate a suspension (NO_SERVICE) WARNING or
        # not at all, and a channel for serious matters must not miss it.
        if self.min_severity is not None and severity < self.min_severity and not emergency:
            return False
        return emergency or not self.emergencies_only

    def covers(self, line_ids: Collection[str], station_ids: Collection[str]) -> bool:
        """The lines and stations half of the rule."""
        if self.area.whole_network or (not line_ids and not station_ids):
            return True
        if any(line in self.area.lines for line in line_ids):
            return True
        if any(station in self.area.stations for station in station_ids):
            return True
        return not station_ids and any(line in self.station_lines for line in line_ids)


#: The route of the MQTT notice stream, and of any channel without filters: everything.
EVERYTHING = Route(frozenset(kind.value for kind in NoticeKind))


def route_of(channel: ChannelConfig, network: Network) -> Route:
    """The filter `channel`'s configuration describes."""
    area = Area(frozenset(channel.lines), frozenset(channel.stations))
    serving = frozenset(line for station in area.stations for line in network.lines_at(station))
    severity = Severity[channel.min_severity] if channel.min_severity is not None else None
    return Route(frozenset(channel.notices), area, severity, channel.emergencies_only, serving)


def _known(ids: Iterable[str]) -> str:
    listed = list(ids)
    shown = ", ".join(listed[:KNOWN_SHOWN])
    return shown + (f", ... ({len(listed)} in all)" if len(listed) > KNOWN_SHOWN else "")


def unknown_places(config: Config, network: Network) -> list[ConfigError]:
    """A `ConfigError` for each line or station a channel names that the network does not have, naming the key
    (`channels[1].lines[0]`): such a filter would silently take nothing. The loaded config cannot see the
    network, so `check`, `run`, `once` and `preview` ask this once the network is loaded."""
    problems: list[ConfigError] = []
    for c, channel in enumerate(config.channels):
        problems += [ConfigError(config.source, f"channels[{c}].lines[{i}]",
                                 f"no line of the network has this id (route ids: {_known(network.lines)})")
                     for i, line in enumerate(channel.lines) if line not in network.lines]
        problems += [ConfigError(config.source, f"channels[{c}].stations[{i}]",
                                 "no station of the network has this id (name stations, not their platforms;"
                                 f" station ids: {_known(network.stations)})")
                     for i, station in enumerate(channel.stations) if station not in network.stations]
    return problems


def require_known_places(config: Config, network: Network) -> None:
    """Refuse a config whose channels name lines or stations the network lacks (the first one, as loading does).

    Raises:
        ConfigError: naming the key.
    """
    problems = unknown_places(config, network)
    if problems:
        raise problems[0]
