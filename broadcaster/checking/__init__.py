"""`broadcaster check`: validate a config, its network and every template against sample notices; then (unless
`--offline`) fetch every feed, connect to the broker, resolve every secret and verify every channel's credentials
with a call that changes nothing.

One job per module: `report` (what was found), `samples` (sample notices from the real compose step),
`offline` (config, templates, files, digest slots) and `online` (feeds, broker, secrets, channels). Import from
here.
"""

from broadcaster.checking.offline import DIGEST_SLOTS_SHOWN, check_config, check_offline, digest_slots
from broadcaster.checking.online import check_online, resolve_secrets, secret_refs
from broadcaster.checking.report import CheckReport, Verdict
from broadcaster.checking.samples import sample_changes, sample_notices

__all__ = [
    "DIGEST_SLOTS_SHOWN",
    "CheckReport",
    "Verdict",
    "check_config",
    "check_offline",
    "check_online",
    "digest_slots",
    "resolve_secrets",
    "sample_changes",
    "sample_notices",
    "secret_refs",
]
