"""The SQL sandbox under hostile queries: each returns a result (reward 0) within its time limit and
leaves nothing on disk."""
import os
import tempfile
import time

import pytest

from rewards import sql
from rewards.sql_sandbox import (DEFAULT_TIME_LIMIT_S, SqlContextError, build_database, execute_sql, run_sql,
                                 split_statements)

CONTEXT = ("CREATE TABLE n (i INTEGER, s TEXT);"
           "WITH RECURSIVE c(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM c WHERE k < 100) "
           "INSERT INTO n SELECT k, 'row' || k FROM c;")
GOLD = "SELECT i FROM n WHERE i <= 3"
SLACK_S = 0.5  # Python overhead around one time-limited statement


@pytest.fixture
def disk_watch(tmp_path, monkeypatch):
    """Runs the test in an empty cwd; afterwards the cwd must still be empty and the temp dir must hold
    no new SQLite temp file ("etilqs_*") and none of the paths the hostile SQL names."""
    monkeypatch.chdir(tmp_path)
    tmp = tempfile.gettempdir()
    before = set(os.listdir(tmp))
    yield tmp_path
    assert os.listdir(tmp_path) == []
    new = set(os.listdir(tmp)) - before
    assert not [name for name in new if name.startswith("etilqs_") or name.startswith("stolen")]


def hostile_queries(tmp_path):
    return {
        "infinite recursive CTE":
            "WITH RECURSIVE r(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM r) SELECT count(*) FROM r",
        "huge cross join": "SELECT count(*) FROM n a, n b, n c, n d, n e, n f",
        "huge sorted cross join": "SELECT a.s FROM n a, n b, n c, n d ORDER BY random()",
        "string doubling": "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) SELECT length(s) FROM r",
        "zeroblob": "SELECT length(zeroblob(1000000000))",
        "quadratic string function": "SELECT instr(hex(zeroblob(500000)), hex(zeroblob(250000)) || 'b')",
        "quadratic LIKE": "SELECT printf('%.*c', 19000, 'a') LIKE '%' || printf('%.*c', 5000, 'a') || 'b'",
        "attach a relative path": "ATTACH DATABASE 'stolen.db' AS s",
        "attach an absolute path": f"ATTACH DATABASE '{tmp_path / 'stolen_abs.db'}' AS s",
        "attach a file URI": f"ATTACH DATABASE 'file:{tmp_path / 'stolen_uri.db'}?mode=rwc' AS s",
        "attach in the temp dir": f"ATTACH DATABASE '{os.path.join(tempfile.gettempdir(), 'stolen_tmp.db')}' AS s",
        "vacuum into a file": f"VACUUM INTO '{tmp_path / 'stolen_copy.db'}'",
        "load_extension": "SELECT load_extension('/usr/lib/x86_64-linux-gnu/libsqlite3.so')",
        "multiple statements": "SELECT 1; DROP TABLE n",
        "pragma write": "PRAGMA writable_schema = ON",
        "NUL character": "SELECT 1\x00; DROP TABLE n",
        "lone surrogate": "SELECT '\ud800'",
    }


def test_every_hostile_query_is_refused_within_its_time_limit_without_touching_disk(disk_watch):
    conn = build_database(CONTEXT)
    for name, query in hostile_queries(disk_watch).items():
        start = time.monotonic()
        result = execute_sql(conn, query)
        assert result.refused and result.error, name
        assert time.monotonic() - start < DEFAULT_TIME_LIMIT_S + SLACK_S, name
    assert execute_sql(conn, "SELECT count(*) FROM n").rows == ((100,),)  # nothing was dropped
    conn.close()


@pytest.mark.parametrize("reward", [sql.sql_execution, sql.sql_execution_accuracy])
def test_every_hostile_completion_scores_0_within_its_time_limit_without_touching_disk(disk_watch, reward):
    queries = list(hostile_queries(disk_watch).values())
    texts = [f"<reasoning>r</reasoning><sql>{q}</sql>" for q in queries]
    start = time.monotonic()
    scores = reward(None, texts, sql=[GOLD] * len(texts), sql_context=[CONTEXT] * len(texts))
    assert scores == [0.0] * len(texts)
    assert time.monotonic() - start < len(texts) * (DEFAULT_TIME_LIMIT_S + SLACK_S)


