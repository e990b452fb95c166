"""broadcaster: real-time transit notices from GTFS-Realtime and passenger-flow feeds to MQTT and micro-blogs."""

__version__ = "0.1.0"
