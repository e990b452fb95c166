"""Where the files that ship with broadcaster (templates, example config, sample feeds) are on this install."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The shipped folder `name` ("templates" or "config").

    A wheel carries copies under ``broadcaster/_data``; a source checkout (and an editable install) uses the
    folders at the top of the repository, which are the originals.
    """
    bundled = _PACKAGE / "_data" / name
    if bundled.is_dir():
        return bundled
    return _PACKAGE.parent / name
