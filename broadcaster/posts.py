"""The post: what render makes of a notice for one channel, what the outbox stores, and what a channel sends.

A value type with no behaviour of any stage, so that render (which makes posts), the outbox and budget policy
(which queue and merge them) and the channels (which send them) share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

#: The `kind` of a post that a posting budget merged from several queued ones (never merged again).
MERGED_KIND = "merged"
#: The `kind` of an outbox entry that takes down the posts of its notice (a correction's `delete_originals`).
DELETE_KIND = "delete"


@dataclass(frozen=True, slots=True)
class Post:
    """What a micro-blog channel posts for one outbox entry (the entry's payload, decoded).

    `text` is final: already fitted to the platform's length rule. `part`/`parts` number a thread that a long
    notice was split into. `reply_to_notice` names the notice whose first post this one answers (an update or
    all-clear of an alert), or None. `emergency` asks for prominence (Mastodon content warning). `brief` is the
    same notice rendered from its templates at the headline detail level, carried by a standalone post that a
    posting budget may merge with others (None on any other post, and on entries queued before it existed).
    `line_tags` and `station_tags` are the hashtags (without '#') of the lines and stations the post is about; when
    `tag_form` is set (``"#{}"``, or ``"#{}#"`` for a Weibo topic) they stand, so formatted, as the last line of
    `text`, else (webhook, Atom) only here. `brief` never carries them.
    """

    notice_id: str
    kind: str
    text: str
    language: str
    part: int = 0
    parts: int = 1
    reply_to_notice: str | None = None
    emergency: bool = False
    spoiler_text: str | None = None
    visibility: str | None = None
    #: Every language the text holds, `language` first (a post may join several); () means `language` alone.
    languages: tuple[str, ...] = ()
    brief: str | None = None
    line_tags: tuple[str, ...] = ()
    station_tags: tuple[str, ...] = ()
    tag_form: str | None = None

    @property
    def tags(self) -> tuple[str, ...]:
        return self.line_tags + self.station_tags

    @property
    def all_languages(self) -> tuple[str, ...]:
        return self.languages or (self.language,)

    @property
    def standalone(self) -> bool:
        """One post on its own: not a part of a thread, not an answer to an earlier post."""
        return self.parts == 1 and self.reply_to_notice is None

    def to_payload(self) -> bytes:
        fields: dict[str, object] = {
            "notice_id": self.notice_id, "kind": self.kind, "text": self.text, "language": self.language,
            "part": self.part, "parts": self.parts, "reply_to_notice": self.reply_to_notice,
            "emergency": self.emergency, "spoiler_text": self.spoiler_text, "visibility": self.visibility,
            "languages": list(self.all_languages),
        }
        if self.brief is not None:
            fields["brief"] = self.brief
        if self.tags:
            fields.update(line_tags=list(self.line_tags), station_tags=list(self.station_tags),
                          tag_form=self.tag_form)
        return orjson.dumps(fields)

    @classmethod
    def from_payload(cls, payload: bytes) -> Post:
        d = orjson.loads(payload)
        return cls(
            d["notice_id"], d["kind"], d["text"], d["language"], d["part"], d["parts"], d["reply_to_notice"],
            d["emergency"], d["spoiler_text"], d["visibility"],
            tuple(d.get("languages") or ()),  # absent from entries queued before it existed
            d.get("brief"),  # likewise
            tuple(d.get("line_tags") or ()), tuple(d.get("station_tags") or ()), d.get("tag_form"),  # likewise
        )
