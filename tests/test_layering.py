"""Every SQL statement lives in a storage module (docs/design.md, "Storage").

The storage modules are `STORAGE_MODULES`; every other module under broadcaster/ calls their named methods and
holds no SQL. The rule, checked on each module's syntax tree (so comments never count):

- no call of a method named `execute`, `executemany` or `executescript` (the sqlite3 API, whatever the receiver);
- no string constant (an f-string read whole) that reads as an SQL statement: an upper-case keyword as a whole
  word followed by the shape of a statement: `SELECT ... FROM`, `INSERT [OR x] INTO`, `REPLACE INTO`,
  `UPDATE <table> SET`, `DELETE FROM`, `CREATE [UNIQUE|TEMP] TABLE|INDEX|TRIGGER|VIEW`, `DROP TABLE|...`,
  `ALTER TABLE`, `PRAGMA <name>`, `BEGIN [IMMEDIATE|...]`/`COMMIT`/`ROLLBACK` alone.

Upper case and the statement's shape are what tell SQL from prose: a docstring that says "select the due rows"
or "the update is sent", and an HTTP method `"DELETE"`, are not statements. Docstrings are skipped as well, so
one may quote a query when explaining it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "broadcaster"

#: The modules that may hold SQL (paths relative to broadcaster/).
STORAGE_MODULES = frozenset({"store.py", "outbox.py", "desk.py", "idempotency.py"})

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


def test_no_module_outside_storage_holds_sql() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 30  # the scan found the package
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for path in modules
        if str(path.relative_to(PACKAGE)) not in STORAGE_MODULES
        and (found := sql_in(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}, "SQL outside the storage modules (move it behind store/outbox/desk/idempotency)"


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
