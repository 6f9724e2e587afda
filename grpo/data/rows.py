"""Reading rows from a hub dataset or a local file, with errors that say where a bad row is.

Every task loader of this project (`gsm8k`, `arithmetic`, `text_to_sql`, `sega.data`) reads through
`load_rows`, so all of them accept the same sources and report problems the same way.

Sources accepted by `load_rows(source, split=...)`:
    path/to/file.jsonl   one JSON object per line (blank lines skipped); `split` is ignored
    path/to/file.json    a JSON array of objects; `split` is ignored
    path/to/dir/         `dir/{split}.jsonl`, else `dir/{split}.json`
    owner/name           a Hugging Face hub id, via `datasets.load_dataset(source, config, split=split)`
An existing local path always wins over a hub id of the same spelling.

Implementation details:
    [D1] Row locations are "file:line" (1-based line, as editors count) for JSONL, "file[i]" (0-based
         array index) for JSON and "owner/name[split][i]" (0-based, as `dataset[i]`) for hub rows.
    [D2] All bad rows of a file are collected (the first `MAX_REPORTED` are listed) before raising one
         `DataError`, so a user fixes a file in one pass instead of one error per run.
    [D3] Optional keys may be missing or null; a null optional key is kept as None. `bool` is never
         accepted where `int` or `float` is asked for (JSON `true` is not a count).
    [D4] `limit` counts good rows and stops reading there, so `limit=8` on a huge file is cheap; bad rows
         after the limit are not looked at.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from grpo.config import UserError

Row = dict[str, Any]
Schema = Mapping[str, "type | tuple[type, ...]"]  # key -> accepted type(s)

MAX_REPORTED = 10  # [D2] bad rows listed in one error message


class DataError(UserError, ValueError):
    """A data source is missing, unreadable, or holds rows that do not fit the expected schema."""


def _type_name(t: type | tuple[type, ...]) -> str:
    return " or ".join(x.__name__ for x in t) if isinstance(t, tuple) else t.__name__


def _type_ok(value: Any, t: type | tuple[type, ...]) -> bool:
    types = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in types:  # [D3]
        return False
    return isinstance(value, types)


def check_row(row: Any, where: str, *, required: Schema, optional: Schema | None = None) -> Row:
    """Return `row` if it is an object with every `required` key of the right type, else raise.

    Keys not named in either schema are kept untouched. Raises `DataError` naming `where`.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key, t in required.items():
        if key not in row:
            raise DataError(f"{where}: missing key {key!r} (required keys: {', '.join(required)})")
        if not _type_ok(row[key], t):
            raise DataError(f"{where}: key {key!r} must be {_type_name(t)}, got {type(row[key]).__name__}")
    for key, t in (optional or {}).items():
        if row.get(key) is not None and not _type_ok(row[key], t):  # [D3]
            raise DataError(f"{where}: key {key!r} must be {_type_name(t)} or null, "
                            f"got {type(row[key]).__name__}")
    return row


def _jsonl_items(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):  # [D1] 1-based
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                yield where, DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})")


def _json_items(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(items).__name__}")
    for i, item in enumerate(items):
        yield f"{path}[{i}]", item


def _hub_items(source: str, split: str, config: str | None) -> Iterator[tuple[str, Any]]:
    import datasets  # imported here: reading local files must not pay for (or need) `datasets`

    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as e:  # offline, unknown id, unknown split...: say what was tried and what to do
        raise DataError(f"could not load hub dataset {source!r} (config={config!r}, split={split!r}): "
                        f"{type(e).__name__}: {e}. Offline? Pass a local .jsonl/.json file or a "
                        f"directory holding {split}.jsonl instead.") from e
    for i, item in enumerate(ds):
        yield f"{source}[{split}][{i}]", item  # [D1]


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".json")) or "\\" in source


def iter_items(source: str | Path, *, split: str = "train",
               config: str | None = None) -> Iterator[tuple[str, Any]]:
    """Yield `(where, item)` for every raw item of `source` (see the module docstring for sources).

    `item` is whatever the source holds (normally a dict), or a `DataError` for an unparseable JSONL
    line, so that callers can collect every problem of a file [D2].
    """
    path = Path(source).expanduser()
    if path.is_dir():
        for name in (f"{split}.jsonl", f"{split}.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            found = sorted(p.name for p in path.iterdir() if p.suffix in (".jsonl", ".json"))
            raise DataError(f"{path}: no {split}.jsonl or {split}.json for split {split!r} "
                            f"(found: {', '.join(found) or 'no .jsonl/.json files'})")
    if path.is_file():
        if path.suffix == ".json":
            yield from _json_items(path)
        else:
            yield from _jsonl_items(path)
    elif isinstance(source, Path) or _looks_like_path(str(source)):
        raise DataError(f"{source}: no such file or directory")
    else:
        yield from _hub_items(str(source), split, config)


def load_rows(source: str | Path, *, split: str = "train", config: str | None = None,
              required: Schema, optional: Schema | None = None, limit: int | None = None,
              parse: Callable[[Row], Row] | None = None) -> list[Row]:
    """Read, validate and return the rows of `source` as plain dicts (extra keys kept).

    Args:
        source: local .jsonl / .json / directory, or a hub id (module docstring).
        split: split name for a directory or a hub id.
        config: hub config name (e.g. "main" for openai/gsm8k); unused for local files.
        required / optional: key -> type(s) each row must / may have (`check_row`).
        limit: stop after this many good rows [D4]; None reads everything.
        parse: applied to each row that passed the schema check; a `ValueError` it raises is reported
            like a schema error, at the row's location (e.g. a GSM8K answer without `####`).
    Returns:
        list of dicts, in file order.
    Raises:
        DataError listing the location ("file:line") and problem of each bad row [D1, D2].
    """
    assert limit is None or limit >= 0, f"limit must be >= 0 or None, got {limit}"
    rows: list[Row] = []
    problems: list[str] = []
    for where, item in iter_items(source, split=split, config=config):
        if limit is not None and len(rows) >= limit:  # [D4]
            break
        try:
            if isinstance(item, DataError):
                raise item
            row = check_row(dict(item) if isinstance(item, Mapping) else item, where,
                            required=required, optional=optional)
        except DataError as e:
            problems.append(str(e))
            continue
        try:
            rows.append(parse(row) if parse is not None else row)
        except ValueError as e:
            problems.append(f"{where}: {e}")
    if problems:  # [D2]
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DataError(f"{len(problems)} bad row(s) in {source}:\n  {shown}{more}")
    return rows
