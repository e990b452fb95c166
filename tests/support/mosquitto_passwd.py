"""Mosquitto password files for tests that need authenticated brokers, made with the real `mosquitto_passwd`."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from .mosquitto import find_mosquitto


def find_mosquitto_passwd() -> str:
    """mosquitto_passwd: $MOSQUITTO_PASSWD, PATH, next to the broker, then the usual places.

    It comes with the broker (Debian's `mosquitto` package installs it in /usr/bin): a missing one is a broken
    test environment, so the calling test fails rather than skips.
    """
    broker_dir = str(Path(find_mosquitto()).parent)
    candidates = [os.environ.get("MOSQUITTO_PASSWD", ""), shutil.which("mosquitto_passwd") or "",
                  *(str(Path(d) / "mosquitto_passwd") for d in (broker_dir, "/usr/bin", "/usr/local/bin",
                                                                 "/opt/homebrew/bin"))]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("mosquitto_passwd not found (it comes with the mosquitto package)", pytrace=False)


def write_password_file(path: Path, accounts: Mapping[str, str]) -> Path:
    """A password file at `path` holding `accounts` (user -> password), readable by its owner only."""
    tool = find_mosquitto_passwd()
    for i, (user, password) in enumerate(accounts.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run([tool, *create, "-b", str(path), user, password], check=True, capture_output=True,
                       timeout=30)
    path.chmod(0o600)
    return path
