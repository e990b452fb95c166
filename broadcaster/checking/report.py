"""What `broadcaster check` found: the sample posts, the digests' slots, the problems and the online verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Verdict:
    """One thing the online check tried: a feed, the broker or a channel."""

    what: str  # "feed ops", "broker mqtt://...", "channel masto"
    ok: bool
    detail: str  # what it found, or the failure's one line (never a secret)


@dataclass
class CheckReport:
    config: Path
    lines: int = 0
    stations: int = 0
    feeds: int = 0
    rendered: list[tuple[str, str, str]] = field(default_factory=list)  # kind, language, text
    #: Configuration problems (templates, files, secrets): exit status 2.
    problems: list[str] = field(default_factory=list)
    #: Each digest's upcoming slots, one line each.
    digests: list[str] = field(default_factory=list)
    #: The online checks, in config order; empty with --offline.
    verdicts: list[Verdict] = field(default_factory=list)
    #: How many of `problems` the offline part found (the sample posts' verdict counts those only).
    offline_problems: int = 0
    #: Each channel's filter, and where each sample notice goes, one line each.
    routes: list[str] = field(default_factory=list)
    #: What the channel filters leave out (a line no channel posts alerts about): worth a look, not an error.
    warnings: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """Run-time failures (a feed, the broker, a channel), one line each: exit status 1."""
        return [v.detail for v in self.verdicts if not v.ok]

    def as_text(self) -> str:
        out = [f"{self.config}: {self.lines} lines, {self.stations} stations, {self.feeds} feeds"]
        for kind, lang, text in self.rendered:
            out.append(f"--- {kind} [{lang}]")
            out.append(text)
        offline = self.problems[: self.offline_problems]  # the online part's problems are not the samples'
        verdict = "OK" if not offline else f"{len(offline)} problem(s)"
        out.append(f"--- {len(self.rendered)} sample posts rendered: {verdict}")
        out += self.routes
        out += [f"warning: {warning}" for warning in self.warnings]
        out += self.digests
        out += [f"{v.what}: ok ({v.detail})" if v.ok else f"{v.what}: FAILED" for v in self.verdicts]
        if len(self.problems) > len(offline) or self.failures:
            out.append(f"--- {len(self.problems)} problem(s), {len(self.failures)} failure(s), one line each on stderr")
        return "\n".join(out)

    def as_dict(self) -> dict[str, object]:
        return {
            "config": str(self.config), "lines": self.lines, "stations": self.stations, "feeds": self.feeds,
            "rendered": [{"kind": k, "language": lang, "text": t} for k, lang, t in self.rendered],
            "digests": self.digests, "routes": self.routes, "warnings": self.warnings,
            "checks": [{"what": v.what, "ok": v.ok, "detail": v.detail} for v in self.verdicts],
            "problems": self.problems, "failures": self.failures, "ok": not self.problems and not self.failures,
        }
