"""Typed settings for every script: a dataclass, a config file, then command-line overrides.

    settings = parse_settings(TrainSettings)          # reads sys.argv
    python scripts/train_grpo.py --config configs/gsm8k.json --learning-rate 1e-5

[D1] Order: dataclass defaults < `--config FILE` (JSON, or YAML by suffix) < command-line flags.
[D2] Field docs are the string literal under each field (cleanrl style); they become `--help` text.
[D3] Every field is a flag in both spellings, `--learning-rate` and `--learning_rate`, because the
     systems we serve used both (GSM8K pipeline: `--model-path`; SEGA: `--lambda_fork`).
[D4] Unknown keys and values of the wrong type are errors naming the key (and the file) and listing
     the valid keys; ints are accepted for floats, nothing else is coerced from a config file.
[D6] Sectioned config files: one file can serve a whole pipeline (configs/gsm8k.json). When the top
     level has the key `common` or the script's `section`, the script applies `common`, then its own
     section; other scripts' sections are skipped. Any other file is applied whole.
[D7] `aliases` rename flags of the original systems' commands (`--lr` → `--learning_rate`).
[D5] Errors users cause (config, data, model paths) are `UserError`s; `cli_main` prints them as one
     line `error: ...` and exits with status 2, never with a traceback from inside a library.
[D8] Under torchrun an error that every rank raises alike is printed by rank 0 only (all ranks still
     exit with 2); an error of one rank (its node lacks a file) is printed by that rank.
[D9] Ranges are checked before anything loads: each settings class declares the valid range of its own
     fields, and the rules between them, in a `validate()` method built from the helpers below
     (`at_least(self, "num_generations", 2, why=...)`). `parse_settings` runs the `validate()` of every
     class in the MRO, base classes first, once the config file and the flags are applied (a rule between
     two settings must not fail on a half-applied layer), and before the config is printed. A value out
     of range is one line `invalid value of <setting> = <value>: <what is allowed>` (a ConfigError, so
     torchrun prints it once [D8]). None passes every range check: where a field may be None, None is its
     documented "off" or "default". Rules that need the number of processes read torchrun's WORLD_SIZE
     from the environment: torch.distributed has not started yet.
[D10] Floats are finite: NaN and ±inf are rejected for every float setting, from a file or a flag.
[D11] A config file is UTF-8 text (a BOM is allowed). An empty one, or YAML holding only comments, is an
     error in either format ("empty config file"): it is more likely the wrong or a truncated file than
     a wish for the defaults, which `{}` (or no --config at all) asks for explicitly.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import json
import math
import os
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

S = TypeVar("S")


class UserError(Exception):
    """A problem with what the user gave us (config, data, paths): reported without a traceback [D5].

    `every_rank`: every torchrun rank raises the same error (a bad setting, a checkpoint the ranks
    disagree on), so only rank 0 prints it [D8].
    """

    every_rank = False

    def __init__(self, message: str, *, every_rank: bool | None = None):
        super().__init__(message)
        if every_rank is not None:
            self.every_rank = every_rank


class ConfigError(UserError, ValueError):
    """A setting that is unknown, of the wrong type, or unreadable from its file (the same on every rank)."""

    every_rank = True


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each dataclass field [D2], from the class source (empty if unavailable)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


# ------------------------------------------------------------------------------------- type checking
def _check_type(key: str, value: Any, tp: Any, where: str) -> Any:
    """Return `value` if it fits the annotation `tp` (ints allowed for floats), else raise [D4]."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None) and value is None:
                return None
        others = [arg for arg in args if arg is not type(None)]
        if len(others) == 1:  # Optional[X]: X's own message (e.g. "must be a finite number")
            return _check_type(key, value, others[0], where)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: `{key}` must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: `{key}` must be one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: `{key}` must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_check_type(key, v, inner, where) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: `{key}` must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # [D10]
                raise ConfigError(f"{where}: `{key}` must be a finite number, got {value!r}")
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: `{key}` must be {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    return getattr(tp, "__name__", str(tp))


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return ConfigError(f"{where}: unknown key `{key}`{hint}. Valid keys: {', '.join(valid)}")


# ------------------------------------------------------------------------------------- files
def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML (by suffix) config file into a dict, with errors naming the file [D5]."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # [D11]
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                          "save the config file as UTF-8") from None
    empty = ConfigError(f"{path}: empty config file; write the settings, or {{}} for none")
    if not text.strip():
        raise empty
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
    except Exception as e:  # yaml.YAMLError carries its own line/column in str(e)
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if data is None:  # YAML holding only comments [D11]
        raise empty
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of setting names to values")
    return data


