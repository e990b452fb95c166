"""Real test infrastructure (a Mosquitto broker, a loopback HTTP server, MQTT helpers); no mocks."""

from .http_server import LoopbackHttpServer, RecordedRequest
from .mosquitto import MosquittoBroker, MosquittoNotFound, find_mosquitto
from .mqtt_client import MessageRecorder, ReceivedMessage, collect_retained, collect_retained_until, publish
from .ports import free_port

__all__ = [
    "LoopbackHttpServer",
    "MessageRecorder",
    "MosquittoBroker",
    "MosquittoNotFound",
    "ReceivedMessage",
    "RecordedRequest",
    "collect_retained",
    "collect_retained_until",
    "find_mosquitto",
    "free_port",
    "publish",
]
