"""Every SQL statement lives in a storage module (docs/design.md, "Storage"), and only storage modules touch the
database's connection.

The storage modules are `STORAGE_MODULES`; every other module under broadcaster/ calls their named methods and
holds no SQL. The rule, checked on each module's syntax tree (so comments never count):

- no call of a method named `execute`, `executemany` or `executescript` (the sqlite3 API, whatever the receiver);
- no string constant (an f-string read whole) that reads as an SQL statement: an upper-case keyword as a whole
  word followed by the shape of a statement: `SELECT ... FROM`, `INSERT [OR x] INTO`, `REPLACE INTO`,
  `UPDATE <table> SET`, `DELETE FROM`, `CREATE [UNIQUE|TEMP] TABLE|INDEX|TRIGGER|VIEW`, `DROP TABLE|...`,
  `ALTER TABLE`, `PRAGMA <name>`, `BEGIN [IMMEDIATE|...]`/`COMMIT`/`ROLLBACK` alone.

A second rule: no other module reads an attribute named `conn` (`Database.conn`, the one SQLite connection): reads
go through the storage modules' functions, which take the `Database`; writes get the connection a transaction
hands out (`with db.transaction() as conn`) and pass it back to them, which never names `.conn`.

Upper case and the statement's shape are what tell SQL from prose: a docstring that says "select the due rows"
or "the update is sent", and an HTTP method `"DELETE"`, are not statements. Docstrings are skipped as well, so
one may quote a query when explaining it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "broadcaster"

#: The modules that may hold SQL and use the database's connection (paths relative to broadcaster/).
STORAGE_MODULES = frozenset({
    "store/database.py", "store/state.py", "store/feeds.py", "store/retained.py", "store/meta.py",
    "store/sqlite_steps.py", "store/postgres.py", "store/postgres_steps.py", "store/transfer.py",
    "outbox.py", "outbox_history.py", "desk.py", "idempotency.py",
    "ha/lease.py",  # the leader lease's own statements, on its own connection (docs/design.md)
})

_SQL_CALLS = frozenset({"execute", "executemany", "executescript"})
_SQL = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b"
    r"|\bINSERT\s+(?:OR\s+[A-Z]+\s+)?INTO\b"
    r"|\bREPLACE\s+INTO\b"
    r"|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b"
    r"|\bCREATE\s+(?:UNIQUE\s+|TEMP\s+|TEMPORARY\s+)?(?:TABLE|INDEX|TRIGGER|VIEW)\b"
    r"|\bDROP\s+(?:TABLE|INDEX|TRIGGER|VIEW)\b"
    r"|\bALTER\s+TABLE\b"
    r"|\bPRAGMA\s+\w+"
    r"|^\s*(?:BEGIN(?:\s+(?:IMMEDIATE|EXCLUSIVE|DEFERRED))?|COMMIT|ROLLBACK)\s*;?\s*$"
)


def reads_as_sql(text: str) -> bool:
    return _SQL.search(text) is not None


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of the module, its classes and functions."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def sql_in(source: str) -> list[str]:
    """Where `source` holds SQL by the rule above: one "line N: what" each."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _SQL_CALLS:
            found.append(f"line {node.lineno}: .{node.func.attr}(...)")
        elif isinstance(node, ast.JoinedStr):  # an f-string is read whole, its replacement fields as "{}"
            skip.update(id(v) for v in node.values)
            text = "".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values)
            if reads_as_sql(text):
                found.append(f"line {node.lineno}: {text[:60]!r}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
              and reads_as_sql(node.value)):
            found.append(f"line {node.lineno}: {node.value[:60]!r}")
    return found


def connection_uses_in(source: str) -> list[str]:
    """Where `source` reads an attribute named `conn` (the database's connection): one "line N: .conn" each."""
    return [f"line {node.lineno}: .conn" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and node.attr == "conn"]


