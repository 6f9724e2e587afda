"""The SQL sandbox against a suite of hostile queries (issue #13 items 4 and 5; rewards/sql_sandbox.py
and the two modules it uses, sql_watchdog.py and sql_worker.py).

Every query must come back within its time limit + 0.5 s whatever SQLite does inside one step, with the
outcome written beside it ("refused": the sandbox stopped or denied it, which the rewards score 0;
"error": SQLite's own error; "ok": an answer), reach nothing outside its in-memory database, and write
no file: the worker runs in an empty cwd with SQLite's temp directory pointed there, and on Linux every
file created in that directory (even one deleted at once, as SQLite's temp files are) or created in
the system temp directories under a name the hostile SQL uses is seen through inotify.
"""
import ctypes
import os
import struct
import sys
import tempfile
import time

import pytest

from rewards import sql
from rewards.sql_sandbox import (DEFAULT_TIME_LIMIT_S, SqlContextError, build_database, execute_sql, run_sql,
                                 stop_worker, table_contents)

CONTEXT = ("CREATE TABLE n (i INTEGER, s TEXT);"
           "WITH RECURSIVE c(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM c WHERE k < 100) "
           "INSERT INTO n SELECT k, 'row' || k FROM c;"
           "CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER); INSERT INTO t VALUES (1, 5), (2, 6);")
SLACK_S = 0.5  # issue #13: every query returns within its limit + 0.5 s
TOKEN = "sqlhostile"  # every file name the hostile SQL asks for contains this
BIG = "printf('%.*c', 19900, 'a')"  # just under the sandbox's 20 kB string cap
PRINTF_2G = "printf('%.*c', 2147483647, 'x')"  # one VM step that loops 2^31 times (6.7 s here)
RECURSE = "WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r)"
CROSS4 = "n a, n b, n c, n d"  # 10^8 rows
PRAGMAS = [  # each would change a setting the sandbox relies on, the process, or the file system
    "writable_schema = ON", "journal_mode = WAL", "journal_mode = OFF", "main.journal_mode = DELETE",
    "temp_store = FILE", "temp_store_directory = '.'", "data_store_directory = '.'",
    "mmap_size = 1000000000", "hard_heap_limit = 0", "soft_heap_limit = 0", "max_page_count = 2147483647",
    "main.max_page_count = 2147483647", "temp.max_page_count = 2147483647", "cache_size = -2000000",
    "page_size = 65536", "threads = 8", "trusted_schema = ON", "cell_size_check = OFF", "query_only = ON",
    "foreign_keys = ON", "recursive_triggers = ON", "locking_mode = EXCLUSIVE", "synchronous = OFF",
    "integrity_check", "quick_check", "wal_checkpoint(TRUNCATE)", "shrink_memory", "optimize",
    "legacy_alter_table = ON", "case_sensitive_like = ON", "schema_version = 1", "user_version = 1",
    "encoding = 'UTF-16'", "busy_timeout = 1000000", "database_list", "compile_options"]


