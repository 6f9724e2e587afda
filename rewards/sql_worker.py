"""The SQL sandbox's worker process: SQLite locked down, answering requests from `rewards.sql_sandbox`.

    python -I -S rewards/sql_worker.py       started by rewards.sql_watchdog, one per calling process

The worker reads requests on stdin and writes answers on stdout (`_serve`), holding the databases its
caller builds, by id. It is started as a script, isolated and without site (-I -S), so it imports
only the standard library. The caller's half: `rewards.sql_watchdog` kills this process when an
answer is late (the time bound), and `rewards.sql_sandbox`, the public API, turns answers into
QueryResults and re-exports `connect` and `split_statements` (errors as results, fresh state).

What the worker enforces (each tested in tests/test_rewards_sql_sandbox.py and, against over 100
hostile queries, tests/test_rewards_sql_hostile.py):
[D1] In memory only: the connection is ":memory:", temp tables and sorts stay in memory
     (temp_store=MEMORY), and no statement can open a file: ATTACH (also the one VACUUM and VACUUM INTO
     do) and DETACH are denied by the authorizer and the attached-database limit is 0. So no path or
     `file:` URI given in SQL reaches the disk. Databases held by the same worker cannot see each other.
[D2] No extensions: extension loading is off and the SQL functions `load_extension`, `readfile`,
     `writefile`, `edit` and `fts3_tokenizer` are denied.
[D3] PRAGMAs are denied except read-only schema queries (table_info, index_list, …), also as
     table-valued functions (pragma_database_list): a pragma could change process-wide settings.
[D4] Time, first layer (issue #13 item 4): a progress handler stops a statement (executing it and
     fetching its rows) at its deadline, checked every 1,000 VM steps, and the worker answers "time
     limit exceeded" itself. A context's statements share one deadline: a statement that starts
     after it is refused unrun. SQLite checks that handler only between VM steps, and one step can
     take seconds; the caller's kill bounds those (rewards.sql_watchdog [D1]).
[D5] Size: strings and blobs are capped at 20 kB and LIKE/GLOB patterns at 500 bytes (which keeps
     most single steps short, so the progress handler rather than a kill stops most queries); SQL
     text at 1 MB (a longer statement is refused, issue #13; it earned the 0.1·W type bonus before;
     the caller refuses it before sending it); a database at 64 MiB; SQLite's heap at 256 MiB and the
     worker's address space at 1 GiB (so a huge sort, temp table or result fails in the worker, not
     in the caller); an answer at 64 MiB; and at most `max_rows` rows (default 1,000, the original
     C's fetchmany) are fetched, `truncated` saying when more existed. SQLite's own limits on a
     statement's shape (expression depth, parser stack, compound terms, columns, arguments, 64
     tables in a join) also count as size refusals.
     Caveat: printf/format output over 20 kB is NULL, not an error (SQLite 3.40), so such a query runs.
     (Python 3.10 lacks Connection.setlimit: there the length caps do not apply; the kill, the page
     cap, the heap and address-space caps and the authorizer do.)
[D6] One statement per call: "SELECT 1; DROP TABLE t" is refused whole (a trailing ";" or comment is
     fine). A database context is split into statements by `split_statements`.
[D7] Errors are answers, never exceptions: SQLite's own errors come back as `error` (its message, which
     the execution reward grades), and everything the sandbox stops — time limit, denied action,
     size limit, several statements, text SQLite cannot take (NUL, lone surrogates) — comes back
     refused, "reason: message", the reason from the first fragment of `_REFUSALS` the message holds.
"""
from __future__ import annotations

import contextlib
import marshal
import os
import re
import signal
import sqlite3
import struct
import time

try:
    import resource
except ImportError:  # not POSIX
    resource = None

_CHECK_EVERY_STEPS = 1000  # [D4]
_MAX_PAGES = 16384  # × 4 KiB pages = 64 MiB
_HEAP_LIMIT_BYTES = 256 << 20  # [D5] SQLite's hard heap limit in the worker (process-wide there)
_WORKER_MEMORY_BYTES = 1 << 30  # [D5] the worker's address space (RLIMIT_AS)
_MAX_ANSWER_BYTES = 64 << 20  # [D5]
LIMITS = {  # [D1] [D5] (sqlite3 exposes these constants from Python 3.11)
    "SQLITE_LIMIT_ATTACHED": 0,
    "SQLITE_LIMIT_LENGTH": 20_000,
    "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": 500,
    "SQLITE_LIMIT_SQL_LENGTH": 1_000_000,
}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}  # [D2]
_READ_ONLY_PRAGMAS = {"table_info", "table_xinfo", "table_list", "index_list", "index_info",
                      "index_xinfo", "foreign_key_list"}  # [D3]
