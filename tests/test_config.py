"""Config validation and `broadcaster check`: clear errors naming file, key and value; exit status 2."""

from __future__ import annotations

import subprocess
import sys
from datetime import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broadcaster.cli import main
from broadcaster.config import QuietWindow, Secret, SecretRef, ServiceHours, load_config
from broadcaster.errors import ConfigError
from broadcaster.resources import data_dir

EXAMPLE = data_dir("config") / "example.toml"


def write_config(tmp_path: Path, body: str, top: str = "") -> Path:
    """A config in tmp_path that points at the shipped example network; `top` goes before any table."""
    network = (data_dir("config") / "network").as_posix()
    path = tmp_path / "broadcaster.toml"
    text = top + f'\n[network]\ngtfs = "{network}"\n\n' + body
    path.write_text(text, encoding="utf-8")
    return path


FEED = """
[[feeds]]
name = "ops"
kind = "gtfs-rt"
url = "https://feeds.example.org/rt.pb"
"""

HOOK = '\n[[channels]]\nname = "{}"\nkind = "webhook"\nurl = "https://h.example"\n'


def test_example_config_loads_and_resolves_relative_paths() -> None:
    config = load_config(EXAMPLE)
    assert config.network.gtfs == (EXAMPLE.parent / "network").resolve()
    assert config.feeds[0].url == (EXAMPLE.parent / "samples" / "gtfs-rt.pb").resolve().as_uri()
    assert config.state.directory.is_absolute()
    assert config.source == EXAMPLE.resolve()


