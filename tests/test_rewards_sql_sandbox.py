"""The SQL sandbox's contract: fresh databases, limits, errors as results, the worker process.
Hostile queries (time, size, files, other databases) are in test_rewards_sql_hostile.py."""
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards import sql, sql_sandbox
from rewards.sql_sandbox import (SqlContextError, build_database, execute_sql, run_sql, split_statements,
                                 stop_worker, table_contents)

CONTEXT = ("CREATE TABLE n (i INTEGER, s TEXT);"
           "WITH RECURSIVE c(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM c WHERE k < 100) "
           "INSERT INTO n SELECT k, 'row' || k FROM c;")
GOLD = "SELECT i FROM n WHERE i <= 3"


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


def test_a_hostile_context_does_not_build_and_names_the_statement():
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


def test_table_contents_reads_main_and_temp_tables_under_their_schema():
    with build_database("CREATE TABLE t (a INT); INSERT INTO t VALUES (1);") as db:
        assert execute_sql(db, "CREATE TEMP TABLE t AS SELECT 2 AS a").ok
        assert execute_sql(db, "SELECT a FROM t").rows == ((2,),)  # the temp table shadows main.t
        tables = table_contents(db)
        assert list(tables) == [("main", "t"), ("temp", "t")]
        assert tables[("main", "t")].rows == ((1,),) and tables[("temp", "t")].rows == ((2,),)


def test_queries_from_several_threads_each_get_their_own_answer():
    def count_below(k):
        return run_sql(CONTEXT, f"SELECT count(*) FROM n WHERE i < {k}").rows

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(count_below, range(60))) == [((max(k - 1, 0),),) for k in range(60)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_worker_and_leaves_the_parents_alone():
    with build_database(CONTEXT) as db:
        assert execute_sql(db, "DELETE FROM n WHERE i > 10").ok
        pid = os.fork()
        if pid == 0:  # the child: the parent's database is not its own, a new one works
            ok = (execute_sql(db, "SELECT 1").refused
                  and run_sql(CONTEXT, "SELECT count(*) FROM n").rows == ((100,),))
            os._exit(0 if ok else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        assert execute_sql(db, "SELECT count(*) FROM n").rows == ((10,),)


def test_a_worker_that_dies_is_a_refusal_and_the_next_query_gets_a_new_one():
    assert run_sql(CONTEXT, "SELECT 1").ok
    os.kill(sql_sandbox._WORKER.process.pid, signal.SIGKILL)  # as a crash inside SQLite would
    result = run_sql(CONTEXT, "SELECT 1")
    assert result.refused and "sandbox worker died" in result.error
    assert run_sql(CONTEXT, "SELECT 1").rows == ((1,),)


def test_a_worker_that_cannot_start_raises_rather_than_scoring_0(monkeypatch):
    stop_worker()
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(RuntimeError, match="did not start"):
        run_sql(CONTEXT, "SELECT 1")
    monkeypatch.undo()
    assert run_sql(CONTEXT, "SELECT 1").rows == ((1,),)


def test_a_closed_database_cannot_be_used():
    db = build_database(CONTEXT)
    db.close()
    with pytest.raises(ValueError, match="closed"):
        execute_sql(db, "SELECT 1")


def test_a_table_named_trigger_is_not_a_trigger_body():
    """`CREATE TABLE trigger (a); INSERT ...` was kept as one statement waiting for END, and refused."""
    from rewards.sql_sandbox import split_statements

    assert split_statements("CREATE TABLE trigger (a); INSERT INTO trigger VALUES (1);") == [
        "CREATE TABLE trigger (a);", "INSERT INTO trigger VALUES (1);"]
    body = "CREATE TEMP TRIGGER t AFTER INSERT ON x BEGIN UPDATE x SET a = 1; END;"
    assert split_statements(body + " SELECT 1;") == [body, "SELECT 1;"]