_REFUSALS = {  # message fragment -> what the sandbox stopped, first match wins [D7]
    "interrupted": "time limit exceeded",
    "not authorized": "denied by the sandbox",
    "authorization denied": "denied by the sandbox",
    "null character": "SQL text SQLite cannot take",
    "one statement at a time": "more than one statement",
    "too many attached": "denied by the sandbox",
    "too big": "size limit exceeded",
    "too large": "size limit exceeded",  # SQL text over 1 MB, expression tree depth [D5]
    "too many": "size limit exceeded",  # compound terms, columns, function arguments
    "stack overflow": "size limit exceeded",  # the parser's
    "at most 64 tables": "size limit exceeded",
    "pattern too complex": "size limit exceeded",
    "database or disk is full": "size limit exceeded",
    "out of memory": "size limit exceeded",
}


# ------------------------------------------------------------------ SQLite, locked down
def _authorize(action, arg1, arg2, db_name, source) -> int:
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):  # [D1]
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and str(arg2).lower() in _DENIED_FUNCTIONS:  # [D2]
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_PRAGMA and str(arg1).lower() not in _READ_ONLY_PRAGMAS:  # [D3]
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def connect() -> sqlite3.Connection:
    """A new, empty, locked-down in-memory database in this process [D1] [D2] [D3] [D5]; the worker's.

    Alone it does not hold the time limit (a single step can outlast it, rewards.sql_watchdog [D1]):
    use `rewards.sql_sandbox.build_database`.
    """
    conn = sqlite3.connect(":memory:", isolation_level=None)  # autocommit: no implicit transactions
    if hasattr(conn, "enable_load_extension"):  # absent when Python is built without it
        conn.enable_load_extension(False)
    for name, value in LIMITS.items():
        if hasattr(conn, "setlimit") and hasattr(sqlite3, name):
            conn.setlimit(getattr(sqlite3, name), value)
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(f"PRAGMA max_page_count = {_MAX_PAGES}")
    conn.set_authorizer(_authorize)  # after our own pragmas, before any outside SQL
    return conn