def hostile_queries(cwd: str, tmp: str) -> list[tuple[str, str, str]]:
    """(name, sql, expected outcome: "refused", "error", "ok" or "refused or error"), by what they try."""
    files = [  # reach a file or another database
        ("attach a relative path", f"ATTACH DATABASE '{TOKEN}.db' AS s", "refused"),
        ("attach an absolute path", f"ATTACH DATABASE '{cwd}/{TOKEN}_abs.db' AS s", "refused"),
        ("attach a file URI", f"ATTACH DATABASE 'file:{cwd}/{TOKEN}_uri.db?mode=rwc' AS s", "refused"),
        ("attach a URI with another VFS", f"ATTACH 'file:{cwd}/{TOKEN}_vfs.db?vfs=unix-dotfile&mode=rwc' AS s",
         "refused"),
        ("attach in the temp dir", f"ATTACH DATABASE '{tmp}/{TOKEN}_tmp.db' AS s", "refused"),
        ("attach a name built by an expression", f"ATTACH DATABASE '{TOKEN}' || '.db' AS s", "refused"),
        ("attach /etc/passwd", "ATTACH DATABASE '/etc/passwd' AS s", "refused"),
        ("attach :memory:", "ATTACH DATABASE ':memory:' AS s", "refused"),
        ("attach the shared in-memory cache", "ATTACH DATABASE 'file::memory:?cache=shared' AS s", "refused"),
        ("attach an anonymous temp database", "ATTACH DATABASE '' AS s", "refused"),
        ("detach temp", "DETACH DATABASE temp", "refused"),
        ("vacuum into a file", f"VACUUM INTO '{cwd}/{TOKEN}_copy.db'", "refused"),
        ("vacuum into a URI", f"VACUUM INTO 'file:{cwd}/{TOKEN}_copy2.db?mode=rwc'", "refused"),
        ("vacuum main into the temp dir", f"VACUUM main INTO '{tmp}/{TOKEN}_copy3.db'", "refused"),
        ("vacuum (attaches a scratch database)", "VACUUM", "refused"),
        ("load_extension", "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so')", "refused"),
        ("load_extension with an entry point", "SELECT load_extension('libc.so.6', 'system')", "refused"),
        ("load_extension in a WHERE clause", "SELECT i FROM n WHERE load_extension('x') IS NULL", "refused"),
        # the sqlite3 shell's file functions: not in the library ("no such function"), denied if they were
        ("readfile", "SELECT readfile('/etc/passwd')", "refused or error"),
        ("writefile", f"SELECT writefile('{TOKEN}.txt', 'x')", "refused or error"),
        ("edit", "SELECT edit('x', 'vi')", "refused or error"),
        ("fts3_tokenizer (a function pointer)", "SELECT fts3_tokenizer('simple')", "refused"),
        ("fts3_tokenizer, setting a pointer", "SELECT fts3_tokenizer('evil', x'4141414141414141')", "refused"),
        ("pragma_database_list", "SELECT * FROM pragma_database_list", "refused"),
        ("pragma_compile_options", "SELECT * FROM pragma_compile_options", "refused"),
        ("pragma_function_list", "SELECT * FROM pragma_function_list", "refused"),
        ("pragma_module_list", "SELECT name FROM pragma_module_list", "refused"),
    ]
    pragmas = [(f"PRAGMA {p}", f"PRAGMA {p}", "refused") for p in PRAGMAS]
    time_outs = [  # loops the progress handler stops
        ("infinite recursive CTE", f"{RECURSE} SELECT count(*) FROM r", "refused"),
        ("recursive CTE with a huge LIMIT", f"{RECURSE} SELECT max(k) FROM (SELECT k FROM r LIMIT 1000000000000)",
         "refused"),
        ("string doubling", "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) "
                            "SELECT length(s) FROM r", "refused"),
        ("two recursive CTEs joined",
         "WITH RECURSIVE a(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM a WHERE x < 100000), "
         "b(y) AS (SELECT 1 UNION ALL SELECT y + 1 FROM b WHERE y < 100000) SELECT count(*) FROM a, b", "refused"),
        ("huge cross join", "SELECT count(*) FROM n a, n b, n c, n d, n e, n f", "refused"),
        ("huge sorted cross join", f"SELECT a.s FROM {CROSS4} ORDER BY random()", "refused"),
        ("cross join grouped", f"SELECT a.i, count(*) FROM {CROSS4} GROUP BY a.i, b.i, c.i", "refused"),
        ("window function over a cross join", f"SELECT sum(a.i) OVER (ORDER BY b.i) FROM {CROSS4}", "refused"),
        ("correlated subqueries", f"SELECT (SELECT count(*) FROM {CROSS4} WHERE a.i > o.i) FROM n o", "refused"),
        ("LIKE over a cross join", f"SELECT count(*) FROM {CROSS4} WHERE a.s LIKE '%' || b.s || c.s || d.s || '%'",
         "refused"),
        ("random blobs counted distinct", f"{RECURSE} SELECT count(DISTINCT hex(randomblob(16))) FROM r", "refused"),
        ("random blobs summed", f"{RECURSE} SELECT sum(length(hex(randomblob(9000)))) FROM r", "refused"),
        ("sort of a growing CTE", f"{RECURSE} SELECT k FROM r ORDER BY random() LIMIT 1", "refused"),
        ("insert from an infinite CTE", f"INSERT INTO n {RECURSE} SELECT k, 'x' FROM r", "refused"),
        ("update with a huge subquery", f"UPDATE n SET s = (SELECT count(*) FROM {CROSS4} WHERE a.i < n.i)",
         "refused"),
        ("delete with a huge subquery", f"DELETE FROM n WHERE i IN (SELECT a.i + b.i + c.i + d.i FROM {CROSS4})",
         "refused"),
        ("create table as a cross join", f"CREATE TABLE x AS SELECT a.* FROM {CROSS4}", "refused"),
        ("create temp table as a cross join", f"CREATE TEMP TABLE x AS SELECT a.* FROM {CROSS4}", "refused"),
        ("create table from an infinite CTE", f"CREATE TABLE x AS {RECURSE} SELECT k FROM r", "refused"),
    ]
    trims = ", ".join([f"length(trim({BIG}, printf('%.*c', 1600, 'b') || 'a'))"] * 100)
    one_step = [  # single VM steps that take seconds: only killing the worker stops them in time
        ("6 x printf of 2^31 characters (issue #13)", "SELECT " + ", ".join([PRINTF_2G] * 6), "refused"),
        ("printf of 2^31 characters", f"SELECT {PRINTF_2G}", "refused"),
        ("printf of 2^31 characters IS NULL", f"SELECT {PRINTF_2G} IS NULL", "refused"),
        ("format of 2^31 characters", "SELECT format('%.*c', 2147483647, 'x')", "refused"),
        ("printf of 2^31 with the ! flag", "SELECT printf('%!.*c', 2147483647, 'x')", "refused"),
        ("printf of 2^31 on every row", f"SELECT {PRINTF_2G} FROM n", "refused"),
        ("printf of 2^31 in a WHERE clause", f"SELECT i FROM n WHERE {PRINTF_2G} IS NOT NULL", "refused"),
        ("printf of 2^31 in a recursive CTE", f"WITH RECURSIVE r(k, s) AS (SELECT 1, {PRINTF_2G} "
                                              f"UNION ALL SELECT k + 1, s FROM r WHERE k < 3) SELECT k FROM r",
         "refused"),
        ("printf of 2^31 in an update", f"UPDATE n SET s = {PRINTF_2G}", "refused"),
        ("100 x trim of 19.9 kB strings (issue #13)", f"SELECT {trims}", "refused"),
        ("100 x ltrim of 19.9 kB strings", "SELECT " + trims.replace("trim(", "ltrim("), "refused"),
        ("100 x rtrim of 19.9 kB strings", "SELECT " + trims.replace("trim(", "rtrim("), "refused"),
        ("400 x LIKE with a 500-byte pattern", "SELECT " + ", ".join(
            [f"{BIG} LIKE '%' || printf('%.*c', 498, 'a') || 'b'"] * 400), "refused"),
    ]
    sizes = [  # values, results, databases and SQL text over the sandbox's caps
        ("zeroblob of 1 GB", "SELECT length(zeroblob(1000000000))", "refused"),
        ("zeroblob of 2^31 - 1", "SELECT zeroblob(2147483647)", "refused"),
        ("randomblob of 1 GB", "SELECT randomblob(1000000000)", "refused"),
        ("hex doubling a blob", "SELECT hex(zeroblob(20000))", "refused"),
        ("replace expansion", "SELECT replace(hex(zeroblob(9000)), '0', '00000')", "refused"),
        ("concatenation past the cap", f"SELECT {BIG} || {BIG}", "refused"),
        ("quadratic instr on 1 MB strings", "SELECT instr(hex(zeroblob(500000)), hex(zeroblob(250000)) || 'b')",
         "refused"),
        ("quadratic LIKE with a 5 kB pattern",
         "SELECT printf('%.*c', 19000, 'a') LIKE '%' || printf('%.*c', 5000, 'a') || 'b'", "refused"),
        ("group_concat of a cross join", "SELECT group_concat(a.s) FROM n a, n b, n c", "refused"),
        ("json_group_array of a cross join", "SELECT json_group_array(a.s) FROM n a, n b, n c", "refused"),
        ("1,000 rows of 400 x 19.9 kB", "SELECT " + ", ".join([BIG] * 400) + " FROM n a, n b", "refused"),
        ("database past 64 MiB", f"INSERT INTO n {RECURSE} SELECT k, hex(zeroblob(9000)) FROM r", "refused"),
        ("temp table past the memory caps", f"CREATE TEMP TABLE x AS {RECURSE} SELECT hex(zeroblob(9000)) FROM r",
         "refused"),
        ("SQL of 1 MB (a string literal, issue #13)", "SELECT '" + "a" * 1_000_001 + "'", "refused"),
        ("SQL of 1.2 MB of additions", "SELECT 1" + " + 1" * 300_000, "refused"),
        ("SQL of 1 MB of UTF-8 in 600,000 characters", "SELECT '" + "é" * 600_000 + "'", "refused"),
        ("IN list of 1.3 MB", "SELECT 1 IN (" + ",".join(map(str, range(200_000))) + ")", "refused"),
        ("IN list of 0.8 MB", "SELECT count(*) FROM n WHERE i IN (" + ",".join(map(str, range(130_000))) + ")",
         "ok"),
    ]
    nesting = [  # SQLite's own limits on the shape of a statement
        ("1,000 nested parentheses", "SELECT " + "(" * 1000 + "1" + ")" * 1000, "refused"),
        ("1,000 nested subqueries", "SELECT " + "(SELECT " * 1000 + "1" + ")" * 1000, "refused"),
        ("3,000 nested function calls", "SELECT " + "abs(" * 3000 + "1" + ")" * 3000, "refused"),
        ("500 nested CASE", "SELECT " + "CASE WHEN 1 THEN " * 500 + "1" + " END" * 500, "refused"),
        ("expression 1,001 deep", "SELECT " + " + ".join(["1"] * 1001), "refused"),
        ("600 compound SELECTs", "SELECT " + " UNION ALL SELECT ".join(["1"] * 600), "refused"),
        ("3,000 result columns", "SELECT " + ",".join(["1"] * 3000), "refused"),
        ("200 function arguments", "SELECT max(" + ",".join(["1"] * 200) + ")", "refused"),
        ("70-table join", "SELECT 1 FROM " + ",".join(f"n t{k}" for k in range(70)), "refused"),
        ("LIKE pattern of 600 bytes", f"SELECT 'a' LIKE '{'%' * 600}'", "refused"),
        ("64-table join to plan", "SELECT count(*) FROM " + ", ".join(f"n t{k}" for k in range(64)) + " WHERE "
         + " AND ".join(f"t{k}.i = t{k + 1}.i" for k in range(63)), "ok"),
        ("a 500 kB identifier", "SELECT " + "x" * 500_000 + " FROM n", "error"),
    ]
    statements = [  # more than one statement, or text SQLite cannot take
        ("a second statement", "SELECT 1; DROP TABLE n", "refused"),
        ("1,000 statements", "SELECT 1;" * 999 + "SELECT 1", "refused"),
        ("attach as a second statement", f"SELECT 1; ATTACH '{TOKEN}_2nd.db' AS s", "refused"),
        ("pragma after a comment", "SELECT 1 /* ; */; PRAGMA writable_schema = ON", "refused"),
        ("NUL character", "SELECT 1\x00; DROP TABLE n", "refused"),
        ("lone surrogate", "SELECT '\ud800'", "refused"),
    ]
    return files + pragmas + time_outs + one_step + sizes + nesting + statements