def _outside_storage(find: Callable[[str], list[str]]) -> dict[str, list[str]]:
    """Each module under broadcaster/ outside `STORAGE_MODULES` where `find` finds something, with what."""
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 30  # the scan found the package
    return {
        path.relative_to(PACKAGE).as_posix(): found
        for path in modules
        if path.relative_to(PACKAGE).as_posix() not in STORAGE_MODULES
        and (found := find(path.read_text(encoding="utf-8")))
    }


def test_no_module_outside_storage_holds_sql() -> None:
    offenders = _outside_storage(sql_in)
    assert offenders == {}, "SQL outside the storage modules (move it behind store/outbox/desk/idempotency)"


def test_no_module_outside_storage_touches_the_database_connection() -> None:
    offenders = _outside_storage(connection_uses_in)
    assert offenders == {}, "db.conn outside the storage modules (call a storage function that takes the Database)"


def test_a_connection_use_is_found_in_any_form() -> None:
    source = '''
def f(db, b):
    rows = load_feeds(db.conn)  # passed on
    b.db.conn.execute("x")  # reached through an attribute
    with db.transaction() as conn:  # the transaction's connection: fine
        save_feed(conn, record)
'''
    assert connection_uses_in(source) == ["line 3: .conn", "line 4: .conn"]


def test_every_storage_module_exists_and_holds_sql() -> None:
    # A storage module renamed or emptied would leave its name here allowing nothing: keep the list true.
    for name in STORAGE_MODULES:
        assert sql_in((PACKAGE / name).read_text(encoding="utf-8")), name


def test_the_rule_tells_statements_from_prose() -> None:
    statements = [
        "SELECT status, remote_id FROM outbox WHERE key = ?",
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        "INSERT INTO requests (created_at, action, body) VALUES (?, ?, ?)",
        "UPDATE outbox SET status = ? WHERE key = ?",
        "DELETE FROM retained WHERE topic = ?",
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON idempotency BEGIN SELECT RAISE(FAIL, 'x'); END",
        "PRAGMA journal_mode=WAL",
        "BEGIN IMMEDIATE",
        "COMMIT",
    ]
    prose = [
        "DELETE",  # an HTTP method
        "select the rows that are due from the outbox",
        "the UPDATE notice goes out; an INSERT is never retried",
        "operator:alerts",
        "could not record retained publications: %s",
        "Commit the new state",
    ]
    assert [s for s in statements if not reads_as_sql(s)] == []
    assert [p for p in prose if reads_as_sql(p)] == []


def test_calls_and_constants_are_found_but_docstrings_and_comments_are_not() -> None:
    source = '''
"""A module that says SELECT x FROM y in its docstring."""
def f(db):
    """UPDATE outbox SET status = 'sent' is explained here."""
    # DELETE FROM outbox, in a comment
    db.conn.execute(QUERY)
    return f"SELECT {COLUMNS} FROM outbox WHERE key = ?"
'''
    found = sql_in(source)
    assert sorted(line.split(":")[0] for line in found) == ["line 6", "line 7"]
    assert any(".execute(...)" in line for line in found)
    assert any("FROM outbox WHERE key" in line for line in found)


# -- Import directions (docs/design.md, "Layers") ----------------------------------------------------------------

