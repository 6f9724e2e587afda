"""Text-to-SQL rewards (REWARDS.md C): execution against the gold query, complexity, reasoning quality.

Columns: `sql` (gold query; alias `gold_sql`) and `sql_context` (CREATE TABLE + INSERT statements).
C's weights are part of its rewards, as in the original: format ×1.0 (`rewards.formats.sql_format`),
execution W = 1.2, complexity ×0.6, reasoning ×0.7. Every query runs in `rewards.sql_sandbox`.

Implementation details:
[D1] Each query, gold or generated, runs on its own freshly built database, and each gold result is
     computed once per (context, gold) within a call: a generated write can never change the result
     it is compared with.
[D2] Anything the sandbox refuses — time limit, ATTACH, extension loading, PRAGMA, several statements,
     size limits — scores 0.0, without the 0.1·W type bonus an ordinary error keeps. Issue #13 item 4
     overrides REWARDS.md C here: a query stopped for time or size scores 0 (before, a SELECT whose
     printf ran 48 s kept the 0.2·W floor, an UPDATE that did so the 0.5·W of an executed write, SQL
     over 1 MB the 0.1·W type bonus), and the time limit holds whatever one SQLite step costs
     (`rewards.sql_watchdog` [D1]).
[D3] A gold query or context that fails scores 0.0 (the original graded the gold's own error message);
     the cleansing script drops such rows, so a cleansed dataset never meets this.
[D4] When the column names differ, the row-set Jaccard compares rows projected on the common column
     names (case-insensitive, gold order). The original keyed projected values by column *position*,
     so a reordered column list never matched, and with no common column it skipped the 0.2·W floor
     through an error; here no common column means Jaccard 0 and the floors apply.
[D5] Not reproduced from the original: its sqlglot MySQL→SQLite transpiling and its case and
     ambiguous-column rewriting of the generated query (SQLite names are case-insensitive anyway).
[D6] `execution_match` of a gold write compares the database each statement leaves: the rows of every
     table of the "main" and "temp" schemas read schema-qualified (main."t"), and the list of objects
     (tables, views, indexes, triggers) in both. Unqualified names let a TEMP table or view shadow a
     gold table: for gold `UPDATE t SET v = 0 WHERE id = 1`, `CREATE TEMP TABLE t AS SELECT … FROM
     main.t` matched while main.t never changed (issue #13 item 5). A state that cannot be read whole
     (stopped, or over 100,000 rows) is not compared: None for the gold, no match for the generated.
"""
from __future__ import annotations

import math
import re
from collections import Counter

from rewards.inputs import column, completion_text, gold_text
from rewards.sql_sandbox import (DEFAULT_MAX_ROWS, DEFAULT_TIME_LIMIT_S, QueryResult, SqlContextError,
                                 build_database, execute_sql, run_sql, table_contents)
from rewards.sql_text import (complexity, complexity_tokenized, extract_reasoning, extract_sql,
                              schema_names, statement_type)

W_EXECUTION, W_COMPLEXITY, W_REASONING = 1.2, 0.6, 0.7
WRITES = ("INSERT", "UPDATE", "DELETE")
ERROR_CREDIT = (  # SQLite message fragment → partial credit (× W), first match wins
    ("syntax error", 0.0), ("no such table", 0.0), ("no such column", 0.1), ("ambiguous column", 0.2),
    ("datatype mismatch", 0.15), ("constraint failed", 0.1), ("constraint violation", 0.1),
    ("no such function", 0.05), ("too many terms in compound select", 0.0),
    ("subquery returned more than 1 row", 0.1))


def _rows(completions, columns, reward: str):
    n = len(completions)
    golds = column(columns, "sql", n, reward=reward, aliases=("gold_sql",))
    contexts = column(columns, "sql_context", n, reward=reward)
    return [(completion_text(c), gold_text(g), gold_text(x)) for c, g, x in zip(completions, golds, contexts)]


def error_credit(message: str) -> float:
    """Partial credit (in units of W) for a generated SELECT that fails with this SQLite message."""
    lowered = message.lower()
    return next((credit for fragment, credit in ERROR_CREDIT if fragment in lowered), 0.0)


def _on_columns(result: QueryResult, names: list[str]) -> set[tuple]:
    """The distinct rows of `result` restricted to the columns `names` (lower-cased; first of each name)."""
    lowered = [c.lower() for c in result.columns]
    index = [lowered.index(name) for name in names]
    return {tuple(row[i] for i in index) for row in result.rows}


