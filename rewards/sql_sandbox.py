"""A small SQLite sandbox for running untrusted SQL: model outputs, and dataset contexts and gold queries.

    db = build_database(sql_context)              fresh in-memory database, or SqlContextError
    result = execute_sql(db, sql)                 QueryResult(columns, rows, error, refused, truncated)
    result = run_sql(sql_context, sql)            both, on a database used once and closed

Every statement runs in a worker process (POSIX), one per calling process, started on first use: the
caller can kill it, which is the only way to stop some single SQLite steps in time [D4]. `connect` and
`_execute` are the worker's half; `build_database`, `execute_sql`, `run_sql` and `table_contents` the
caller's, which sends the worker requests over a pipe and waits for each answer under a deadline.

What the sandbox guarantees (each tested in tests/test_rewards_sql_sandbox.py and, against over 100
hostile queries, tests/test_rewards_sql_hostile.py):
[D1] In memory only: the connection is ":memory:", temp tables and sorts stay in memory
     (temp_store=MEMORY), and no statement can open a file: ATTACH (also the one VACUUM and VACUUM INTO
     do) and DETACH are denied by the authorizer and the attached-database limit is 0. So no path or
     `file:` URI given in SQL reaches the disk. Databases held by the same worker cannot see each other.
[D2] No extensions: extension loading is off and the SQL functions `load_extension`, `readfile`,
     `writefile`, `edit` and `fts3_tokenizer` are denied.
[D3] PRAGMAs are denied except read-only schema queries (table_info, index_list, …), also as
     table-valued functions (pragma_database_list): a pragma could change process-wide settings.
[D4] Time (issue #13 item 4): a statement (executing it and fetching its rows) gets `time_limit_s`
     (default 1 s) of wall-clock time, and the caller has its answer within time_limit_s + 0.1 s
     (plus ~40 ms to start a worker when the query before killed one), whatever SQLite does. Two layers: in the worker a progress handler
     stops the statement at the limit (checked every 1,000 VM steps) and the worker answers "time
     limit exceeded" itself. But SQLite checks that handler, and `interrupt()`, only between VM
     steps, and one step can take seconds: printf('%.*c', 2147483647, 'x') loops 2^31 times inside
     one step (6.7 s here), 100 trim()s of 20 kB strings run as one stretch without a check (4.9 s),
     and an interrupt() from a watchdog thread at 1 s returned after 16.8 s and 4.1 s on those. So
     when no answer has come _KILL_GRACE_S = 0.1 s after the limit, the caller kills the worker
     (SIGKILL) and starts a new one (~30 ms, paid by the next query): the statement is refused with
     "time limit exceeded", and every database that worker held is lost (its handle answers refused
     "database lost"; `run_sql` never reuses one). Measured on the hostile suite with a 1 s limit,
     2 cores: at most 1.22 s idle, 1.26 s with one core and 1.33 s with both kept busy by others.
     The limit is wall-clock: a query near it may be refused on a loaded machine and not on an idle
     one, and a machine too loaded to start a Python process in 0.4 s can break the bound. Building
     a context gets one limit for the whole context (default 5 s; before, 5 s for each statement).
[D5] Size: strings and blobs are capped at 20 kB and LIKE/GLOB patterns at 500 bytes (which keeps
     most single steps short, so the progress handler rather than a kill stops most queries); SQL
     text at 1 MB (a longer statement is refused, issue #13; it earned the 0.1·W type bonus before);
     a database at 64 MiB; SQLite's heap at 256 MiB and the worker's address space at 1 GiB (so a
     huge sort, temp table or result fails in the worker, not in the caller); an answer at 64 MiB;
     and at most `max_rows` rows (default 1,000, the original C's fetchmany) are fetched, `truncated`
     saying when more existed. SQLite's own limits on a statement's shape (expression depth, parser
     stack, compound terms, columns, arguments, 64 tables in a join) also count as size refusals.
     Caveat: printf/format output over 20 kB is NULL, not an error (SQLite 3.40), so such a query runs.
     (Python 3.10 lacks Connection.setlimit: there the length caps do not apply; the kill, the page
     cap, the heap and address-space caps and the authorizer do.)
[D6] One statement per call: "SELECT 1; DROP TABLE t" is refused whole (a trailing ";" or comment is
     fine). A database context is split into statements by `split_statements`.
[D7] Errors never escape `execute_sql`: SQLite's own errors come back as `error` (its message, which
     the execution reward grades), and everything the sandbox stops — time limit, denied action,
     size limit, several statements, text SQLite cannot take (NUL, lone surrogates), a worker that
     died — comes back with `refused=True`, which the rewards score 0 (issue #13: "a query stopped for
     time or size scores 0"). Only a worker that cannot start at all raises (RuntimeError).
[D8] Fresh state: `build_database` returns a new database each call, so nothing one query writes is
     seen by another (in particular, a generated DELETE cannot change the gold result). The worker
     is one per process (a forked child starts its own), started on first use and killed at exit,
     and serves one request at a time (a lock). Its cost on ordinary queries, measured (medians, in
     process before → worker): run_sql of a 20-row context 0.33 → 0.37 ms, of an empty one 0.03 →
     0.09 ms, execute_sql on a built database 0.004 → 0.06 ms (one round trip through the pipe),
     sql_execution 0.35 → 0.40 ms a completion, execution_match of a write 1.1 → 2.0 ms (12 trips).
"""
from __future__ import annotations