#: Each module's layer, by dotted name under `broadcaster` (the longest matching prefix wins). A module imports
#: only from its own layer or those below it: the pipeline's stages sit on the shared values below them, render
#: knows nothing of storage or channels, the channels know the outbox but not who drains it, and only the
#: composition root and the command line know everything.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    # Values and utilities every layer may use. `text` cleans feed text and measures it with `render.length`,
    # a leaf with no imports of ours; `posts` is the post value type (render's output, the channels' input).
    ("foundation", frozenset({
        "broadcaster", "errors", "model", "contract", "vocabulary", "resources", "secretfiles", "scheduler",
        "lock", "webserver", "text", "render.length", "posts", "ha", "ha.role",
    })),
    # Read by every stage: the operator's configuration (models only, no behaviour of other layers).
    ("config", frozenset({"config"})),
    # The pure pipeline stages before rendering, and the budget's arithmetic.
    ("domain", frozenset({"feeds", "state", "compose", "budget"})),
    ("render", frozenset({"render"})),
    # What the pipeline commits and reads back: the database, the outbox, MQTT payloads, metrics.
    ("storage", frozenset({"store", "outbox", "outbox_history", "payloads", "retained", "operator", "idempotency",
                           "metrics", "status", "ha.lease"})),
    ("channels", frozenset({"channels"})),
    # The parts that drive delivery and publishing; they know the channels only by their protocol (below).
    ("delivery", frozenset({"dispatcher", "publisher", "desk"})),
    # The pipeline's parts: a notice into outbox rows, the one commit path, and the triggers that use it.
    ("parts", frozenset({"messages", "pipeline", "poller", "operator_desk", "digests"})),
    ("pipeline", frozenset({"service", "preview", "checking"})),
    ("edge", frozenset({"runner", "admin", "public", "cli", "demo", "__main__"})),
)

#: Further rules within the order: (importer prefix, what it may import of a package: these modules only).
ONLY_FROM: tuple[tuple[str, str, frozenset[str]], ...] = (
    # The dispatcher drives any channel through the protocol and its capabilities, never a concrete channel.
    ("dispatcher", "channels", frozenset({"channels.base"})),
)


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> int:
    """The index in LAYERS of a dotted module name relative to broadcaster/ ("" is the package itself)."""
    name = module or "broadcaster"
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _matches(name, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    if best is None:
        raise LookupError(f"broadcaster.{module} is in no layer: add it to LAYERS")
    return best[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, package: str) -> set[str]:
    """The modules of ours that `source` imports (anywhere: top level, TYPE_CHECKING, inside functions), dotted
    relative to broadcaster/. `from broadcaster.x import y` counts as x.y when x/y is a module of ours."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if _matches(a.name, "broadcaster"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if not _matches(base, "broadcaster"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").exists() or (
                    ROOT / Path(*sub.split(".")) / "__init__.py").exists()
                found.add(sub if is_module else base)
    return {name.removeprefix("broadcaster").removeprefix(".") for name in found}


def layering_violations() -> list[str]:
    out: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        package = "broadcaster." + module if path.name == "__init__.py" else "broadcaster." + module.rpartition(".")[0]
        mine = layer_of(module)
        for imported in sorted(imports_of(path.read_text(encoding="utf-8"), package.rstrip("."))):
            theirs = layer_of(imported)
            if theirs > mine:
                out.append(f"{module or 'broadcaster'} ({LAYERS[mine][0]}) imports {imported} ({LAYERS[theirs][0]})")
            for importer, target, allowed in ONLY_FROM:
                if _matches(module, importer) and _matches(imported, target) and imported not in allowed:
                    out.append(f"{module} imports {imported}: only {sorted(allowed)} of {target}")
    return out


def test_imports_point_down_the_layers() -> None:
    violations = layering_violations()
    assert violations == [], "imports against the layers:\n" + "\n".join(violations)


def test_every_module_has_a_layer() -> None:
    modules = [_module_name(p) for p in sorted(PACKAGE.rglob("*.py"))]
    assert len(modules) > 30
    for module in modules:
        layer_of(module)  # raises for a module no layer names


def test_the_import_reader_sees_every_form() -> None:
    source = '''
import broadcaster.render.fit
from broadcaster import desk, __version__
from broadcaster.channels.base import Post
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from broadcaster.outbox import OutboxEntry
def f():
    from . import fit
'''
    assert imports_of(source, "broadcaster.render") == {
        "render.fit", "desk", "", "channels.base", "outbox"}
    assert layer_of("render.posts") > layer_of("render.length")
    assert layer_of("channels.mqtt") > layer_of("outbox") > layer_of("render.posts")
