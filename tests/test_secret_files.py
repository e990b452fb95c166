"""Secret files: systemd credentials, container secrets, the config's folder; values read without stray white space;
and `Secret` masked wherever it could be printed."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import pytest

from broadcaster.config import Secret, SecretRef
from broadcaster.secretfiles import (
    is_header_safe,
    read_secret_file,
    resolve_secret_file,
    secret_file_candidates,
)

SENTINEL = "SENTINEL-secret-value-4f1d"


def test_an_absolute_path_is_used_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "token"
    assert secret_file_candidates(path, environ={"CREDENTIALS_DIRECTORY": "/x"}) == [path]


def test_a_bare_name_is_looked_up_in_credentials_then_container_secrets_then_the_config_folder(tmp_path: Path) -> None:
    creds, secrets, config = tmp_path / "creds", tmp_path / "secrets", tmp_path / "etc"
    for folder in (creds, secrets, config):
        folder.mkdir()
    environ = {"CREDENTIALS_DIRECTORY": str(creds)}
    name = Path("mastodon_token")

    def resolve() -> Path:
        return resolve_secret_file(name, config_dir=config, environ=environ, secrets_dir=secrets)

    assert resolve() == config / name  # nothing exists: the last place, for the error message
    (config / name).write_text("c", encoding="utf-8")
    assert resolve() == config / name
    (secrets / name).write_text("b", encoding="utf-8")
    assert resolve() == secrets / name
    (creds / name).write_text("a", encoding="utf-8")
    assert resolve() == creds / name
    assert resolve_secret_file(name, config_dir=config, environ={}, secrets_dir=secrets) == secrets / name


def test_the_container_default_is_run_secrets() -> None:
    assert secret_file_candidates(Path("x"), config_dir=Path("/etc/b"), environ={}) == [
        Path("/run/secrets/x"), Path("/etc/b/x"),
    ]


@pytest.mark.parametrize("stored", [SENTINEL, f"{SENTINEL}\n", f"{SENTINEL}\r\n", f" {SENTINEL} \n",
                                    f"\ufeff{SENTINEL}\n", f"\t{SENTINEL}\n\n"])
def test_a_secret_file_is_read_without_stray_white_space(tmp_path: Path, stored: str) -> None:
    path = tmp_path / "token"
    path.write_text(stored, encoding="utf-8")
    assert read_secret_file(path) == SENTINEL


def test_secret_is_masked_wherever_it_could_be_printed(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret(SENTINEL)
    assert secret.reveal() == SENTINEL
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % (secret,),  # noqa: UP031
             repr([secret]), repr({"token": secret})]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("token %s %r", secret, secret)
    shown.append(caplog.text)
    try:
        raise ValueError(secret)
    except ValueError:
        shown.append(traceback.format_exc())
    for text in shown:
        assert SENTINEL not in text
        assert "*" in text


def test_secret_has_no_attribute_dictionary_to_dump() -> None:
    secret = Secret(SENTINEL)
    assert not hasattr(secret, "__dict__")
    with pytest.raises(TypeError):
        vars(secret)


def test_a_secret_ref_holds_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SENTINEL", SENTINEL)
    ref = SecretRef(env="T_SENTINEL")
    assert SENTINEL not in repr(ref)
    assert SENTINEL not in ref.model_dump_json()
    loaded = ref.load()
    assert loaded is not None
    assert loaded.reveal() == SENTINEL
    assert SENTINEL not in repr(loaded)


@pytest.mark.parametrize(("token", "safe"), [
    (SENTINEL, True), ("2.00abc_DEF-123.xyz~+/=", True), (f"{SENTINEL} ", False), (f" {SENTINEL}", False),
    (f"{SENTINEL}\n", False), ("a b", False), ("tok\x00en", False), ("tökén", False), ("", False),
])
def test_tokens_that_cannot_be_sent_in_a_header_are_recognised(token: str, safe: bool) -> None:
    assert is_header_safe(token) is safe