import atexit
import itertools
import marshal
import os
import re
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass

try:
    import resource
except ImportError:  # not POSIX
    resource = None

DEFAULT_TIME_LIMIT_S = 1.0
DEFAULT_BUILD_TIME_LIMIT_S = 5.0
DEFAULT_MAX_ROWS = 1000
_CHECK_EVERY_STEPS = 1000
_KILL_GRACE_S = 0.1  # [D4] answer time the worker gets after the limit before it is killed
_START_TIMEOUT_S = 30.0  # a worker that has not said "ready" by then is broken: raise
_MAX_PAGES = 16384  # × 4 KiB pages = 64 MiB
_HEAP_LIMIT_BYTES = 256 << 20  # [D5] SQLite's hard heap limit in the worker (process-wide there)
_WORKER_MEMORY_BYTES = 1 << 30  # [D5] the worker's address space (RLIMIT_AS)
_MAX_ANSWER_BYTES = 64 << 20  # [D5]
_LIMITS = {  # [D1] [D5] (sqlite3 exposes these constants from Python 3.11)
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


class SqlContextError(ValueError):
    """The database context (CREATE TABLE + INSERT statements) does not build."""


@dataclass(frozen=True)
class QueryResult:
    """The outcome of one statement.

    columns: names from cursor.description (empty for statements that return no rows).
    rows: at most max_rows tuples, in the order SQLite returned them.
    error: None on success; else SQLite's message or the sandbox's reason [D7].
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


# ------------------------------------------------------------------ in the worker process: SQLite
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

    Alone it does not hold the time limit (a single step can outlast it, [D4]): use `build_database`.
    """
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
    """Split SQL text into statements at ";" outside quotes and comments, in linear time [D6].

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


def _refused(why: str) -> tuple:
    return (), (), why, True, False  # the fields of a QueryResult


def _execute(conn: sqlite3.Connection, sql: str, deadline: float, max_rows: int) -> tuple:
    """One statement on `conn` until time.monotonic() = deadline [D4]; QueryResult's fields [D7]."""
    sql = sql.rstrip(" \t\r\n;")  # "SELECT 1;;" is one statement, not two
    if not sql.strip():
        return (), (), "empty statement", False, False
    if time.monotonic() > deadline:  # a context whose earlier statements used up its time
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
    """(connection, None) holding `sql_context`, or (None, SqlContextError's message) [D4] [D8]."""
    conn, deadline = connect(), time.monotonic() + time_limit_s
    statements = split_statements(sql_context)
    for k, statement in enumerate(statements, 1):
        error = _execute(conn, statement, deadline, 0)[2]
        if error is not None:
            conn.close()
            shown = statement if len(statement) <= 200 else statement[:200] + "…"
            return None, f"sql_context statement {k} of {len(statements)} fails: {error}\n  {shown}"
    return conn, None


_HEADER = struct.Struct("<Q")  # a message on a pipe: its length, then marshal bytes


def _send(fd: int, payload: bytes) -> None:
    data = memoryview(_HEADER.pack(len(payload)) + payload)
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
    """The worker: answer requests from stdin on stdout until stdin closes [D4] [D5] [D8].

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
    try:
        _serve_requests(answers, databases)
    except BrokenPipeError:  # the caller is gone
        pass


def _serve_requests(answers: int, databases: dict[int, sqlite3.Connection]) -> None:
    _send(answers, marshal.dumps("ready"))
    while (header := _read_exact(0, _HEADER.size)) is not None:
        request = _read_exact(0, _HEADER.unpack(header)[0])
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
            _send(answers, payload)


# ------------------------------------------------------------------ in the calling process: the client
_TIMED_OUT, _DIED = object(), object()


class _Worker:
    """One worker process seen from the caller: send a request, await each answer under its deadline."""

    def __init__(self):
        if not hasattr(select, "poll"):
            raise RuntimeError("the SQL sandbox needs select.poll (POSIX)")
        self.process = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.requests, self.answers = self.process.stdin.fileno(), self.process.stdout.fileno()
        self.poller = select.poll()
        self.poller.register(self.answers, select.POLLIN)
        self.buffer, self.ready = bytearray(), False

    def _receive(self, deadline: float):
        """The next answer; _TIMED_OUT when none is complete by `deadline`; _DIED at end of pipe."""
        while True:
            if len(self.buffer) >= _HEADER.size:
                end = _HEADER.size + _HEADER.unpack_from(self.buffer)[0]
                if len(self.buffer) >= end:
                    answer = marshal.loads(self.buffer[_HEADER.size:end])
                    del self.buffer[:end]
                    return answer
            # a late caller still takes an answer already in the pipe (poll with timeout 0)
            if not self.poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                return _TIMED_OUT
            part = os.read(self.answers, 1 << 20)
            if not part:
                return _DIED
            self.buffer += part

    def call(self, request: list[tuple]) -> tuple[list, str | None]:
        """Run `request`; (answers, None), or (the answers so far, why) after killing the worker [D4]."""
        if not self.ready:
            if self._receive(time.monotonic() + _START_TIMEOUT_S) != "ready":
                raise RuntimeError(f"the SQL sandbox's worker process did not start: {self.process.args}")
            self.ready = True
        start = time.monotonic()
        try:
            _send(self.requests, marshal.dumps(tuple(request)))
        except OSError:  # it died since the last request
            self.kill()
            return [], f"sandbox worker died (exit status {self.process.returncode})"
        answers = []
        for kind, _, *args in request:
            if kind == "close":
                continue
            answer = self._receive(start + args[1] + _KILL_GRACE_S)  # args[1]: this operation's time limit
            if answer is _TIMED_OUT or answer is _DIED:
                self.kill()
                return answers, (f"time limit exceeded: no answer {args[1]:g} s + {_KILL_GRACE_S:g} s after "
                                 f"the start, the worker process was killed" if answer is _TIMED_OUT else
                                 f"sandbox worker died (exit status {self.process.returncode})")
            answers.append(answer)
            start = time.monotonic()
        return answers, None

    def kill(self):
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


_LOCK = threading.Lock()  # one request at a time through the pipe
_WORKER: _Worker | None = None
_PENDING_CLOSES: list[tuple[_Worker, int]] = []  # from Database.close and garbage collection
_IDS = itertools.count()
_LOST = ("database lost: the worker process that held it was killed (a query ran past its time limit) "
         "or died")


def _request(request: list[tuple], worker: _Worker | None = None) -> tuple[_Worker, list, str | None]:
    """Run `request` in the worker (started if needed): (that worker, answers, why it stopped or None).

    With `worker` (a database's), a different current worker means the database is lost [D4].
    """
    global _WORKER
    with _LOCK:
        if _WORKER is None:
            _WORKER = _Worker()
        current = _WORKER
        if worker is not None and worker is not current:
            return current, [], _LOST
        closes = []
        while _PENDING_CLOSES:
            owner, db_id = _PENDING_CLOSES.pop()
            if owner is current:
                closes.append(("close", db_id))
        try:
            answers, why = current.call(closes + request)
        except BaseException:  # it could not start, or Ctrl-C came mid-request: its answers are out of step
            current.kill()
            _WORKER = None
            raise
        if why is not None:  # [D4] the next query gets a fresh process, started while the caller goes on
            _WORKER = None
            _WORKER = _Worker()
        return current, answers, why


def stop_worker() -> None:
    """Kill this process's worker, if any (at exit, and for tests); the next query starts a new one."""
    global _WORKER
    with _LOCK:
        if _WORKER is not None:
            _WORKER.kill()
            _WORKER = None


def _after_fork_in_child() -> None:  # [D8] the parent's worker and lock are the parent's
    global _LOCK, _WORKER
    _LOCK = threading.Lock()
    if _WORKER is not None:
        _WORKER.process.stdin.close()  # our copies of its pipes only
        _WORKER.process.stdout.close()
    _WORKER = None
    _PENDING_CLOSES.clear()


class Database:
    """A sandboxed database held by the worker process (from `build_database`); `close()` frees it."""

    def __init__(self, worker: _Worker, db_id: int):
        self._worker, self._id = worker, db_id
        self._close = weakref.finalize(self, _PENDING_CLOSES.append, (worker, db_id))  # sent with the next request

    def close(self) -> None:
        self._close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_statement(sql) -> QueryResult | None:
    """The result of a statement that needs no worker (empty, or over 1 MB [D5]), else None."""
    if not isinstance(sql, str) or not sql.strip(" \t\r\n;"):
        return QueryResult(error="empty statement")
    if len(sql) > _LIMITS["SQLITE_LIMIT_SQL_LENGTH"]:  # characters ≤ UTF-8 bytes; SQLite checks the bytes
        return QueryResult(error=f"size limit exceeded: SQL text over {_LIMITS['SQLITE_LIMIT_SQL_LENGTH']:,} bytes",
                           refused=True)
    return None


def execute_sql(db: Database, sql: str, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                max_rows: int = DEFAULT_MAX_ROWS) -> QueryResult:
    """Run one statement on `db` under the sandbox's limits; never raises on any SQL [D4] [D5] [D6] [D7].

    Scored 0 by the rewards (refused=True): a statement stopped at `time_limit_s` — by the worker, or
    by killing it 0.1 s later, which also loses every database it held — or over a size limit [D5],
    or denied, or several statements, or text SQLite cannot take. Issue #13 overrides REWARDS.md C
    here: C grades any SQLite error and floors any executed SELECT at 0.2·W; a query stopped for time
    or size scores 0 instead.

    Args:
        db: a database from `build_database`, not closed.
        sql: one SQL statement (a trailing ";" is fine).
        time_limit_s: wall-clock limit for executing the statement and fetching its rows.
        max_rows: rows fetched at most.
    Returns:
        QueryResult.
    """
    if not db._close.alive:
        raise ValueError("execute_sql on a closed database")
    early = _check_statement(sql)
    if early is not None:
        return early
    _, answers, why = _request([("exec", db._id, str(sql), float(time_limit_s), int(max_rows))], db._worker)
    return QueryResult(error=why, refused=True) if why else QueryResult(*answers[0])


def build_database(sql_context: str, *, time_limit_s: float = DEFAULT_BUILD_TIME_LIMIT_S) -> Database:
    """A fresh sandboxed database holding `sql_context` (CREATE TABLE + INSERT statements) [D8].

    Args:
        sql_context: the example's schema and data, statements separated by ";".
        time_limit_s: limit for the whole context [D4].
    Raises:
        SqlContextError: naming the first statement that fails and SQLite's message, or why the
            sandbox stopped the build.
    """
    if not isinstance(sql_context, str):
        raise SqlContextError(f"sql_context must be a string, got {type(sql_context).__name__}")
    db_id = next(_IDS)
    worker, answers, why = _request([("open", db_id, sql_context, float(time_limit_s))])
    if why or answers[0] is not None:
        raise SqlContextError(f"sql_context does not build: {why}" if why else answers[0])
    return Database(worker, db_id)


def run_sql(sql_context: str, sql: str, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
            max_rows: int = DEFAULT_MAX_ROWS) -> QueryResult:
    """`execute_sql` on a database built from `sql_context` for this call only (one request to the
    worker); never raises on any SQL.

    Scored 0 (refused=True): everything `execute_sql` refuses, and a context that does not build,
    `error="context: …"`: the query never ran, so its SQLite message must not be graded.
    """
    if not isinstance(sql_context, str):
        return QueryResult(error=f"context: sql_context must be a string, got {type(sql_context).__name__}",
                           refused=True)
    db_id, early = next(_IDS), _check_statement(sql)
    request = [("open", db_id, sql_context, DEFAULT_BUILD_TIME_LIMIT_S)]
    if early is None:
        request.append(("exec", db_id, str(sql), float(time_limit_s), int(max_rows)))
    _, answers, why = _request(request + [("close", db_id)])
    if not answers or answers[0] is not None:  # stopped or failed while building
        return QueryResult(error=f"context: {answers[0] if answers else why}", refused=True)
    if early is not None:
        return early
    return QueryResult(error=why, refused=True) if why else QueryResult(*answers[1])


def table_contents(db: Database, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S,
                   max_rows: int = 100_000) -> dict[tuple[str, str], QueryResult]:
    """Every table's rows, (schema, name) → result of `SELECT * FROM schema."name"`, for "main" and
    "temp" apart: a TEMP table named like a main one shadows it in unqualified SQL (issue #13 item 5)."""
    names = execute_sql(db, "SELECT 'main', name FROM main.sqlite_master WHERE type = 'table' UNION ALL "
                            "SELECT 'temp', name FROM temp.sqlite_master WHERE type = 'table' ORDER BY 1, 2")
    return {(schema, name): execute_sql(db, f'SELECT * FROM {schema}."' + name.replace('"', '""') + '"',
                                        time_limit_s=time_limit_s, max_rows=max_rows)
            for schema, name in names.rows}


if __name__ == "__main__":
    _serve()
else:
    atexit.register(stop_worker)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
