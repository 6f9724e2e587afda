"""A small SQLite sandbox for running untrusted SQL: model outputs, and dataset contexts and gold queries.

    conn = build_database(sql_context)            fresh in-memory database, or SqlContextError
    result = execute_sql(conn, sql)               QueryResult(columns, rows, error, refused, truncated)
    result = run_sql(sql_context, sql)            both, on a database used once and closed

What the sandbox guarantees (each tested in tests/test_rewards_sql_sandbox.py):
[D1] In memory only: the connection is ":memory:", temp tables and sorts stay in memory
     (temp_store=MEMORY), and no statement can open a file: ATTACH (also the one VACUUM INTO does)
     and DETACH are denied by the authorizer and the attached-database limit is 0. So no path or
     `file:` URI given in SQL reaches the disk.
[D2] No extensions: extension loading is off and the SQL functions `load_extension`, `readfile`,
     `writefile`, `edit` and `fts3_tokenizer` are denied.
[D3] PRAGMAs are denied except read-only schema queries (table_info, index_list, …): a pragma could
     otherwise change process-wide settings.
[D4] Time: a progress handler aborts a statement (including fetching its rows) once it has run for
     `time_limit_s` (default 1 s), checked every 1,000 SQLite VM steps. One VM step cannot be cut
     short, and some cost the product of their operands' lengths (instr, replace, trim, LIKE, GLOB):
     with 1 MB strings one instr() took 10 s. So strings, blobs and rows are capped at 20 kB and
     LIKE/GLOB patterns at 500 bytes, which keeps any single step under ~0.15 s (measured: trim, the
     worst). Also SQL text ≤ 1 MB, database ≤ 64 MiB, and at most `max_rows` rows (default 1,000, the
     original C's fetchmany) are fetched; `truncated` says when more existed. A query that runs close
     to the limit may be refused on a slower machine and not on a faster one. (Python 3.10 lacks
     Connection.setlimit: there only the time limit, the page cap and the authorizer apply.)
[D5] One statement per call: "SELECT 1; DROP TABLE t" is refused whole (a trailing ";" or comment is
     fine). A database context is split into statements by `split_statements`.
[D6] Errors never escape `execute_sql`: SQLite's own errors come back as `error` (its message, which
     the execution reward grades), and everything the sandbox stops — time limit, denied action,
     size limit, several statements, text SQLite cannot take (NUL, lone surrogates) — comes back with
     `refused=True`, which the rewards score 0.
[D7] Fresh state: `build_database` returns a new database each call, so nothing one query writes is
     seen by another (in particular, a generated DELETE cannot change the gold result).
"""
from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass

DEFAULT_TIME_LIMIT_S = 1.0
DEFAULT_BUILD_TIME_LIMIT_S = 5.0
DEFAULT_MAX_ROWS = 1000
_CHECK_EVERY_STEPS = 1000
_MAX_PAGES = 16384  # × 4 KiB pages = 64 MiB
_LIMITS = {  # [D1] [D4] (sqlite3 exposes these constants from Python 3.11)
    "SQLITE_LIMIT_ATTACHED": 0,
    "SQLITE_LIMIT_LENGTH": 20_000,
    "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": 500,
    "SQLITE_LIMIT_SQL_LENGTH": 1_000_000,
}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}  # [D2]
_READ_ONLY_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info",
                      "index_xinfo", "foreign_key_list"}  # [D3]
_REFUSALS = {  # message fragment -> what the sandbox stopped [D6]
    "interrupted": "time limit exceeded",
    "not authorized": "denied by the sandbox",
    "authorization denied": "denied by the sandbox",
    "null character": "SQL text SQLite cannot take",
    "one statement at a time": "more than one statement",
    "too big": "size limit exceeded",
    "pattern too complex": "size limit exceeded",
    "database or disk is full": "size limit exceeded",
    "out of memory": "size limit exceeded",
    "too many attached": "denied by the sandbox",
}


class SqlContextError(ValueError):
    """The database context (CREATE TABLE + INSERT statements) does not build."""


@dataclass(frozen=True)
class QueryResult:
    """The outcome of one statement.

    columns: names from cursor.description (empty for statements that return no rows).
    rows: at most max_rows tuples, in the order SQLite returned them.
    error: None on success; else SQLite's message or the sandbox's reason [D6].
    refused: True when the statement did not run for a reason other than an SQL error of its own
        (a sandbox limit, or in `run_sql` a context that does not build); rewards score it 0.
    truncated: True when the statement had more than max_rows rows.
    """
    columns: tuple[str, ...] = ()
    rows: tuple[tuple, ...] = ()
    error: str | None = None
    refused: bool = False
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def _authorize(action, arg1, arg2, db_name, source) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):  # [D1]
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _DENIED_FUNCTIONS:  # [D2]
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and str(arg1).lower() not in _READ_ONLY_PRAGMAS:  # [D3]
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def connect() -> sqlite3.Connection:
    """A new, empty, locked-down in-memory database [D1] [D2] [D3] [D4]."""
    conn = sqlite3.connect(":memory:", isolation_level=None)  # autocommit: no implicit transactions
    if hasattr(conn, "enable_load_extension"):  # absent when Python is built without it
        conn.enable_load_extension(False)
    for name, value in _LIMITS.items():
        if hasattr(conn, "setlimit") and hasattr(sqlite3, name):
            conn.setlimit(getattr(sqlite3, name), value)
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(f"PRAGMA max_page_count = {_MAX_PAGES}")
    conn.set_authorizer(_authorize)  # after our own pragmas, before any outside SQL
    return conn