class FileWatch:
    """Names created or written in some directories while watched (Linux inotify; elsewhere nothing)."""
    MASK = 0x100 | 0x80 | 0x02 | 0x08  # IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_CLOSE_WRITE

    def __init__(self, directories):
        self.libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
        self.fd, self.directory = -1, {}
        if self.libc is not None:
            self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
            assert self.fd >= 0, os.strerror(ctypes.get_errno())
            for d in dict.fromkeys(directories):
                if os.path.isdir(d):
                    self.directory[self.libc.inotify_add_watch(self.fd, os.fsencode(d), self.MASK)] = d

    def events(self) -> list[tuple[str, str]]:
        """(directory, name) of every event since the last call."""
        out = []
        while self.fd >= 0:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            offset = 0
            while offset < len(data):  # struct inotify_event {int wd; u32 mask, cookie, len; char name[len]}
                wd, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16:offset + 16 + length].rstrip(b"\0").decode(errors="replace")
                assert not mask & 0x4000, "inotify queue overflowed: events were lost"  # IN_Q_OVERFLOW
                out.append((self.directory.get(wd, "?"), name))
                offset += 16 + length
        return out

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)


@pytest.fixture
def sandbox_dir(tmp_path, monkeypatch):
    """An empty cwd that is also SQLite's temp directory, for a worker started in it; afterwards nothing
    may have been created there, nor under a hostile name in the system temp directories."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("SQLITE_TMPDIR", str(cwd))  # read by SQLite when the worker starts
    stop_worker()  # the next query starts a worker here
    system_tmp = [tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"]
    watch = FileWatch([str(cwd)] + system_tmp)
    seen = []
    yield cwd, seen.extend, watch
    stop_worker()  # later tests get a worker in their own cwd
    seen.extend(watch.events())
    watch.close()
    assert os.listdir(cwd) == []
    assert [(d, name) for d, name in seen if d == str(cwd) or TOKEN in name or name.startswith("etilqs_")] == []
    assert not [name for d in system_tmp if os.path.isdir(d) for name in os.listdir(d) if TOKEN in name]


def test_the_hostile_suite_has_at_least_100_distinctly_named_queries():
    queries = hostile_queries("/cwd", "/tmp")
    assert len(queries) >= 100
    assert len({name for name, _, _ in queries}) == len(queries)


def test_every_hostile_query_returns_within_its_limit_as_expected_and_writes_no_file(sandbox_dir):
    cwd, record, watch = sandbox_dir
    worst, failures = (0.0, ""), []
    for name, query, expected in hostile_queries(str(cwd), tempfile.gettempdir()):
        start = time.monotonic()
        result = run_sql(CONTEXT, query)
        elapsed = time.monotonic() - start
        worst = max(worst, (elapsed, name))
        outcome = "refused" if result.refused else "ok" if result.ok else "error"
        if outcome not in expected.split(" or ") or elapsed >= DEFAULT_TIME_LIMIT_S + SLACK_S:
            failures.append(f"{name}: {outcome} after {elapsed:.2f} s ({(result.error or '')[:80]})")
        record(watch.events())
    print(f"slowest hostile query: {worst[1]!r}, {worst[0]:.2f} s (limit {DEFAULT_TIME_LIMIT_S} s)")
    assert failures == []
    with build_database(CONTEXT) as db:  # the worker that ran them still enforces the sandbox
        assert execute_sql(db, "SELECT length(zeroblob(20001))").refused
        assert execute_sql(db, "ATTACH ':memory:' AS s").refused
        assert execute_sql(db, "PRAGMA temp_store = FILE").refused


def test_a_hostile_context_is_stopped_within_its_build_limit_and_writes_no_file(sandbox_dir):
    slow_insert = f"INSERT INTO x SELECT length(trim({BIG}, printf('%.*c', 1600, 'b') || 'a'));"  # ~0.05 s
    for context, reason in [
            (f"CREATE TABLE x (a); ATTACH '{TOKEN}_ctx.db' AS s;", "denied by the sandbox"),
            # an unbounded insert meets the time limit or, on a fast idle machine, the size cap first
            (f"CREATE TABLE x (a); INSERT INTO x {RECURSE} SELECT k FROM r;",
             "time limit exceeded|size limit exceeded"),
            (f"CREATE TABLE x (a); INSERT INTO x SELECT {PRINTF_2G};", "time limit exceeded"),
            ("CREATE TABLE x (a);" + slow_insert * 60, "time limit exceeded")]:  # the limit is for the whole context
        start = time.monotonic()
        with pytest.raises(SqlContextError, match=reason):
            build_database(context, time_limit_s=DEFAULT_TIME_LIMIT_S)
        assert time.monotonic() - start < DEFAULT_TIME_LIMIT_S + SLACK_S, context[:60]


@pytest.mark.parametrize("name, completion", [
    ("6 x printf of 2^31 characters, 301 characters long: scored 0.24 in 48.7 s",
     "<reasoning>Six long strings of x, 2G.</reasoning><sql>SELECT " + ", ".join([PRINTF_2G] * 6)
     + " FROM n WHERE i = 1 ORDER BY s LIMIT 5</sql>"),
    ("100 x trim of 19.9 kB strings: scored 0 in 6-14 s", "<sql>SELECT "
     + ", ".join([f"length(trim({BIG}, printf('%.*c', 1600, 'b') || 'a'))"] * 100) + "</sql>"),
    ("SQL over 1 MB: scored 0.12", "<sql>SELECT '" + "a" * 1_000_001 + "' FROM n</sql>"),
    ("a write stopped in one step: scored 0.6 in 11 s", f"<sql>UPDATE n SET s = {PRINTF_2G}</sql>"),
])
@pytest.mark.parametrize("reward", [sql.sql_execution, sql.sql_execution_accuracy])
def test_a_query_stopped_for_time_or_size_scores_0_within_its_limit(reward, name, completion):
    gold = "SELECT i FROM n WHERE i <= 3"
    start = time.monotonic()
    assert reward(None, [completion], sql=[gold], sql_context=[CONTEXT]) == [0.0], name
    assert time.monotonic() - start < DEFAULT_TIME_LIMIT_S + SLACK_S, name


def test_a_database_cannot_see_another_database_in_the_same_worker():
    with build_database("CREATE TABLE secret (k TEXT); INSERT INTO secret VALUES ('key');") as other:
        with build_database(CONTEXT) as db:
            for query in ["SELECT * FROM secret", "SELECT * FROM main.secret", "SELECT * FROM temp.secret"]:
                result = execute_sql(db, query)
                assert not result.ok and "no such table" in result.error, query
            assert execute_sql(db, "ATTACH 'file::memory:?cache=shared' AS o").refused
        assert execute_sql(other, "SELECT k FROM secret").rows == (("key",),)


def test_a_query_stopped_by_killing_the_worker_loses_its_database_and_says_so():
    with build_database(CONTEXT) as db, build_database(CONTEXT) as bystander:
        stopped = execute_sql(db, f"SELECT {PRINTF_2G}")
        assert stopped.refused and stopped.error.startswith("time limit exceeded")
        for lost in (db, bystander):  # both lived in the worker that was killed
            again = execute_sql(lost, "SELECT 1")
            assert again.refused and "database lost" in again.error
    assert run_sql(CONTEXT, "SELECT count(*) FROM n").rows == ((100,),)  # a new worker answers
    with build_database(CONTEXT) as db:
        assert table_contents(db)[("main", "t")].rows == ((1, 5), (2, 6))