def settings_from_dict(cls: type[S], data: dict[str, Any], *, where: str = "config",
                       base: S | None = None) -> S:
    """Build `cls` from `data` on top of `base` (or the defaults), checking keys and types [D4]."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values = dataclasses.asdict(base) if base is not None else {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in fields:
            raise _unknown_key(str(raw_key), sorted(fields), where)
        values[key] = _check_type(key, value, hints[key], where)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:  # __post_init__ validation or a missing required field
        raise ConfigError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------------- ranges [D9]
def invalid(name: str, value: Any, allowed: str) -> ConfigError:
    """The one-line error of a setting out of its range [D9]: the setting, its value, what is allowed."""
    return ConfigError(f"invalid value of {name} = {value!r}: {allowed}")


def require(settings: Any, name: str, ok: bool, allowed: str) -> None:
    """Raise `invalid` for the field `name` of `settings` unless `ok`."""
    if not ok:
        raise invalid(name, getattr(settings, name), allowed)


def _why(why: str) -> str:
    return f" ({why})" if why else ""


def at_least(settings: Any, name: str, low: float, *, why: str = "") -> None:
    """settings.<name> >= low; None passes [D9]."""
    value = getattr(settings, name)
    require(settings, name, value is None or value >= low, f"must be >= {low}{_why(why)}")


def above(settings: Any, name: str, low: float, *, why: str = "") -> None:
    """settings.<name> > low; None passes [D9]."""
    value = getattr(settings, name)
    require(settings, name, value is None or value > low, f"must be > {low}{_why(why)}")


def within(settings: Any, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False,
           why: str = "") -> None:
    """low <= settings.<name> <= high, an end excluded when open; None passes [D9]."""
    value = getattr(settings, name)
    ok = value is None or ((value > low if low_open else value >= low)
                           and (value < high if high_open else value <= high))
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    require(settings, name, ok, f"must be in {interval}{_why(why)}")


def path_name(settings: Any, name: str, *, kind: str = "folder") -> None:
    """settings.<name> names a folder (or file) of its own: not blank, and not ending in '.' or '..' (the
    folder itself or the one above, e.g. the outputs root); None passes [D9]."""
    value = getattr(settings, name)
    require(settings, name, value is None or (bool(value.strip()) and Path(value).name not in ("", ".", "..")),
            f"must name a {kind} of its own (not empty, '.' or '..')")


SEED_RANGE = (0, 2**32 - 1)  # what NumPy, torch and Python all accept


def check_settings(settings: Any) -> None:
    """Run the `validate()` of every class in the MRO of `settings`, base classes first [D9]."""
    for klass in reversed(type(settings).__mro__):
        validate = vars(klass).get("validate")
        if validate is not None:
            validate(settings)


# ------------------------------------------------------------------------------------- flags
class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):  # a flag without its value: one line, not argparse's usage and exit [D5]
        raise ConfigError(f"command line: {message}")


def _parse_flag(key: str, text: str, tp: Any) -> Any:
    """Turn one command-line string into a value of type `tp` (JSON syntax allowed for lists)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--{key}: expected true/false, got {text!r}")
    if origin in (list, tuple):
        items = json.loads(text) if text.startswith("[") else [s for s in text.split(",") if s]
        return [_parse_flag(key, str(v), args[0] if args else str) for v in items]
    if origin is Literal:
        for a in args:
            if str(a) == text:
                return a
        raise ConfigError(f"--{key}: must be one of {list(args)}, got {text!r}")
    try:
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"--{key}: expected {tp.__name__}, got {text!r}") from None
    if tp is dict or origin is dict:
        return json.loads(text)
    return text


def _rename_flag(arg: str, aliases: dict[str, str]) -> str:
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg[2:].partition("=")
    new = aliases.get(name.replace("-", "_"))
    return f"--{new}{eq}{value}" if new else arg


def _apply_config_file(cls: type[S], path: str, section: str | None) -> S:
    data = load_config_file(path)
    layers = [("common", data.get("common", {})), (section, data.get(section, {}))] \
        if section and ("common" in data or section in data) else [(None, data)]  # [D6]
    settings = cls()  # type: ignore[call-arg]
    for name, layer in layers:
        where = f"{path} [{name}]" if name else str(path)
        if not isinstance(layer, dict):
            raise ConfigError(f"{where}: a section must be a mapping of setting names to values")
        settings = settings_from_dict(cls, layer, where=where, base=settings)
    return settings


def parse_settings(cls: type[S], argv: list[str] | None = None, *, description: str | None = None,
                   print_config: bool = True, section: str | None = None,
                   aliases: dict[str, str] | None = None) -> S:
    """Defaults < `--config FILE` (its `common` + `section` parts [D6]) < flags [D1], then every class's
    `validate()` [D9]: a bad value stops here, before any model, data or run folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [_rename_flag(a, aliases or {}) for a in argv]  # [D7]
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    parser = _ArgumentParser(description=description, allow_abbrev=False,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="JSON or YAML file of settings, applied before the flags below")
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        names = dict.fromkeys([f"--{f.name.replace('_', '-')}", f"--{f.name}"])  # [D3]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        tp = hints[f.name]
        help_text = f"{docs.get(f.name, '')} (default: {default!r})".replace("%", "%%")  # argparse formats %
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, metavar=_metavar(tp),
                                      help=help_text)
        if tp is bool:
            kwargs["nargs"] = "?"
            kwargs["const"] = "true"
        parser.add_argument(*names, **kwargs)
    ns_obj, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        valid = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        raise _unknown_key(flag.lstrip("-").split("=")[0].replace("-", "_"), valid, "command line")
    ns = vars(ns_obj)
    settings = cls()  # type: ignore[call-arg]
    if ns.get("config"):
        settings = _apply_config_file(cls, ns["config"], section)
    flags = {k: _parse_flag(k, v, hints[k]) for k, v in ns.items() if k != "config"}
    settings = settings_from_dict(cls, flags, where="command line", base=settings)
    check_settings(settings)  # [D9]
    if print_config:
        print(format_settings(settings), file=sys.stderr)
    return settings


def _metavar(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    return _type_name(tp).upper().replace(" ", "_")


def format_settings(settings: Any) -> str:
    """The resolved settings as aligned `key = value` lines (printed at start of every script)."""
    d = dataclasses.asdict(settings)
    width = max((len(k) for k in d), default=0)
    lines = [f"# {type(settings).__name__}"] + [f"{k:<{width}} = {v!r}" for k, v in d.items()]
    return "\n".join(lines)


def cli_main(main: Callable[[], Any]) -> None:
    """Run a script's `main`, turning `UserError`s into one line and exit status 2 [D5]."""
    try:
        main()
    except UserError as e:
        if not (e.every_rank and int(os.environ.get("RANK", "0")) != 0):  # [D8]
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
