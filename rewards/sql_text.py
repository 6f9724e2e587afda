"""Reading SQL as text (no database): extraction from a completion, statement type, complexity, schema names.

Used by the text-to-SQL rewards of REWARDS.md C (`rewards.sql`) and by the SQL scripts.

Implementation details:
[D1] Extraction follows the original C: the first `<sql>…</sql>` (tags in any case); without one, the
     text from the first "SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "ALTER ", "DROP " or
     "WITH " (any case) up to `</sql>`, `</reasoning>` or just after the first ";". Comments are then
     blanked by a scanner that leaves string literals alone (the original used regexes that could
     also cut "--" inside a string).
[D2] Complexity, as the original: 1.0 plus weighted counts of space-delimited upper-cased features
     (table below). The original counted " JOIN " only between spaces, so features on a new line or
     at the very start ("WITH …") count nothing; `complexity_tokenized` (ours) counts words instead.
[D3] Schema names for the reasoning reward: table and view names and the first word of each column
     definition of every CREATE TABLE, lower-cased; table constraints (PRIMARY KEY (…), FOREIGN KEY,
     UNIQUE, CHECK, CONSTRAINT) are not columns (the original counted "primary", "foreign", …).
"""
from __future__ import annotations

import re

from rewards.sql_sandbox import split_statements

_LEXEME = re.compile(r"""'(?:[^']|'')*'?|"(?:[^"]|"")*"?|`(?:[^`]|``)*`?|\[[^\]]*\]?"""
                     r"|(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))", re.DOTALL)
_SQL_OPEN, _SQL_CLOSE = re.compile("<sql>", re.I), re.compile("</sql>", re.I)
_REASONING_OPEN, _REASONING_CLOSE = re.compile("<reasoning>", re.I), re.compile("</reasoning>", re.I)
_FALLBACK_START = re.compile("(?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|WITH) ", re.I)
_WITH_BODY = re.compile(r"\)\s*(SELECT|INSERT|UPDATE|DELETE)", re.I)


def strip_sql_comments(sql: str) -> str:
    """`sql` with each `-- …` and `/* … */` comment replaced by one space, string literals kept [D1]."""
    return _LEXEME.sub(lambda m: " " if m["comment"] else m.group(), sql)


def _first_block(text: str, opening: re.Pattern, closing: re.Pattern) -> str | None:
    start = opening.search(text)
    end = None if start is None else closing.search(text, start.end())
    return None if end is None else text[start.end():end.start()]


def extract_reasoning(text: str) -> str:
    """The first `<reasoning>…</reasoning>` (tags in any case), stripped; "" without one."""
    return (_first_block(text, _REASONING_OPEN, _REASONING_CLOSE) or "").strip()


def extract_sql(text: str) -> str:
    """The SQL of a C completion [D1]; "" when there is none."""
    sql = _first_block(text, _SQL_OPEN, _SQL_CLOSE)
    if sql is None:
        start = _FALLBACK_START.search(text)
        if start is None:
            return ""
        sql = text[start.start():].split("</sql>", 1)[0].split("</reasoning>", 1)[0]
        sql = sql.split(";", 1)[0] + ";" if ";" in sql else sql
    return strip_sql_comments(sql).strip()


def statement_type(sql: str) -> str:
    """SELECT, INSERT, UPDATE, DELETE, CREATE_TABLE/VIEW/INDEX/OTHER, DROP, ALTER, OTHER, UNKNOWN (as the
    original: the first word decides; a WITH takes the first SELECT/INSERT/UPDATE/DELETE after a ")",
    else WITH_UNKNOWN)."""
    clean = strip_sql_comments(sql).strip()
    if not clean:
        return "UNKNOWN"
    words = clean.split(None, 2)
    first = words[0].upper()
    if first in ("SELECT", "INSERT", "UPDATE", "DELETE", "DROP", "ALTER"):
        return first
    if first == "CREATE":
        second = words[1].upper() if len(words) > 1 else ""
        return f"CREATE_{second}" if second in ("TABLE", "VIEW", "INDEX") else "CREATE_OTHER"
    if first == "WITH":
        body = _WITH_BODY.search(clean)
        return body.group(1).upper() if body else "WITH_UNKNOWN"
    return "OTHER"


