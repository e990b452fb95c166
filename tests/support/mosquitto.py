"""A real Mosquitto broker on a free loopback port, started and stopped by the tests."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from typing import IO, TYPE_CHECKING, Self

from .binaries import find_binary
from .ports import free_port

if TYPE_CHECKING:
    from pathlib import Path

# Debian installs the broker in /usr/sbin, which is not on a normal user's PATH.
_KNOWN_LOCATIONS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto")


class MosquittoNotFound(RuntimeError):
    """No mosquitto binary on this machine."""


def find_mosquitto() -> str:
    """Return the path of the mosquitto binary: $MOSQUITTO, then PATH, then the usual sbin directories."""
    return find_binary("mosquitto", "MOSQUITTO", _KNOWN_LOCATIONS, "mosquitto", MosquittoNotFound)


class MosquittoBroker:
    """One mosquitto process with its config, log and persistence database in `workdir`.

    Persistence is saved only when the broker exits cleanly (``autosave_interval 0`` by default), so the
    outage tests are deterministic: `stop()` and `restart()` keep every retained message, `kill()` loses
    every retained message published since the last clean stop. With ``persistence=False`` any restart
    loses them all.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        *,
        persistence: bool = True,
        autosave_interval: int = 0,
        extra_config: str = "",
        port: int | None = None,
        startup_timeout_s: float = 10.0,
        websockets: bool = False,
    ) -> None:
        self.binary = find_mosquitto()
        self.workdir = workdir
        self.persistence = persistence
        self.autosave_interval = autosave_interval
        self.extra_config = extra_config
        self.startup_timeout_s = startup_timeout_s
        self._port = port if port is not None else free_port(self.host)
        #: With `websockets`, a second listener speaking MQTT over WebSocket (for browser pages), on a port of its own.
        self.ws_port = free_port(self.host) if websockets else None
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "data").mkdir(exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self.stderr_path = workdir / "mosquitto.stderr"
        self._write_config()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self._port}"

    @property
    def ws_url(self) -> str:
        assert self.ws_port is not None, "started without websockets=True"
        return f"ws://{self.host}:{self.ws_port}/"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> None:
        lines = [
            f"listener {self._port} {self.host}",
            "allow_anonymous true",
            # When the tests run as root, mosquitto would otherwise switch to the `mosquitto` user and could
            # not write to our temporary directory; for a non-root user the setting has no effect.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir / 'data'}/",
            f"autosave_interval {self.autosave_interval}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            *([f"listener {self.ws_port} {self.host}", "protocol websockets"] if self.ws_port else []),
            self.extra_config,
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self) -> None:
        """Start the broker and return once it accepts TCP connections on its port."""
        if self.running:
            raise RuntimeError(f"mosquitto on port {self._port} is already running")
        self._close_stderr()
        self._stderr = self.stderr_path.open("ab")
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last_error: OSError | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                self._close_stderr()
                raise RuntimeError(f"mosquitto exited with status {code} at startup:\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self._port), timeout=0.5):
                    return
            except OSError as exc:
                last_error = exc
                # Retry after a short pause; the overall deadline bounds the wait.
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(
            f"mosquitto did not accept connections on {self.host}:{self._port} within "
            f"{self.startup_timeout_s}s ({last_error}):\n{self.log_text()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop cleanly (SIGTERM): the broker saves its persistence database on the way out."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
                self._process = None
                self._close_stderr()
                raise RuntimeError(f"mosquitto did not stop within {timeout_s}s after SIGTERM") from None
        self._process = None
        self._close_stderr()

    def kill(self) -> None:
        """Kill abruptly (SIGKILL): nothing is saved, as in a power cut."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        self._process = None
        self._close_stderr()

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its password and ACL files again (and keeps every connection)."""
        assert self._process is not None, "the broker is not running"
        self._process.send_signal(signal.SIGHUP)

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same port."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def log_text(self) -> str:
        """The broker's log file followed by anything it wrote to stderr."""
        parts = []
        for path in (self.log_path, self.stderr_path):
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "".join(parts)

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {self.url} {state}>"
