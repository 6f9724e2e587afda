"""Text-to-SQL rows in the gretelai/synthetic_text_to_sql format, and system C's prompt.

Row format (the hub dataset's columns; only the first three are required):
    sql_prompt        the question in English
    sql_context       CREATE TABLE + INSERT statements that build the example's database
    sql               the gold query
    sql_explanation, domain, sql_complexity, sql_task_type, id, …   optional, kept as they are

`load_text_to_sql("bundled", split="train"|"test")` reads the set we wrote ourselves (61 rows, 49/12,
ten domains; filters, aggregates, GROUP BY/HAVING, joins and self-joins, subqueries, CTEs, window
functions, UNION, ORDER BY/LIMIT, INSERT/UPDATE/DELETE). Every context builds in SQLite and every gold
query runs, SELECTs returning rows (tests/test_data_sql.py checks this with plain sqlite3).

`to_sql_prompts` gives TRL-style rows for system C (REWARDS.md C): `prompt` = [system, user] messages,
the user message holding the context and the question; all dataset columns are kept, so the execution
reward receives `sql` and `sql_context` as keyword arguments.

Implementation details:
    [D1] Hub rows of gretelai/synthetic_text_to_sql are written for several SQL dialects, so many do not
         build in SQLite; this loader only checks types. Keeping rows whose context builds and whose gold
         executes is the job of scripts/cleanse_sql_dataset.py (system C's cleansing step).
    [D2] The prompt shows the whole context, INSERTs included, as system C did: sample values tell the
         model how strings and dates are spelled in the data ('North', '2023-01-14').
"""
from __future__ import annotations

from pathlib import Path

from .rows import DataError, Row, load_rows

HUB_ID = "gretelai/synthetic_text_to_sql"
BUNDLED = "bundled"
BUNDLED_DIR = Path(__file__).parent  # sql_{train,test}.jsonl
REQUIRED = {"sql_prompt": str, "sql_context": str, "sql": str}
OPTIONAL = {"sql_explanation": str, "domain": str, "domain_description": str, "sql_complexity": str,
            "sql_complexity_description": str, "sql_task_type": str, "sql_task_type_description": str,
            "id": (int, str)}

SQL_SYSTEM_PROMPT = """You write SQLite queries that answer questions about a database.
You are given the statements that build the database and a question.
First explain which tables, columns and conditions the question needs, then give one query.
Respond in the following format:
<reasoning>
...
</reasoning>
<sql>
...
</sql>"""


def load_text_to_sql(source: str | Path = BUNDLED, split: str = "train", limit: int | None = None, *,
                     config: str | None = None) -> list[Row]:
    """Rows `{"sql_prompt", "sql_context", "sql", …optional columns}` from the bundled set, a hub id
    ("gretelai/synthetic_text_to_sql"), a local .jsonl/.json file or a directory with `{split}.jsonl`.

    Raises:
        DataError naming "file:line" of every row with a missing or non-string required column or a
        wrongly typed optional one.
    """
    if str(source) == BUNDLED:
        source = BUNDLED_DIR / f"sql_{split}.jsonl"
        if not source.is_file():
            raise DataError(f"no bundled text-to-SQL split {split!r} (have: train, test)")
    return load_rows(source, split=split, config=config, limit=limit, required=REQUIRED, optional=OPTIONAL)


def sql_user_prompt(row: Row) -> str:
    """The user message: the database statements [D2], then the question."""
    return f"Database:\n{row['sql_context']}\n\nQuestion: {row['sql_prompt']}"


def to_sql_prompts(rows: list[Row], *, system_prompt: str = SQL_SYSTEM_PROMPT) -> list[Row]:
    """System C rows: `{"prompt": [system, user], "prompt_suffix": "", **dataset columns}`."""
    return [{**r, "prompt": [{"role": "system", "content": system_prompt},
                             {"role": "user", "content": sql_user_prompt(r)}],
             "prompt_suffix": ""} for r in rows]
