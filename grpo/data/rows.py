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
    [D5] Files are UTF-8 (RFC 8259 §8.1; a UTF-8 byte-order mark is accepted). A line that is not UTF-8
         (a Latin-1 or Windows-1252 file) is a bad row at its "file:line"; a UTF-16/32 file (byte-order
         mark, or NUL bytes in its first line) is one error for the whole file. Both say how to convert.
    [D6] A source without a single row (empty file, blank lines only, `[]`, an empty hub split) is an
         error naming it: nothing downstream can train or evaluate on zero rows.
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


_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-16 LE/BE, UTF-32 BE (32 LE starts as 16 LE)
_UTF8_BOM = b"\xef\xbb\xbf"


def _check_not_wide(first_line: bytes, path: Path) -> None:
    """Raise if the file is UTF-16/32 text [D5]: no line of it could be read as UTF-8 JSON."""
    if first_line.startswith(_WIDE_BOMS) or b"\x00" in first_line:
        raise DataError(f"{path}:1: the file is UTF-16 or UTF-32 text, not UTF-8; convert it, e.g. "
                        f"`iconv -f UTF-16 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`")


def _not_utf8(where: str, byte: int, column: int) -> DataError:
    return DataError(f"{where}: not UTF-8 (byte 0x{byte:02x} at byte {column} of the line: a Latin-1 or "
                     "Windows-1252 file?); re-save the file as UTF-8, e.g. `iconv -f latin1 -t UTF-8`")  # [D5]


def _jsonl_items(path: Path) -> Iterator[tuple[str, Any]]:
    n_lines = n_items = 0
    with path.open("rb") as f:  # bytes, so that a decoding error is located at its line [D5]
        for line_no, raw in enumerate(f, start=1):  # [D1] 1-based
            n_lines = line_no
            if line_no == 1:
                _check_not_wide(raw, path)
                raw = raw.removeprefix(_UTF8_BOM)
            if not raw.strip():
                continue
            n_items += 1
            where = f"{path}:{line_no}"
            try:
                yield where, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield where, _not_utf8(where, raw[e.start], e.start + 1)
            except json.JSONDecodeError as e:
                yield where, DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
            except ValueError as e:  # an integer over Python's 4,300-digit limit: not a JSONDecodeError
                yield where, DataError(f"{where}: invalid JSON ({e})")
    if n_items == 0:  # [D6]
        raise DataError(f"{path}: no rows: the file is empty" if n_lines == 0 else
                        f"{path}: no rows: all {n_lines} line(s) of the file are blank")


def read_utf8(path: Path) -> str:
    """The whole file as text. UTF-16/32 text, or a byte that is not UTF-8, is a DataError naming
    "file:line" [D5]; a UTF-8 byte-order mark is dropped."""
    data = path.read_bytes()
    _check_not_wide(data.partition(b"\n")[0], path)
    data = data.removeprefix(_UTF8_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise _not_utf8(f"{path}:{line_no}", data[e.start], column) from None


def _json_items(path: Path) -> Iterator[tuple[str, Any]]:
    text = read_utf8(path)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # an integer over Python's 4,300-digit limit: not a JSONDecodeError
        raise DataError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(items).__name__}")
    if not items:  # [D6]
        raise DataError(f"{path}: no rows: the JSON array is empty")
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
    i = -1
    for i, item in enumerate(ds):
        yield f"{source}[{split}][{i}]", item  # [D1]
    if i < 0:  # [D6]
        raise DataError(f"{source}[{split}]: no rows: the split is empty")


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
        DataError listing the location ("file:line") and problem of each bad row [D1, D2], including lines
        that are not UTF-8; or one naming the file when it is UTF-16/32 [D5] or holds no row [D6].
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