def select_similarity(gold: QueryResult, gen: QueryResult) -> float:
    """Similarity of two executed SELECTs in units of W (table of `sql_execution`) [D4]."""
    gold_rows, gen_rows = set(gold.rows), set(gen.rows)
    if gold_rows == gen_rows and gold.columns == gen.columns:
        return 1.0
    score = 0.3
    if gold_rows and gen_rows:
        if gold.columns == gen.columns:
            gold_proj, gen_proj = gold_rows, gen_rows
        else:  # [D4]
            gen_names = {c.lower() for c in gen.columns}
            common = list(dict.fromkeys(c.lower() for c in gold.columns if c.lower() in gen_names))
            gold_proj, gen_proj = (_on_columns(gold, common), _on_columns(gen, common)) if common else (set(), set())
        matched = len(gold_proj & gen_proj)
        jaccard = matched / len(gold_proj | gen_proj) if gold_proj | gen_proj else 0.0
        count_ratio = min(len(gold_rows), len(gen_rows)) / max(len(gold_rows), len(gen_rows))
        gold_set, gen_set = {c.lower() for c in gold.columns}, {c.lower() for c in gen.columns}
        column_jaccard = len(gold_set & gen_set) / len(gold_set | gen_set) if gold_set and gen_set else 0.0
        gold_recall = len(gold_rows & gen_rows) / len(gold_rows)
        score = 0.40 * jaccard + 0.20 * count_ratio + 0.25 * column_jaccard + 0.15 * gold_recall
        score = max(score, 0.3) if matched > 0 else score
    return max(score, 0.2) if score <= 0.3 else score


def _execution_score(gen_sql: str, gold_sql: str, context: str, gold_cache: dict) -> float:
    if not gen_sql:
        return 0.0
    gold_type, gen_type = statement_type(gold_sql), statement_type(gen_sql)
    bonus = 0.1 if gold_type == gen_type else 0.0
    if gold_type == "SELECT" and gen_type == "SELECT":
        if (context, gold_sql) not in gold_cache:  # [D1]
            gold_cache[(context, gold_sql)] = run_sql(context, gold_sql)
        gold, gen = gold_cache[(context, gold_sql)], run_sql(context, gen_sql)
        if not gold.ok or gen.refused:  # [D2] [D3]
            return 0.0
        if not gen.ok:
            return error_credit(gen.error) or bonus
        return select_similarity(gold, gen)
    if gen_type in WRITES:
        gen = run_sql(context, gen_sql)
        return 0.5 if gen.ok else 0.0 if gen.refused else bonus
    return bonus


def sql_execution(prompts, completions, **columns) -> list[float | None]:
    """C's execution reward, W = 1.2 (original `execute_query_reward_func`); values below are × W.

    | case (first that applies)                                                 | reward (× W)     |
    |---------------------------------------------------------------------------|------------------|
    | no SQL in the completion                                                  | 0                |
    | the sandbox refuses the generated query: time, size, denied [D2]          | 0                |
    | gold or context fails [D3]                                                | 0                |
    | gold and generated are SELECT, same row set and same column names         | 1.0              |
    |   both execute, otherwise s = 0.40·J_rows + 0.20·min/max(row counts)      | s                |
    |                                + 0.25·J_column_names + 0.15·|gold∩gen|/|gold|                |
    |   … and some row matches (J_rows > 0) but s < 0.3                         | 0.3              |
    |   … one result empty (s not computed)                                     | 0.3              |
    |   … any result ≤ 0.3 is raised to at least                                | 0.2              |
    |   generated fails: no such column / ambiguous column / datatype mismatch  | 0.1 / 0.2 / 0.15 |
    |   … constraint failed / no such function / subquery >1 row               | 0.1 / 0.05 / 0.1 |
    |   … syntax error, no such table, other error: the type bonus              | 0.1              |
    | generated INSERT/UPDATE/DELETE that executes (whatever the gold's type)   | 0.5              |
    |   … that fails: the type bonus                                            | 0.1 or 0         |
    | any other pair of statement types: type bonus (same type)                 | 0.1 or 0         |
    | gold or context is None                                                   | None             |
    """
    gold_cache: dict = {}
    return [None if gold is None or context is None
            else W_EXECUTION * _execution_score(extract_sql(text), gold, context, gold_cache)
            for text, gold, context in _rows(completions, columns, "sql_execution")]