_TOKEN = re.compile(r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?"""  # quoted
                    r"|--[^\n]*|/\*.*?(?:\*/|\Z)|;|\w+|\s+|.", re.DOTALL)


def split_statements(script: str) -> list[str]:
    """Split SQL text into statements at ";" outside quotes and comments, in linear time [D5].

    A CREATE TRIGGER statement ends only at a ";" right after the word END, as in
    sqlite3.complete_statement (whose repeated use on a growing prefix would be quadratic).
    """
    statements, start, head, last_word, has_content = [], 0, [], "", False
    for token in _TOKEN.finditer(script):
        text = token.group()
        if text == ";":
            is_trigger = head[:1] == ["CREATE"] and "TRIGGER" in head[1:3]
            if is_trigger and last_word != "END":
                continue
            if has_content:
                statements.append(script[start:token.end()].strip())
            start, head, last_word, has_content = token.end(), [], "", False
        elif text[0].isspace() or text.startswith(("--", "/*")):
            continue  # whitespace and comments change nothing
        else:
            has_content = True
            last_word = text.upper() if (text[0].isalnum() or text[0] == "_") else ""
            if last_word and len(head) < 3:
                head.append(last_word)
    if has_content:
        statements.append(script[start:].strip())
    return statements


def _refusal(message: str) -> str | None:
    lowered = message.lower()
    return next((why for fragment, why in _REFUSALS.items() if fragment in lowered), None)


def execute_sql(conn: sqlite3.Connection, sql: str, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                max_rows: int = DEFAULT_MAX_ROWS) -> QueryResult:
    """Run one statement on `conn` under the sandbox's limits; never raises [D4] [D5] [D6].

    Args:
        conn: a connection from `connect` / `build_database`.
        sql: one SQL statement (a trailing ";" is fine).
        time_limit_s: wall-clock limit for executing the statement and fetching its rows.
        max_rows: rows fetched at most.
    Returns:
        QueryResult.
    """
    if not isinstance(sql, str) or not sql.strip(" \t\r\n;"):
        return QueryResult(error="empty statement")
    sql = sql.rstrip(" \t\r\n;")  # "SELECT 1;;" is one statement, not two
    deadline = time.monotonic() + time_limit_s
    conn.set_progress_handler(lambda: time.monotonic() > deadline, _CHECK_EVERY_STEPS)
    try:
        cursor = conn.execute(sql)
        columns = tuple(d[0] for d in cursor.description or ())
        rows = cursor.fetchmany(max_rows + 1) if cursor.description else []
        return QueryResult(columns, tuple(map(tuple, rows[:max_rows])), truncated=len(rows) > max_rows)
    except sqlite3.Error as exc:
        why = _refusal(str(exc))
        return QueryResult(error=f"{why}: {exc}" if why else str(exc), refused=why is not None)
    except Exception as exc:  # [D6] NUL characters, lone surrogates, the "one statement" Warning
        why = _refusal(str(exc)) or "SQL text SQLite cannot take"
        return QueryResult(error=f"{why}: {type(exc).__name__}: {exc}", refused=True)
    finally:
        conn.set_progress_handler(None, 0)


def build_database(sql_context: str, *, time_limit_s: float = DEFAULT_BUILD_TIME_LIMIT_S) -> sqlite3.Connection:
    """A fresh sandboxed database holding `sql_context` (CREATE TABLE + INSERT statements) [D7].

    Args:
        sql_context: the example's schema and data, statements separated by ";".
        time_limit_s: limit for each statement of the context.
    Raises:
        SqlContextError: naming the first statement that fails and SQLite's message.
    """
    if not isinstance(sql_context, str):
        raise SqlContextError(f"sql_context must be a string, got {type(sql_context).__name__}")
    conn = connect()
    statements = split_statements(sql_context)
    for k, statement in enumerate(statements, 1):
        result = execute_sql(conn, statement, time_limit_s=time_limit_s, max_rows=0)
        if not result.ok:
            conn.close()
            shown = statement if len(statement) <= 200 else statement[:200] + "…"
            raise SqlContextError(f"sql_context statement {k} of {len(statements)} fails: "
                                  f"{result.error}\n  {shown}")
    return conn


def run_sql(sql_context: str, sql: str, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
            max_rows: int = DEFAULT_MAX_ROWS) -> QueryResult:
    """`execute_sql` on a database built from `sql_context` for this call only; never raises.

    A context that does not build gives `error="context: …"` with refused=True: the query never ran,
    so its SQLite message must not be graded (rewards score such rows 0).
    """
    try:
        conn = build_database(sql_context)
    except SqlContextError as exc:
        return QueryResult(error=f"context: {exc}", refused=True)
    try:
        return execute_sql(conn, sql, time_limit_s=time_limit_s, max_rows=max_rows)
    finally:
        conn.close()


def table_contents(conn: sqlite3.Connection, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                   max_rows: int = 100_000) -> dict[str, QueryResult]:
    """Every table's rows (name → result of `SELECT * FROM name`), to compare database states."""
    names = execute_sql(conn, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    return {name: execute_sql(conn, 'SELECT * FROM "' + name.replace('"', '""') + '"',
                              time_limit_s=time_limit_s, max_rows=max_rows)
            for (name,) in names.rows}