# feature → weight, as the original C (REWARDS.md C "complexity") [D2]
COUNTED = {" JOIN ": 0.6, " UNION ": 0.8, " INTERSECT ": 0.8, " EXCEPT ": 0.8, "(SELECT": 1.0,
           " WITH ": 0.8, "COUNT(": 0.3, "SUM(": 0.3, "AVG(": 0.3, "MAX(": 0.3, "MIN(": 0.3,
           " DISTINCT ": 0.3, " CASE ": 0.4, " OVER(": 1.0}
PRESENT = {" WHERE ": 0.2, " GROUP BY ": 0.5, " HAVING ": 0.7, " ORDER BY ": 0.3, " LIMIT ": 0.1}
IN_WHERE = {" AND ": 0.15, " OR ": 0.20, " IN ": 0.2, " LIKE ": 0.1, " BETWEEN ": 0.2, " EXISTS ": 0.3}
_WHERE_ENDS = (" GROUP BY ", " ORDER BY ", " LIMIT ", " OFFSET ")


def complexity(sql: str) -> float:
    """The original C's complexity score of one query (≥ 1.0; 0.0 for empty SQL) [D2].

    c = 1 + Σ_counted w·count(feature) + Σ_present w·[feature in sql] + Σ_in_where w·count(feature
    in the text between the first " WHERE " and the next " GROUP BY "/" ORDER BY "/" LIMIT "/" OFFSET ").
    """
    if not sql:
        return 0.0
    upper = sql.upper()
    score = 1.0 + sum(w * upper.count(f) for f, w in COUNTED.items())
    score += sum(w for f, w in PRESENT.items() if f in upper)
    where = upper.find(" WHERE ")
    if where >= 0:
        rest = upper[where + len(" WHERE "):]
        ends = [i for i in (rest.find(e) for e in _WHERE_ENDS) if i >= 0]
        clause = rest[:min(ends)] if ends else rest
        score += sum(w * clause.count(f) for f, w in IN_WHERE.items())
    return score


def complexity_tokenized(sql: str) -> float:
    """`complexity` with the same weights, counted on words (ours) [D2].

    String literals and comments are dropped and the query is rewritten as upper-cased tokens joined
    by single spaces, with "(" glued to a preceding COUNT/SUM/AVG/MAX/MIN/OVER and to a following
    SELECT; so "\nJOIN", "COUNT (x)", "( SELECT" and a leading "WITH" all count.
    """
    if not sql:
        return 0.0
    no_strings = _LEXEME.sub(lambda m: " " if m["comment"] else "''", sql)
    text = " " + " ".join(re.findall(r"\w+|[^\w\s]", no_strings.upper())) + " "
    text = re.sub(r"\b(COUNT|SUM|AVG|MAX|MIN|OVER) \(", r"\1(", text.replace(" ( SELECT ", " (SELECT "))
    return complexity(text)


_CREATE_TABLE = re.compile(r"\s*CREATE\s+(?:TEMP\w*\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?"
                           r"[`\"\[]?(\w+)[`\"\]]?\s*\((.*)\)", re.I | re.S)
_CREATE_VIEW = re.compile(r"\s*CREATE\s+(?:TEMP\w*\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?[`\"\[]?(\w+)", re.I)
_COLUMN_NAME = re.compile(r"\s*[`\"\[]?(\w+)")
_CONSTRAINTS = {"primary", "foreign", "unique", "check", "constraint"}  # [D3]


def _top_level_parts(body: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for m in re.finditer(r"[(),]", body):
        depth += {"(": 1, ")": -1}.get(m.group(), 0)
        if m.group() == "," and depth == 0:
            parts.append(body[start:m.start()])
            start = m.end()
    return parts + [body[start:]]


def schema_names(sql_context: str) -> tuple[set[str], set[str]]:
    """(table and view names, column names) declared in a context, lower-cased [D3]."""
    tables, columns = set(), set()
    for statement in split_statements(strip_sql_comments(sql_context or "")):
        view = _CREATE_VIEW.match(statement)
        table = _CREATE_TABLE.match(statement)
        if view:
            tables.add(view.group(1).lower())
        if table:
            tables.add(table.group(1).lower())
            for part in _top_level_parts(table.group(2)):
                name = _COLUMN_NAME.match(part)
                if name and name.group(1).lower() not in _CONSTRAINTS:
                    columns.add(name.group(1).lower())
    return tables, columns
