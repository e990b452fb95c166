"""The files of one static GTFS feed, in a folder or a zip, read as CSV tables whose errors name file and line."""

from __future__ import annotations

import csv
import io
import zipfile
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING

from broadcaster.errors import NetworkDataError

if TYPE_CHECKING:
    from collections.abc import Iterator


class GtfsFiles:
    """The files of one feed, in a folder or a zip, each opened for streaming when asked for."""

    def __init__(self, source: Path, stack: ExitStack) -> None:
        self.source = source
        self._zip: zipfile.ZipFile | None = None
        self._members: frozenset[str] = frozenset()
        self._prefix = ""
        if source.is_dir():
            return
        if not source.is_file():
            raise NetworkDataError(source, "no such GTFS folder or zip file")
        try:
            self._zip = stack.enter_context(zipfile.ZipFile(source))
        except (zipfile.BadZipFile, OSError) as exc:
            raise NetworkDataError(source, f"not a readable zip file: {exc}") from exc
        self._members = frozenset(self._zip.namelist())
        self._prefix = _feed_folder(self._members)

    @contextmanager
    def table(self, name: str) -> Iterator[Table]:
        """A required file; NetworkDataError if the feed lacks it."""
        with self.optional_table(name) as table:
            if table is None:
                raise NetworkDataError(self.source, "required file is missing", file=name)
            yield table

    @contextmanager
    def optional_table(self, name: str) -> Iterator[Table | None]:
        text = self._open(name)
        if text is None:
            yield None
            return
        with text:
            yield Table(self, name, text)

    def _open(self, name: str) -> IO[str] | None:
        try:
            if self._zip is None:
                path = self.source / name
                if not path.is_file():
                    return None
                return open(path, encoding="utf-8-sig", newline="")  # closed by the caller's `with`
            member = self._prefix + name
            if member not in self._members:
                return None
            return io.TextIOWrapper(self._zip.open(member), encoding="utf-8-sig", newline="")
        # NotImplementedError: a compression method zipfile lacks (Deflate64 from some Windows tools).
        except (OSError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            raise NetworkDataError(self.source, f"cannot open: {exc}", file=name) from exc


def _feed_folder(members: frozenset[str]) -> str:
    """The zip folder holding the feed: the root, else the shallowest folder with routes.txt or stops.txt."""
    folders = {
        path.parent
        for path in map(PurePosixPath, members)
        if path.name in ("routes.txt", "stops.txt") and "__MACOSX" not in path.parts
    }
    if not folders:
        return ""
    best = min(folders, key=lambda folder: (len(folder.parts), str(folder)))
    return f"{best}/" if best.parts else ""


#: What reading a file can raise: bad CSV, bytes that are not UTF-8, I/O, a corrupt zip member.
_READ_ERRORS = (csv.Error, UnicodeDecodeError, OSError, zipfile.BadZipFile)


class Table:
    """One GTFS file being read: where its columns are, and its rows."""

    def __init__(self, gtfs: GtfsFiles, name: str, text: IO[str]) -> None:
        self.name = name
        self._source = gtfs.source
        self._reader = csv.reader(text)
        try:
            header = next(self._reader, [])
        except _READ_ERRORS as exc:
            raise self.error(f"unreadable: {exc}") from exc
        self.columns: dict[str, int] = {}
        for index, column in enumerate(header):
            self.columns.setdefault(column.strip(), index)
        self._width = len(header)

    @property
    def line(self) -> int:
        """The CSV line of the row just read (of its last line, for a quoted value spanning lines)."""
        return self._reader.line_num

    def require(self, *columns: str) -> tuple[int, ...]:
        """Positions of required columns; NetworkDataError naming line 1 if any is missing."""
        missing = [column for column in columns if column not in self.columns]
        if missing:
            raise self.error(f"missing required column(s): {', '.join(missing)}", line=1)
        return tuple(self.columns[column] for column in columns)

    def error(self, message: str, line: int | None = None) -> NetworkDataError:
        return NetworkDataError(
            self._source, message, file=self.name, line=self.line if line is None else line
        )

    def rows(self) -> Iterator[list[str]]:
        """Data rows, padded to the header's width so every column index is valid; blank lines skipped."""
        width = self._width
        try:
            for row in self._reader:
                if len(row) < width:
                    if not any(cell.strip() for cell in row):
                        continue
                    row.extend([""] * (width - len(row)))
                yield row
        except _READ_ERRORS as exc:
            raise self.error(f"unreadable: {exc}") from exc

    def cell(self, row: list[str], column: str) -> str:
        """The stripped value of an optional column, "" when the file lacks it."""
        index = self.columns.get(column)
        return "" if index is None else row[index].strip()

