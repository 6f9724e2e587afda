"""SQL corruption for the CoT-filtering dataset (REWARDS.md A): make a gold query subtly wrong.

    corruption = corrupt(sql, rng, schema_of(sql_context))      # p = 0.55, 1–4 operations

The eight operations, each a pure function `op(sql, rng, schema) -> str | None` (None: does not apply):

    remove_where     drop the top-level WHERE clause
    add_condition    AND a condition `column op value` on a schema column into the WHERE (or add one)
    change_aggregate turn the first COUNT/SUM/AVG/MIN/MAX call into another of the five
    remove_column    drop one item of the SELECT list (needs ≥ 2)
    swap_columns     swap two different items of the SELECT list
    add_column       append a schema column the SELECT list lacks
    replace_column   replace one SELECT item by a schema column the list lacks
    replace_values   replace one literal (string, or number outside LIMIT/OFFSET) by another
                     value of the same kind from the example's data

Implementation details:
[D1] Queries are read as tokens (quoted strings and names are single tokens) with their parenthesis
     depth, so "top-level" means depth 0: a WHERE inside a subquery or a comma inside COUNT(a, b) is
     never taken for the outer query's. The SELECT list is the one of the first top-level SELECT (the
     main query after a WITH).
[D2] Plausible corruptions come from the example's own schema and data (`schema_of`): the original
     fell back to generic names ("item_id", "uuid") unless a per-database list was written by hand.
[D3] The corrupted query need not execute (COUNT(*) may become AVG(*)): the policy only reads it to
     write a question, and the score model learns that such a question is wrong.
[D4] `corrupt`: with probability p (0.55) pick n ∈ {1, 2, 3, 4} with weights 0.55/0.30/0.10/0.05
     (the original's stated split), capped by the number of operations that apply, then n distinct
     applicable operations in random order; one that no longer applies after an earlier one, or
     that would undo the corruption (add_column re-adding the column remove_column dropped), is
     skipped. `ops` lists those actually applied; the result differs from the gold iff `ops` is not empty.
[D5] Output whitespace is normalised (single spaces outside literals), also for an unchanged query.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Optional

from rewards.sql_sandbox import split_statements
from rewards.sql_text import schema_names

AGGREGATES = ("COUNT", "SUM", "AVG", "MIN", "MAX")
OPERATORS = ("=", "!=", ">", "<", ">=", "<=", "LIKE", "NOT LIKE", "IN", "NOT IN", "BETWEEN", "IS NULL",
             "IS NOT NULL")
CLAUSE_AFTER_WHERE = {"GROUP", "HAVING", "ORDER", "LIMIT", "UNION", "INTERSECT", "EXCEPT", "WINDOW",
                      "RETURNING", ";"}
P_CORRUPT, COUNT_WEIGHTS = 0.55, (0.55, 0.30, 0.10, 0.05)

_TOKEN = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|\d+(?:\.\d+)?|\w+|\s+"""
                    r"""|<=|>=|<>|!=|\|\||.""", re.S)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Schema:
    """What an example's database offers to corruptions [D2]: sorted, so a seed reproduces choices."""

    columns: tuple[str, ...] = ()
    strings: tuple[str, ...] = ()  # string literals of the INSERTs, unquoted
    numbers: tuple[str, ...] = ()  # numeric literals of the INSERTs, as written


@dataclass(frozen=True)
class Corruption:
    sql: str  # the (possibly) corrupted query
    ops: tuple[str, ...]  # operations applied, in order; () = unchanged


def schema_of(sql_context: str) -> Schema:
    """Columns (CREATE TABLE) and literal values (INSERT) of a database context."""
    _, columns = schema_names(sql_context or "")
    strings, numbers = set(), set()
    for statement in split_statements(sql_context or ""):
        if not statement.lstrip().upper().startswith("INSERT"):
            continue
        for tok in _TOKEN.findall(statement):
            if tok.startswith("'") and len(tok) >= 2:
                strings.add(tok[1:-1].replace("''", "'"))
            elif _NUMBER.fullmatch(tok):
                numbers.add(tok)
    return Schema(tuple(sorted(columns)), tuple(sorted(strings)), tuple(sorted(numbers, key=float)))