def test_the_longest_uninterruptible_string_operations_stay_well_under_the_time_limit():
    conn = build_database(CONTEXT)
    n = 19_900  # just under the 20 kB string cap; trim's character set is capped lower by the same limit
    for query in [f"SELECT length(trim(printf('%.*c', {n}, 'a'), printf('%.*c', 1000, 'b') || 'a'))",
                  f"SELECT instr(printf('%.*c', {n}, 'a'), printf('%.*c', {n // 2}, 'a') || 'b')",
                  f"SELECT printf('%.*c', {n}, 'a') LIKE '%' || printf('%.*c', 498, 'a') || 'b'",
                  "SELECT instr(printf('%.*c', 1000000, 'a'), 'b')"]:  # over the cap: printf gives NULL
        start = time.monotonic()
        execute_sql(conn, query)
        assert time.monotonic() - start < 0.5, query


def test_a_generated_write_cannot_change_the_gold_result_it_is_compared_with():
    texts = ["<sql>DELETE FROM n</sql>", "<sql>UPDATE n SET i = -i</sql>", f"<sql>{GOLD}</sql>"]
    scores = sql.sql_execution(None, texts, sql=[GOLD] * 3, sql_context=[CONTEXT] * 3)
    assert scores == [pytest.approx(0.6), pytest.approx(0.6), 1.2]  # the writes earn 0.5·W; the gold is intact
    assert sql.execution_match(CONTEXT, GOLD, "DELETE FROM n") is False
    assert sql.execution_match(CONTEXT, GOLD, GOLD) is True


def test_each_database_is_fresh():
    first = build_database(CONTEXT)
    assert execute_sql(first, "DELETE FROM n").ok
    second = build_database(CONTEXT)
    assert execute_sql(second, "SELECT count(*) FROM n").rows == ((100,),)
    first.close(), second.close()


def test_a_hostile_context_does_not_build_and_names_the_statement(disk_watch):
    with pytest.raises(SqlContextError, match="statement 2 of 2 fails: denied by the sandbox"):
        build_database("CREATE TABLE t (a); ATTACH 'stolen_ctx.db' AS s;")
    with pytest.raises(SqlContextError, match="statement 1 of 1 fails.*no such table"):
        build_database("INSERT INTO missing VALUES (1)")
    with pytest.raises(SqlContextError, match="must be a string"):
        build_database(None)


def test_a_context_that_does_not_build_makes_run_sql_refuse():
    result = run_sql("CREATE TABLE (", "SELECT 1")
    assert result.refused and result.error.startswith("context:")


def test_rows_are_capped_and_truncation_is_reported():
    conn = build_database(CONTEXT)
    result = execute_sql(conn, "SELECT i FROM n ORDER BY i", max_rows=5)
    assert result.rows == ((1,), (2,), (3,), (4,), (5,)) and result.truncated and result.ok
    assert not execute_sql(conn, "SELECT i FROM n", max_rows=100).truncated


def test_read_only_pragmas_and_trailing_semicolons_are_allowed():
    conn = build_database(CONTEXT)
    assert execute_sql(conn, "PRAGMA table_info(n)").rows[0][1] == "i"
    assert execute_sql(conn, "SELECT 1; -- done").rows == ((1,),)
    assert execute_sql(conn, "SELECT 1;;\n").rows == ((1,),)
    assert execute_sql(conn, "  ;  ").error == "empty statement"


def test_split_statements_respects_quotes_comments_and_trigger_bodies():
    script = ("CREATE TABLE t (a TEXT); INSERT INTO t VALUES ('x;y'), (\"z\"); -- note; here\n"
              "/* ; */ CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE t SET a = 'b'; END; ; SELECT 1")
    assert split_statements(script) == [
        "CREATE TABLE t (a TEXT);", "INSERT INTO t VALUES ('x;y'), (\"z\");",
        "-- note; here\n/* ; */ CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE t SET a = 'b'; END;", "SELECT 1"]


def test_a_context_with_a_trigger_builds_and_fires():
    conn = build_database("CREATE TABLE t (a INT); CREATE TABLE log (n INT);"
                          "CREATE TRIGGER g AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.a); END;"
                          "INSERT INTO t VALUES (7);")
    assert execute_sql(conn, "SELECT n FROM log").rows == ((7,),)