_TOKEN = re.compile(r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?"""  # quoted
                    r"|--[^\n]*|/\*.*?(?:\*/|\Z)|;|\w+|\s+|.", re.DOTALL)


def split_statements(script: str) -> list[str]:
    """Split SQL text into statements at ";" outside quotes and comments, in linear time [D6].

    A CREATE TRIGGER statement ends only at a ";" right after the word END, as in
    sqlite3.complete_statement (whose repeated use on a growing prefix would be quadratic).
    """
    statements, start, head, last_word, has_content = [], 0, [], "", False
    for token in _TOKEN.finditer(script):
        text = token.group()
        if text == ";":
            is_trigger = head[:2] == ["CREATE", "TRIGGER"] or (  # not CREATE TABLE trigger (...)
                head[:1] == ["CREATE"] and head[1:3] in (["TEMP", "TRIGGER"], ["TEMPORARY", "TRIGGER"]))
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


def _refused(why: str) -> tuple:
    return (), (), why, True, False  # the fields of a QueryResult


def _execute(conn: sqlite3.Connection, sql: str, deadline: float, max_rows: int) -> tuple:
    """One statement on `conn` until time.monotonic() = deadline [D4]; QueryResult's fields [D7]."""
    sql = sql.rstrip(" \t\r\n;")  # "SELECT 1;;" is one statement, not two
    if not sql.strip():
        return (), (), "empty statement", False, False
    if time.monotonic() > deadline:  # [D4] a context whose earlier statements used up its time
        return _refused("time limit exceeded: before the statement started")
    conn.set_progress_handler(lambda: time.monotonic() > deadline, _CHECK_EVERY_STEPS)  # [D4]
    try:
        cursor = conn.execute(sql)
        columns = tuple(d[0] for d in cursor.description or ())
        rows = cursor.fetchmany(max_rows + 1) if cursor.description else []
        return columns, tuple(rows[:max_rows]), None, False, len(rows) > max_rows
    except sqlite3.Error as exc:
        why = _refusal(str(exc))
        return (), (), f"{why}: {exc}" if why else str(exc), why is not None, False
    except MemoryError:  # [D5] rows past the worker's address space
        return _refused("size limit exceeded: out of memory")
    except Exception as exc:  # [D7] NUL characters, lone surrogates, the "one statement" Warning
        why = _refusal(str(exc)) or "SQL text SQLite cannot take"
        return _refused(f"{why}: {type(exc).__name__}: {exc}")
    finally:
        conn.set_progress_handler(None, 0)


def _build(sql_context: str, time_limit_s: float) -> tuple[sqlite3.Connection | None, str | None]:
    """(connection, None) holding `sql_context`, or (None, SqlContextError's message) [D4] [D6]."""
    conn, deadline = connect(), time.monotonic() + time_limit_s
    statements = split_statements(sql_context)
    for k, statement in enumerate(statements, 1):
        error = _execute(conn, statement, deadline, 0)[2]
        if error is not None:
            conn.close()
            shown = statement if len(statement) <= 200 else statement[:200] + "…"
            return None, f"sql_context statement {k} of {len(statements)} fails: {error}\n  {shown}"
    return conn, None


# ------------------------------------------------------------------ the pipe, and the request loop
HEADER = struct.Struct("<Q")  # a message on a pipe: its length, then marshal bytes


def send(fd: int, payload: bytes) -> None:
    """Write one message (HEADER, then `payload`) to `fd`; both processes use it."""
    data = memoryview(HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data):]


def _read_exact(fd: int, n: int) -> bytes | None:
    parts = []
    while n:
        part = os.read(fd, min(n, 1 << 20))
        if not part:
            return None  # the caller closed the pipe
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _serve() -> None:
    """The worker: answer requests from stdin on stdout until stdin closes [D4] [D5].

    A request is a tuple of operations, answered in order:
        ("open", id, sql_context, time_limit_s)         -> None, or SqlContextError's message
        ("exec", id, sql, time_limit_s, max_rows)       -> QueryResult's fields
        ("close", id)                                   -> no answer
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller, which then kills us
    if resource is not None:  # [D5]
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        cap = _WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(hard, _WORKER_MEMORY_BYTES)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    answers = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to stderr, never into an answer
    sqlite3.connect(":memory:").execute(f"PRAGMA hard_heap_limit = {_HEAP_LIMIT_BYTES}")  # [D5] process-wide
    databases: dict[int, sqlite3.Connection] = {}
    with contextlib.suppress(BrokenPipeError):  # the caller is gone
        _serve_requests(answers, databases)


def _serve_requests(answers: int, databases: dict[int, sqlite3.Connection]) -> None:
    send(answers, marshal.dumps("ready"))
    while (header := _read_exact(0, HEADER.size)) is not None:
        request = _read_exact(0, HEADER.unpack(header)[0])
        if request is None:
            return
        for kind, db_id, *args in marshal.loads(request):
            if kind == "close":
                conn = databases.pop(db_id, None)
                if conn is not None:
                    conn.close()
                continue
            try:
                if kind == "open":
                    conn, answer = _build(*args)
                    if conn is not None:
                        databases[db_id] = conn
                else:
                    sql, time_limit_s, max_rows = args
                    conn = databases.get(db_id)
                    answer = (_execute(conn, sql, time.monotonic() + time_limit_s, max_rows) if conn is not None
                              else _refused("database lost: no such database in this worker"))
                payload = marshal.dumps(answer)
                if len(payload) > _MAX_ANSWER_BYTES:  # [D5]
                    payload = marshal.dumps(_refused(f"size limit exceeded: answer over {_MAX_ANSWER_BYTES >> 20} MiB"))
            except MemoryError:  # [D5]
                databases.pop(db_id, None)
                payload = marshal.dumps("size limit exceeded: out of memory" if kind == "open"
                                        else _refused("size limit exceeded: out of memory"))
            send(answers, payload)


if __name__ == "__main__":
    _serve()