def execution_match(sql_context: str, gold_sql: str, gen_sql: str, *,
                    time_limit_s: float = DEFAULT_TIME_LIMIT_S, max_rows: int = DEFAULT_MAX_ROWS) -> bool | None:
    """Execution accuracy of one query (ours): does `gen_sql` do what `gold_sql` does?

    A gold SELECT: the generated statement returns the same rows (as a multiset; in order when the
    gold has ORDER BY) with the same number of columns; names are ignored. A gold write: the two
    statements, each run on a fresh database, leave every table of main and temp with the same rows
    and the same objects in both schemas [D6].
    Returns None when the gold query or the context fails (the example cannot be graded). False —
    scored 0 by `sql_execution_accuracy` — when the generated statement fails or the sandbox stops it
    for time or size [D2], or its database state cannot be read whole [D6].
    """
    gold = run_sql(sql_context, gold_sql, time_limit_s=time_limit_s, max_rows=max_rows)
    if not gold.ok:
        return None
    if statement_type(gold_sql) not in WRITES:
        gen = run_sql(sql_context, gen_sql, time_limit_s=time_limit_s, max_rows=max_rows)
        ordered = re.search(r"\bORDER\s+BY\b", gold_sql, re.I) is not None
        same_rows = gen.rows == gold.rows if ordered else Counter(gen.rows) == Counter(gold.rows)
        return gen.ok and len(gen.columns) == len(gold.columns) and same_rows
    gold_state = _state_after(sql_context, gold_sql, time_limit_s, max_rows)
    gen_state = _state_after(sql_context, gen_sql, time_limit_s, max_rows)
    return None if gold_state is None else gen_state is not None and gen_state == gold_state


_OBJECTS = ("SELECT 'main', type, name FROM main.sqlite_master UNION ALL "
            "SELECT 'temp', type, name FROM temp.sqlite_master ORDER BY 1, 2, 3")


def _state_after(sql_context: str, sql: str, time_limit_s: float, max_rows: int) -> tuple | None:
    """(objects of main and temp, rows of each of their tables) after `sql` on a fresh database [D6];
    None if it fails or the state cannot be read whole."""
    try:
        db = build_database(sql_context)
    except SqlContextError:
        return None
    with db:
        if not execute_sql(db, sql, time_limit_s=time_limit_s, max_rows=max_rows).ok:
            return None
        objects = execute_sql(db, _OBJECTS, time_limit_s=time_limit_s, max_rows=100_000)  # [D6]
        tables = table_contents(db, time_limit_s=time_limit_s)  # schema-qualified [D6]
    if not objects.ok or objects.truncated or any(not r.ok or r.truncated for r in tables.values()):
        return None
    return objects.rows, {key: Counter(r.rows) for key, r in tables.items()}


def sql_execution_accuracy(prompts, completions, **columns) -> list[float | None]:
    """Execution accuracy as a reward (ours): `execution_match` of the extracted SQL.

    | case                                                        | reward |
    |-------------------------------------------------------------|--------|
    | the generated SQL does what the gold does                   | 1.0    |
    | anything else: no SQL, an error, refused by the sandbox     | 0.0    |
    |   (time, size, denied [D2]), different rows, a different    |        |
    |   database state — main and temp compared apart [D6]        |        |
    | gold or context is None, or the gold itself fails           | None   |
    """
    out = []
    for text, gold, context in _rows(completions, columns, "sql_execution_accuracy"):
        match = None if gold is None or context is None else execution_match(context, gold, extract_sql(text))
        out.append(None if match is None else float(match))
    return out


def _complexity_reward(completions, columns, reward: str, measure) -> list[float]:
    n = len(completions)
    golds = column(columns, "sql", n, reward=reward, aliases=("gold_sql",))
    out = []
    for c, gold in zip(completions, golds):
        gen_sql, gold_sql = extract_sql(completion_text(c)), gold_text(gold)
        if not gen_sql:
            out.append(0.0)
        elif not gold_sql:  # the original's no-gold band
            out.append(W_COMPLEXITY * (0.4 if 1.5 <= measure(gen_sql) <= 8.0 else 0.1))
        else:
            ratio = min(max(measure(gen_sql) / measure(gold_sql), 1e-3), 1e3)
            out.append(W_COMPLEXITY * math.exp(-0.5 * math.log(ratio) ** 2))
    return out


