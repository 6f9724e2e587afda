"""The inputs every reward function receives, in TRL's calling convention.

    f(prompts, completions, **columns) -> list[float | None]      one value per completion

- `completions[i]` is either the generated text (str) or a chat-style list of messages
  `[{"role": "assistant", "content": "..."}]`; `completion_text` turns both into one string.
- `columns` holds the dataset's columns for the batch, each a list aligned with `completions`
  (`answer`, `sql`, `sql_context`, ...); `column` fetches one of them, checked once.

Implementation details:
[D1] Anything that is not text (None, numbers, odd objects, a message without content) reads as "", so
     a reward function sees the empty completion and gives its documented lowest score; bytes are
     decoded as UTF-8 with replacement characters.
[D2] Several messages (a multi-turn completion) are joined with "\n" in order.
[D3] A missing column is a configuration error and raises (naming the reward and the column);
     a missing value in one row (None) is not: that row's reward is None ("not applicable",
     as in TRL), never a made-up score.
"""
from __future__ import annotations

from typing import Any, Sequence


def _message_text(message: Any) -> str:
    if isinstance(message, str):
        return message
    if isinstance(message, (bytes, bytearray)):
        return bytes(message).decode("utf-8", "replace")  # [D1]
    if not isinstance(message, dict):
        return ""  # [D1]
    content = message.get("content")
    if isinstance(content, (str, bytes, bytearray)):
        return _message_text(content)
    if isinstance(content, (list, tuple)):  # multimodal parts: [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") if isinstance(p, dict) else p for p in content]
        return "".join(p for p in parts if isinstance(p, str))
    return ""  # [D1]


def completion_text(completion: Any) -> str:
    """The text of one completion: a plain string, or the contents of its chat messages.

    Args:
        completion: a str, or a list of message dicts (`{"role": ..., "content": ...}`), or one dict.
    Returns:
        str; "" for anything that holds no text [D1].
    """
    if isinstance(completion, (list, tuple)):
        return "\n".join(_message_text(m) for m in completion)  # [D2]
    return _message_text(completion)


def column(columns: dict, name: str, n: int, *, reward: str, aliases: Sequence[str] = ()) -> list:
    """Dataset column `name` (or the first of `aliases` present) as a list of n values.

    Raises:
        ValueError: the column is absent or its length differs from the number of completions [D3].
    """
    for key in (name, *aliases):
        if key in columns and columns[key] is not None:
            values = columns[key]
            if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
                values = [values] * n  # one scalar for the whole batch
            values = list(values)
            if len(values) != n:
                raise ValueError(f"reward {reward!r}: column {key!r} has {len(values)} values "
                                 f"for {n} completions")
            return values
    wanted = " or ".join(repr(k) for k in (name, *aliases))
    raise ValueError(f"reward {reward!r} needs the dataset column {wanted}; "
                     f"got columns {sorted(columns)}")


def gold_text(value: Any) -> str | None:
    """A gold value as text, or None when the row has none [D3]."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, float) and value != value:  # NaN from a pandas/CSV load
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # 72.0 from a pandas/CSV load is the answer "72", not "72.0"
    try:
        return value if isinstance(value, str) else str(value)
    except ValueError:  # an int over Python's 4,300-digit limit for str(): no usable gold
        return None