# ------------------------------------------------------------------------------------- tokens [D1]
def _tokens(sql: str) -> tuple[list[str], list[int]]:
    """Tokens of `sql` and the parenthesis depth each starts at."""
    toks, depths, depth = _TOKEN.findall(sql), [], 0
    for t in toks:
        if t == ")":
            depth = max(0, depth - 1)
        depths.append(depth)
        if t == "(":
            depth += 1
    return toks, depths


def _join(toks: list[str]) -> str:
    """Tokens back to text with single spaces outside literals [D5]; none after "(" or before ",);"."""
    out: list[str] = []
    for t in _TOKEN.findall("".join(toks)):
        if t.isspace():
            if out and out[-1] not in (" ", "("):
                out.append(" ")
        elif t in (",", ")", ";") and out and out[-1] == " ":
            out[-1] = t
        else:
            out.append(t)
    return "".join(out).strip()


def _find(toks, depths, words, start=0) -> int:
    """Index of the first depth-0 token at or after `start` whose upper case is in `words`, else -1."""
    return next((i for i in range(start, len(toks)) if depths[i] == 0 and toks[i].upper() in words), -1)


def _select_list(toks, depths) -> Optional[tuple[int, int, list[str]]]:
    """(start, end, items) of the first top-level SELECT's list, items as stripped texts."""
    sel = _find(toks, depths, {"SELECT"})
    if sel < 0:
        return None
    start = sel + 1
    while start < len(toks) and (toks[start].isspace() or toks[start].upper() in ("DISTINCT", "ALL")):
        start += 1
    end = _find(toks, depths, {"FROM"} | CLAUSE_AFTER_WHERE | {"WHERE"}, start)
    end = len(toks) if end < 0 else end
    items, current = [], []
    for t, d in zip(toks[start:end], depths[start:end]):
        if t == "," and d == 0:
            items.append(_join(current))
            current = []
        else:
            current.append(t)
    items.append(_join(current))
    return (start, end, items) if all(items) else None


def _with_items(toks, start, end, items) -> str:
    return _join(toks[:start] + [" ", ", ".join(items), " "] + toks[end:])


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ------------------------------------------------------------------------------------- the eight operations
def remove_where(sql: str, rng: random.Random, schema: Schema) -> Optional[str]:
    toks, depths = _tokens(sql)
    where = _find(toks, depths, {"WHERE"})
    if where < 0:
        return None
    end = _find(toks, depths, CLAUSE_AFTER_WHERE, where + 1)
    return _join(toks[:where] + toks[len(toks) if end < 0 else end:])


def add_condition(sql: str, rng: random.Random, schema: Schema) -> Optional[str]:
    toks, depths = _tokens(sql)
    first = next((t.upper() for t in toks if not t.isspace()), "")
    frm = _find(toks, depths, {"FROM"})
    literals = [_quote(s) for s in schema.strings] + list(schema.numbers)
    if not schema.columns or not literals or (frm < 0 and first not in ("UPDATE", "DELETE")):
        return None
    column, op = rng.choice(schema.columns), rng.choice(OPERATORS)
    if op.startswith("IS"):
        condition = f"{column} {op}"
    elif op.endswith("IN"):
        condition = f"{column} {op} ({', '.join(rng.sample(literals, k=min(3, len(literals))))})"
    elif op == "BETWEEN" and len(schema.numbers) > 1:
        low, high = sorted(rng.sample(schema.numbers, k=2), key=float)
        condition = f"{column} BETWEEN {low} AND {high}"
    else:
        condition = f"{column} {'=' if op == 'BETWEEN' else op} {rng.choice(literals)}"
    where = _find(toks, depths, {"WHERE"})
    end = _find(toks, depths, CLAUSE_AFTER_WHERE, max(where, frm, 0) + 1)
    end = len(toks) if end < 0 else end
    keyword = " AND " if where >= 0 else " WHERE "
    return _join(toks[:end] + [keyword, condition, " "] + toks[end:])


def change_aggregate(sql: str, rng: random.Random, schema: Schema) -> Optional[str]:
    toks, _ = _tokens(sql)
    for i, t in enumerate(toks):
        nxt = next((u for u in toks[i + 1:] if not u.isspace()), "")
        if t.upper() in AGGREGATES and nxt == "(":
            toks[i] = rng.choice([a for a in AGGREGATES if a != t.upper()])
            return _join(toks)
    return None