def sql_complexity(prompts, completions, **columns) -> list[float]:
    """C's complexity reward, ×0.6 (original): how close the query's complexity is to the gold's.

    With c = `rewards.sql_text.complexity` (≥ 1) and ratio = clip(c_gen / c_gold, 1e-3, 1e3):

    | case                                        | reward                              |
    |---------------------------------------------|-------------------------------------|
    | no SQL in the completion                    | 0.0                                 |
    | gold present                                | 0.6·exp(−0.5·ln²(ratio))            |
    | … e.g. ratio 1 / ratio 2 or ½                | 0.6 / 0.472                         |
    | gold empty or None: c_gen in [1.5, 8]        | 0.6·0.4 = 0.24                      |
    | gold empty or None: otherwise                | 0.6·0.1 = 0.06                      |
    """
    return _complexity_reward(completions, columns, "sql_complexity", complexity)


def sql_complexity_tokenized(prompts, completions, **columns) -> list[float]:
    """`sql_complexity` with features counted on words (ours): c = `rewards.sql_text.complexity_tokenized`,
    so features on a new line or at the start count too; ratio = clip(c_gen / c_gold, 1e-3, 1e3).

    | case                                        | reward                    |
    |---------------------------------------------|---------------------------|
    | no SQL in the completion                    | 0.0                       |
    | gold present                                | 0.6·exp(−0.5·ln²(ratio))  |
    | gold empty or None: c_gen in [1.5, 8] / not | 0.24 / 0.06               |
    """
    return _complexity_reward(completions, columns, "sql_complexity_tokenized", complexity_tokenized)


_SQL_TERMS = ("table", "column", "join", "select", "where", "group by", "order by", "filter",
              "aggregate", "schema", "database")
_FIRST_STEP = re.compile(r"step 1|first|start|initial|begin")
_LATER_STEP = re.compile(r"step 2|next|then|second|final|last|subsequent")


def reasoning_quality(reasoning: str, sql_context: str | None) -> float:
    """Unweighted reasoning score in [0, 1] (table of `sql_reasoning_quality`)."""
    lowered, words = reasoning.lower(), len(reasoning.split())
    lines = sum(1 for line in reasoning.split("\n") if line.strip())
    score = 0.20 if words >= 50 else 0.15 if words >= 25 else 0.10 if words >= 10 else 0.0
    score += min(0.20, 0.03 * sum(term in lowered for term in _SQL_TERMS))
    score += 0.15 if lines >= 3 else 0.10 if lines >= 2 else 0.0
    score += 0.15 if _FIRST_STEP.search(lowered) and _LATER_STEP.search(lowered) else 0.0
    if sql_context:
        tables, cols = schema_names(sql_context)
        mentioned = sum(re.search(r"\b" + re.escape(name) + r"\b", lowered) is not None for name in tables | cols)
        score += min(0.30, 0.05 * mentioned)
    return min(1.0, score)


def sql_reasoning_quality(prompts, completions, **columns) -> list[float]:
    """C's reasoning-quality reward, ×0.7 (original), on the first `<reasoning>…</reasoning>` block.

    | part (reasoning lower-cased)                                          | adds                 |
    |-----------------------------------------------------------------------|----------------------|
    | no or empty reasoning block                                           | reward 0.0           |
    | words ≥ 50 / ≥ 25 / ≥ 10                                              | 0.20 / 0.15 / 0.10   |
    | each SQL term present: table, column, join, select, where, group by, order by, | 0.03, ≤ 0.20 |
    |   filter, aggregate, schema, database                                 |                      |
    | non-blank lines ≥ 3 / = 2                                             | 0.15 / 0.10          |
    | a first-step word (step 1, first, start, initial, begin) and a later   | 0.15                 |
    |   one (step 2, next, then, second, final, last, subsequent)           |                      |
    | each table or column of `sql_context` named as a whole word           | 0.05, at most 0.30   |
    | total                                                                 | capped at 1, × 0.7   |

    The `sql_context` column is optional here: without it the schema part is 0.
    """
    n = len(completions)
    contexts = (column(columns, "sql_context", n, reward="sql_reasoning_quality")
                if columns.get("sql_context") is not None else [None] * n)
    out = []
    for c, context in zip(completions, contexts):
        reasoning = extract_reasoning(completion_text(c))
        out.append(W_REASONING * reasoning_quality(reasoning, gold_text(context)) if reasoning else 0.0)
    return out
