"""The docs a newcomer relies on stay true: every config key documented, no pointer outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from pydantic import BaseModel

from broadcaster import config as cfg
from broadcaster.config.storage import StorageConfig

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _documented(doc: Path) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", doc.read_text(encoding="utf-8")))


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


CHANNEL_MODELS = [
    cfg.MastodonChannelConfig, cfg.BlueskyChannelConfig, cfg.WeiboChannelConfig, cfg.WebhookChannelConfig,
    cfg.AtomChannelConfig,
]


@pytest.mark.parametrize("model", CHANNEL_MODELS, ids=lambda m: m.__name__)
def test_every_channel_key_is_documented_in_channels_md(model: type[BaseModel]) -> None:
    missing = _fields(model) - _documented(DOCS / "channels.md")
    assert not missing, f"docs/channels.md does not document {sorted(missing)} of {model.__name__}"


@pytest.mark.parametrize(
    "model",
    [cfg.NetworkConfig, cfg.FeedConfig, cfg.ServiceHours, cfg.StateConfig, cfg.MqttConfig, cfg.TemplatesConfig,
     cfg.DigestConfig, cfg.EmergencyConfig, cfg.HashtagsConfig, cfg.AdminConfig, cfg.PublicConfig, StorageConfig],
    ids=lambda m: m.__name__,
)
def test_every_section_key_is_documented_in_configuration_md(model: type[BaseModel]) -> None:
    missing = _fields(model) - _documented(DOCS / "configuration.md")
    assert not missing, f"docs/configuration.md does not document {sorted(missing)} of {model.__name__}"


def test_every_notice_kind_is_listed_where_templates_and_the_contract_are_described() -> None:
    for doc in (DOCS / "configuration.md", DOCS / "mqtt.md"):
        missing = set(cfg.NOTICE_KINDS) - _documented(doc)
        assert not missing, f"{doc.name} does not list the notice kinds {sorted(missing)}"


def test_the_project_never_points_outside_its_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.splitlines():
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".toml", ".j2", ".js", ".html", ".conf"} and name != ".ci/run":
            continue
        if path == Path(__file__).resolve():
            continue  # this test names what it looks for
        text = path.read_text(encoding="utf-8", errors="replace")
        if "../shared" in text or re.search(r"(?<![/\w])DESIGN\.md", text):
            offenders.append(name)
    assert not offenders, f"these files point at design notes outside the repository: {offenders}"


def test_a_newcomer_learns_the_cjk_font_and_the_production_broker() -> None:
    assert "fonts-noto-cjk" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "fonts-noto-cjk" in (DOCS / "demo.md").read_text(encoding="utf-8")
    assert "../config/mosquitto/mosquitto.conf" in (DOCS / "mqtt.md").read_text(encoding="utf-8")
    assert "not yet in this version" not in (DOCS / "configuration.md").read_text(encoding="utf-8")