def remove_column(sql: str, rng: random.Random, schema: Schema) -> Optional[str]:
    toks, depths = _tokens(sql)
    found = _select_list(toks, depths)
    if found is None or len(found[2]) < 2:
        return None
    start, end, items = found
    del items[rng.randrange(len(items))]
    return _with_items(toks, start, end, items)


def swap_columns(sql: str, rng: random.Random, schema: Schema) -> Optional[str]:
    toks, depths = _tokens(sql)
    found = _select_list(toks, depths)
    if found is None or len(set(found[2])) < 2:
        return None
    start, end, items = found
    pairs = [(i, j) for i in range(len(items)) for j in range(i + 1, len(items)) if items[i] != items[j]]
    i, j = rng.choice(pairs)
    items[i], items[j] = items[j], items[i]
    return _with_items(toks, start, end, items)


def _absent_columns(items: list[str], schema: Schema) -> list[str]:
    used = {w.lower() for item in items for w in re.findall(r"\w+", item)}
    return [c for c in schema.columns if c.lower() not in used]


def add_column(sql: str, rng: random.Random, schema: Schema) -> Optional[str]:
    toks, depths = _tokens(sql)
    found = _select_list(toks, depths)
    candidates = _absent_columns(found[2], schema) if found else []
    if not candidates:
        return None
    start, end, items = found
    return _with_items(toks, start, end, items + [rng.choice(candidates)])


def replace_column(sql: str, rng: random.Random, schema: Schema) -> Optional[str]:
    toks, depths = _tokens(sql)
    found = _select_list(toks, depths)
    candidates = _absent_columns(found[2], schema) if found else []
    if not candidates:
        return None
    start, end, items = found
    items[rng.randrange(len(items))] = rng.choice(candidates)
    return _with_items(toks, start, end, items)


def replace_values(sql: str, rng: random.Random, schema: Schema) -> Optional[str]:
    toks, _ = _tokens(sql)
    spots, previous_word = [], ""
    for i, t in enumerate(toks):
        if t.startswith("'") and len(t) >= 2:
            others = [s for s in schema.strings if s != t[1:-1].replace("''", "'")]
        elif _NUMBER.fullmatch(t) and previous_word not in ("LIMIT", "OFFSET"):
            others = [n for n in schema.numbers if float(n) != float(t)]
        else:
            others = []
        if others:
            spots.append((i, others))
        if not t.isspace():
            previous_word = t.upper()
    if not spots:
        return None
    i, others = rng.choice(spots)
    new = rng.choice(others)
    toks[i] = _quote(new) if toks[i].startswith("'") else new
    return _join(toks)


Operation = Callable[[str, random.Random, Schema], Optional[str]]
OPERATIONS: dict[str, Operation] = {
    "remove_where": remove_where, "add_condition": add_condition, "change_aggregate": change_aggregate,
    "remove_column": remove_column, "swap_columns": swap_columns, "add_column": add_column,
    "replace_column": replace_column, "replace_values": replace_values,
}


def applicable(sql: str, schema: Schema) -> list[str]:
    """Names of the operations that apply to `sql` (probed with a throwaway generator: no side effect)."""
    return [name for name, op in OPERATIONS.items() if op(sql, random.Random(0), schema) is not None]


def corrupt(sql: str, rng: random.Random, schema: Schema, *, p: float = P_CORRUPT,
            count_weights: tuple[float, ...] = COUNT_WEIGHTS) -> Corruption:
    """With probability p, apply 1–4 distinct applicable operations [D4]; else return `sql` normalised."""
    if rng.random() >= p:
        return Corruption(_join(_tokens(sql)[0]), ())
    names = applicable(sql, schema)
    n = min(rng.choices(range(1, len(count_weights) + 1), weights=count_weights)[0], len(names))
    gold = _join(_tokens(sql)[0])
    out, done = sql, []
    for name in rng.sample(names, n):
        changed = OPERATIONS[name](out, rng, schema)
        if changed is not None and changed != gold:  # [D4] e.g. add_column re-adding a removed column
            out, done = changed, done + [name]
    return Corruption(_join(_tokens(out)[0]), tuple(done))