@pytest.mark.parametrize(
    ("body", "key", "fragment"),
    [
        (FEED.replace('name = "ops"', 'name = "ops"\npol_seconds = 5'), "feeds[0].pol_seconds", "unknown key"),
        (FEED.replace("https://feeds.example.org/rt.pb", "ftp://x/rt.pb"), "feeds[0].url", "must start with http://"),
        (FEED.replace('"gtfs-rt"', '"gtfs"'), "feeds[0].kind", "'gtfs-rt' or 'passenger-flow'"),
        (FEED + "\n[mqtt]\nurl = \"mqtt://user:pw@host\"\n", "mqtt.url", "credentials"),
        ('timezone = "Mars/Olympus"\n' + FEED, "timezone", "is not an IANA time zone name"),
        (FEED + FEED, "feeds", "the name of feeds[1] is used twice"),
        ("", "feeds", "required"),
        (FEED + '\n[[channels]]\nname = "m"\nkind = "mastodn"\nurl = "https://m.example"\n',
         "channels[0].kind", "must be one of atom, bluesky, mastodon, webhook, weibo"),
        (FEED + '\n[[channels]]\nname = "m"\nkind = "mastodon"\nurl = "https://m.example"\ntoken = "abc"\n',
         "channels[0].token", 'token = { env = "METRO_MASTODON_TOKEN" }'),
        (FEED + '\n[[channels]]\nname = "mqtt"\nkind = "webhook"\nurl = "https://h.example"\n',
         "channels", "taken by the MQTT notice stream"),
        (FEED + HOOK.format("a") + HOOK.format("b") + HOOK.format("a") + HOOK.format("mqtt"),
         "channels", "the name of channels[2] is used twice (channels[0] has it too)"),
        (FEED + HOOK.format("a") + HOOK.format("mqtt") + HOOK.format("a"), "channels", "taken by the MQTT notice"),
        (FEED + '\n[admin]\ntokens = [{ id = "desk", token = { env = "A" } }, { id = "ops", token = { env = "B" } },'
                ' { id = "desk", token = { env = "C" } }]\n',
         "admin.tokens", "the id of tokens[2] is used twice (tokens[0] has it too)"),
        (FEED.replace('kind = "gtfs-rt"', 'kind = "gtfs-rt"\npoll_seconds = -1'), "feeds[0].poll_seconds",
         "greater than 0"),
        # Every notice is composed in the network's languages only: a channel or a default outside them had
        # no text to render (a KeyError at every commit), and no language at all composed nothing.
        ("languages = []\n" + FEED, "network.languages", "at least 1"),
        (FEED + "\n[mqtt]\nprotocol = 3\n", "mqtt.protocol", "Input should be '5' or '3.1.1'"),
        (FEED + "\n[mqtt]\nprotocol = true\n", "mqtt.protocol", "Input should be '5' or '3.1.1'"),
        ('languages = ["zh", "en", "zh"]\n' + FEED, "network.languages", "languages[2] is used twice"),
        ('languages = ["zh"]\ndefault_language = "en"\n' + FEED, "network.default_language",
         "is not one of network.languages (zh)"),
        ('languages = ["zh"]\n' + FEED + HOOK.format("a") + 'languages = ["zh", "en"]\n', "channels[0].languages[1]",
         "is not one of network.languages (zh)"),
    ],
)
def test_bad_config_names_file_and_key_and_says_what_is_wrong(
    tmp_path: Path, body: str, key: str, fragment: str
) -> None:
    # Top-level keys must come before the first table, so they travel in front of the body.
    top, marker, rest = body.partition("\n[[feeds]]") if body.startswith("timezone") else ("", "", body)
    path = write_config(tmp_path, marker + rest, top)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert info.value.file == str(path)
    assert fragment in str(info.value)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[network\ngtfs = "x"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.toml: TOML syntax error: .*line 1"):
        load_config(path)


def test_cli_unknown_key_exits_2_and_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, FEED.replace('name = "ops"', 'name = "ops"\npol_seconds = 5'))
    for command in ("check", "once", "run"):
        assert main([command, "-c", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"broadcaster: {path}: feeds[0].pol_seconds: unknown key (check the spelling; see " \
                      "config/example.toml)"


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: cannot read" in capsys.readouterr().err


def test_check_renders_every_template_of_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--offline", "-c", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    for kind in ("alert_new", "alert_updated", "alert_resolved", "line_status", "crowding", "digest", "correction"):
        assert f"--- {kind} [zh]" in out
        assert f"--- {kind} [en]" in out
    assert "18 sample posts rendered: OK" in out


def test_check_reports_a_broken_operator_template_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "alert_new.en.j2").write_text("Line one\n{{ header }\n", encoding="utf-8")
    (templates / "crowding.zh.j2").write_text("{{ no_such_variable }}\n", encoding="utf-8")
    path = write_config(tmp_path, FEED + f'\n[templates]\ndirectory = "{templates.as_posix()}"\n')
    assert main(["check", "--offline", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"template {templates / 'alert_new.en.j2'}:2:" in err
    assert "'no_such_variable' is undefined" in err


def test_check_renders_each_digests_named_template_and_exits_2_naming_a_missing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    for lang in ("zh", "en"):
        (templates / f"weekly.{lang}.j2").write_text("Weekly {{ as_of }}: {{ lines | length }} lines\n",
                                                     encoding="utf-8")
    digests = '[[digests]]\nname = "week"\ntemplate = "weekly"\n\n[[digests]]\nname = "night"\ntemplate = "nightly"\n'
    path = write_config(tmp_path, FEED + f'\n[templates]\ndirectory = "{templates.as_posix()}"\n\n' + digests)
    assert main(["check", "--offline", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "--- digest (weekly) [en]\nWeekly " in out  # the operator's template, rendered on the samples
    assert (f"{path}: digests[1].template: 'nightly': no template nightly.zh.j2, nightly.en.j2 in {templates}"
            " or the built-in templates") in err
    assert "digests[0]" not in err


def test_check_reports_a_missing_sample_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, FEED.replace("https://feeds.example.org/rt.pb", "file://missing.pb"))
    assert main(["check", "--offline", "-c", str(path)]) == 2
    assert "feeds[0].url: " in capsys.readouterr().err


def test_secrets_are_masked_and_read_from_env_or_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BC_TEST_PW", "hunter2")
    secret = SecretRef(env="BC_TEST_PW").load()
    assert secret is not None
    assert secret.reveal() == "hunter2"
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    (tmp_path / "pw").write_text("s3cret\n", encoding="utf-8")
    from_file = SecretRef(file=tmp_path / "pw").load()
    assert isinstance(from_file, Secret)
    assert from_file.reveal() == "s3cret"
    with pytest.raises(ValueError, match="exactly one"):
        SecretRef()


def test_python_dash_m_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broadcaster", "check", "--offline", "-c", str(EXAMPLE), "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"ok": true' in result.stdout


@given(st.times(), st.times(), st.times())
def test_service_hours_and_quiet_windows_share_one_rule_start_in_end_out_past_midnight(
    start: time, end: time, at: time
) -> None:
    inside = ServiceHours(start=start, end=end).contains(at)
    assert QuietWindow(start=start, end=end).contains(at) == inside
    if start <= end:
        assert inside == (start <= at < end)
    else:  # 22:00-06:00: the night, across midnight
        assert inside == (at >= start or at < end)


def test_mqtt_protocol_5_may_be_written_as_a_number(tmp_path: Path) -> None:
    # `protocol = 5` is what an operator writes; it was refused with "Input should be '5' or '3.1.1'".
    assert load_config(write_config(tmp_path, FEED + '\n[mqtt]\nprotocol = 5\n')).mqtt.protocol == "5"
    assert load_config(write_config(tmp_path, FEED + '\n[mqtt]\nprotocol = "3.1.1"\n')).mqtt.protocol == "3.1.1"


def test_check_warns_when_topics_would_carry_a_dot_that_nats_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # NATS 2.9 closes the connection of a client publishing a topic with a '.' (tests/test_broker_nats_cluster.py):
    # a dotted prefix or id would drop every session there. Other brokers take it, so a warning, not an error.
    assert main(["check", "--offline", "-c", str(write_config(tmp_path, FEED))]) == 0
    assert "NATS" not in capsys.readouterr().out
    dotted = write_config(tmp_path, FEED + '\n[mqtt]\ntopic_prefix = "metro.city"\n')
    assert main(["check", "--offline", "-c", str(dotted)]) == 0
    out = capsys.readouterr().out
    assert "warning: MQTT topics will carry a '.' (topic_prefix): NATS before 2.10 refuses" in out
    # With [ha] the instance id is a topic level too (the presence topic), and a host name often has a '.'.
    ha = write_config(tmp_path, FEED + '\n[storage]\nurl = "postgresql://b@db.example/broadcaster"\n'
                      '\n[ha]\ninstance = "east-1.metro"\n')
    assert main(["check", "--offline", "-c", str(ha)]) == 0
    assert "warning: MQTT topics will carry a '.' (ha.instance): NATS" in capsys.readouterr().out
