"""Format rewards for the four tag schemes (REWARDS.md A, B, C, E) and the tag readers they share.

    A  <think>…</think><score>x</score>                       think_score_format (ours)
    B  <start_working_out>…<end_working_out><SOLUTION>…</SOLUTION>
                                                              match_format_exactly, match_format_approximately
    C  <reasoning>…</reasoning><sql>…</sql>                   sql_format (original), sql_format_strict (ours)
    E  <reasoning>\\n…\\n</reasoning>\\n<answer>\\n…\\n</answer>\\n
                                                              strict_format, soft_format, xml_count

Implementation details:
[D1] Every reader runs in linear time with `str.find` or a regex without nested repetition, so a
     1 MB completion full of repeated tags costs one pass; the originals' `.*?` regexes could take
     quadratic time on such text. Each reader is written to give the same answer as the original
     regex on every input (tests compare them on random tag soups).
[D2] Where the original regex and REWARDS.md disagree, REWARDS.md wins and the difference is named in
     the function's docstring (e.g. the E regexes lacked re.DOTALL, so multi-line reasoning never
     matched; B's used re.MULTILINE, so text on a line after `</SOLUTION>` still matched).
[D3] B's chat template ends the prompt with `<start_working_out>`, so B's rewards never look for it.
[D4] B reads its answer two ways, as the original did: `solution_block` with the end anchor (the layout
     `match_format_exactly` rewards; also `check_answer_strict`) and `solution_answer` without it (the
     guess of `check_answer`, so text may follow `</SOLUTION>`; issue #13 item 2).
[D5] A's think tags are matched in any ASCII case (`<THINK>`), as the original does; `<score>` is
     matched as written (REWARDS.md A names only the think tag as case-insensitive).
"""
from __future__ import annotations

import re

from rewards.inputs import completion_text

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # unambiguous: no backtracking


def first_block(text: str, open_tag: str, close_tag: str, start: int = 0) -> str | None:
    """Text between the first `open_tag` at or after `start` and the first `close_tag` after it
    (`re.compile(open(.*?)close, re.DOTALL).search(text, start)`)."""
    i = text.find(open_tag, start)
    if i < 0:
        return None
    j = text.find(close_tag, i + len(open_tag))
    return None if j < 0 else text[i + len(open_tag):j]


def blocks_in_order(text: str, first: str, second: str, *, ignore_case: bool = False) -> bool:
    """Whether `<first>…</first>\\s*<second>…</second>` occurs anywhere (re.DOTALL search) [D1].

    The leftmost `</first>\\s*<second>` joint after the first `<first>` decides: a `</second>` after it
    exists iff one exists after any later joint.
    """
    flags = re.IGNORECASE if ignore_case else 0
    opened = re.compile(re.escape(f"<{first}>"), flags).search(text)
    if opened is None:
        return False
    joint = re.compile(re.escape(f"</{first}>") + r"\s*" + re.escape(f"<{second}>"), flags)
    found = joint.search(text, opened.end())
    return found is not None and re.compile(re.escape(f"</{second}>"), flags).search(
        text, found.end()) is not None


# ---------------------------------------------------------------- A: <think>…</think><score>x</score>
_THINK_OPEN = re.compile("<think>", re.IGNORECASE | re.ASCII)  # [D5]
_THINK_CLOSE = re.compile("</think>", re.IGNORECASE | re.ASCII)


def read_score(text: str) -> float | None:
    """A's predicted score: the first `<score>…</score>` after the thinking, holding one decimal number
    in [0, 1] (REWARDS.md A).

    The thinking runs from the first `<think>` to the first `</think>` after it, both in any case [D5];
    a `<score>` inside it does not count (issue #13 item 6(c): it used to be read, and `<THINK>` gave None).
    Returns None when there is no `<think>`, no `</think>` after it, no score block after that, a block
    that is not exactly one number (surrounding whitespace allowed), or a number outside [0, 1].
    """
    opened = _THINK_OPEN.search(text)
    closed = None if opened is None else _THINK_CLOSE.search(text, opened.end())
    if closed is None:
        return None
    block = first_block(text, "<score>", "</score>", closed.end())
    if block is None or _NUMBER.fullmatch(block.strip()) is None:
        return None
    score = float(block.strip())  # ASCII digits only, so float() reads exactly what matched
    return score if 0.0 <= score <= 1.0 else None


def think_score_format(prompts, completions, **columns) -> list[float]:
    """A's layout, strictly: `<think>reasoning</think> <score>x</score>` and nothing else (ours).

    | completion (stripped)                                                              | reward |
    |------------------------------------------------------------------------------------|--------|
    | `<think>` non-empty `</think>` whitespace `<score>x</score>`, x in [0,1], tags once | 1.0    |
    | anything else (missing, repeated or misordered tag, empty think, bad score, text after) | 0.0 |

    Its tags are matched as written (`<THINK>` scores 0.0 here; `read_score`, the originals' reader, accepts it).
    """
    return [1.0 if _is_think_score(completion_text(c)) else 0.0 for c in completions]


def _is_think_score(text: str) -> bool:
    t = text.strip()
    tags = ("<think>", "</think>", "<score>", "</score>")
    if any(t.count(tag) != 1 for tag in tags) or not (t.startswith("<think>") and t.endswith("</score>")):
        return False
    think_end, score_start = t.find("</think>"), t.find("<score>")
    return (score_start > think_end and t[think_end + len("</think>"):score_start].strip() == ""
            and t[len("<think>"):think_end].strip() != "" and read_score(t) is not None)


# ---------------------------------------------------------------- B: <end_working_out><SOLUTION>…</SOLUTION>
def solution_block(text: str) -> str | None:
    """B's exact layout [D4]: text between the first `<SOLUTION>` after the first `<end_working_out>` and
    a `</SOLUTION>` that ends the completion (only whitespace after); None when there is no such layout.

    Same result as the original `<end_working_out>.*?<SOLUTION>(.+?)</SOLUTION>\\s*$` with re.DOTALL [D1]
    (the original's re.MULTILINE, which let `$` match at any line end, is not kept [D2]).
    Used by `match_format_exactly` and `check_answer_strict`; `check_answer` reads `solution_answer`.
    """
    end_working = text.find("<end_working_out>")
    if end_working < 0:
        return None
    start = text.find("<SOLUTION>", end_working + len("<end_working_out>"))
    body = text.rstrip()  # str.rstrip and the regex's \s strip the same (Unicode) whitespace
    if start < 0 or not body.endswith("</SOLUTION>"):
        return None
    start += len("<SOLUTION>")
    end = len(body) - len("</SOLUTION>")
    return body[start:end] if end > start else None  # (.+?) needs one character


def solution_answer(text: str) -> str | None:
    """B's guess as the original `check_answer` reads it [D4]: text between the first `<SOLUTION>` after
    the first `<end_working_out>` and the next `</SOLUTION>` (at least one character between them, as
    `(.+?)` needs); anything may follow. None when there is no such block.

    Same result as `<end_working_out>.*?<SOLUTION>(.+?)</SOLUTION>` searched with re.DOTALL [D1]:
    `match_format_exactly`'s regex without its end anchor `\\s*$` (REWARDS.md B). Later `<SOLUTION>`s never
    matter: a `</SOLUTION>` that closes a later one would also close the first.
    """
    end_working = text.find("<end_working_out>")
    start = -1 if end_working < 0 else text.find("<SOLUTION>", end_working + len("<end_working_out>"))
    if start < 0:
        return None
    start += len("<SOLUTION>")
    end = text.find("</SOLUTION>", start + 1)  # (.+?) needs one character
    return None if end < 0 else text[start:end]


def match_format_exactly(prompts, completions, **columns) -> list[float]:
    """B's exact layout (original).

    | completion                                                                      | reward |
    |---------------------------------------------------------------------------------|--------|
    | `<end_working_out>`, later `<SOLUTION>`, non-empty answer, `</SOLUTION>`, then only whitespace | 3.0 |
    | anything else (no `<end_working_out>`, empty answer, text after `</SOLUTION>`)  | 0.0    |
    """
    return [3.0 if solution_block(completion_text(c)) is not None else 0.0 for c in completions]


def match_format_approximately(prompts, completions, **columns) -> list[float]:
    """B's tag count (original): each of three tags should occur exactly once [D3].

    | for each of `<end_working_out>`, `<SOLUTION>`, `</SOLUTION>`   | adds  |
    |-----------------------------------------------------------------|-------|
    | occurs exactly once                                             | +0.5  |
    | occurs 0 times or more than once                                | −1.0  |

    Range: −3.0 (no tag) … +1.5 (each once).
    """
    tags = ("<end_working_out>", "<SOLUTION>", "</SOLUTION>")
    return [sum(0.5 if text.count(tag) == 1 else -1.0 for tag in tags)
            for text in map(completion_text, completions)]


# ---------------------------------------------------------------- C: <reasoning>…</reasoning><sql>…</sql>
def sql_format(prompts, completions, **columns) -> list[float]:
    """C's format reward, ×1.0 (original `soft_format_reward_func`, the one C trained with).

    | completion (tags matched case-insensitively)                                  | reward |
    |-------------------------------------------------------------------------------|--------|
    | `<reasoning>…</reasoning>` whitespace `<sql>…</sql>` somewhere (contents may be empty) | 1.0 |
    | anything else                                                                 | 0.0    |
    """
    return [1.0 if blocks_in_order(completion_text(c), "reasoning", "sql", ignore_case=True) else 0.0
            for c in completions]


def sql_format_strict(prompts, completions, **columns) -> list[float]:
    """C's layout, strictly (ours): the whole completion is `<reasoning>…</reasoning> <sql>…</sql>`.

    | completion                                                                      | reward |
    |---------------------------------------------------------------------------------|--------|
    | each tag once (case-sensitive), in order, non-empty contents, only whitespace outside | 1.0 |
    | anything else (repeated tag, empty SQL, text before, between or after)          | 0.0    |
    """
    return [1.0 if _is_reasoning_sql(completion_text(c)) else 0.0 for c in completions]


def _is_reasoning_sql(text: str) -> bool:
    t = text.strip()
    tags = ("<reasoning>", "</reasoning>", "<sql>", "</sql>")
    if any(t.count(tag) != 1 for tag in tags) or not (t.startswith("<reasoning>") and t.endswith("</sql>")):
        return False
    reasoning_end, sql_start = t.find("</reasoning>"), t.find("<sql>")
    return (sql_start > reasoning_end and t[reasoning_end + len("</reasoning>"):sql_start].strip() == ""
            and t[len("<reasoning>"):reasoning_end].strip() != ""
            and t[sql_start + len("<sql>"):-len("</sql>")].strip() != "")


# ---------------------------------------------------------------- E: reasoning / answer lines
_E_HEAD, _E_JOINT, _E_TAIL = "<reasoning>\n", "\n</reasoning>\n<answer>\n", "\n</answer>\n"


def strict_format(prompts, completions, **columns) -> list[float]:
    """E's strict format (original `strict_format_reward_func`).

    | completion                                                                      | reward |
    |---------------------------------------------------------------------------------|--------|
    | exactly `<reasoning>\\n` R `\\n</reasoning>\\n<answer>\\n` A `\\n</answer>\\n`, any R, A | 0.5 |
    | anything else (text before or after, missing newline, extra newline at the end)  | 0.0    |

    [D2] The original regex lacked re.DOTALL (only one-line R and A matched) and its `\\n$` also accepted
    one extra trailing newline; REWARDS.md's "the whole completion is exactly" is what we check.
    """
    return [0.5 if _is_strict_e(completion_text(c)) else 0.0 for c in completions]


def _is_strict_e(text: str) -> bool:
    if len(text) < len(_E_HEAD) + len(_E_TAIL) or not (text.startswith(_E_HEAD) and text.endswith(_E_TAIL)):
        return False
    return _E_JOINT in text[len(_E_HEAD):len(text) - len(_E_TAIL)]


def soft_format(prompts, completions, **columns) -> list[float]:
    """E's soft format (original `soft_format_reward_func`).

    | completion                                                                      | reward |
    |---------------------------------------------------------------------------------|--------|
    | `<reasoning>…</reasoning>` whitespace `<answer>…</answer>` somewhere (any contents) | 0.5 |
    | anything else                                                                   | 0.0    |

    [D2] The original used `re.match` without re.DOTALL: it also required the text to start with
    `<reasoning>` and the reasoning to be one line; REWARDS.md asks only that they "appear, in order".
    """
    return [0.5 if blocks_in_order(completion_text(c), "reasoning", "answer") else 0.0 for c in completions]


def xml_count(prompts, completions, **columns) -> list[float]:
    """E's tag-line count (original `xmlcount_reward_func`).

    | part of the completion                                            | adds            |
    |-------------------------------------------------------------------|-----------------|
    | `<reasoning>\\n` occurs exactly once                              | +0.125          |
    | `\\n</reasoning>\\n` occurs exactly once                          | +0.125          |
    | `\\n<answer>\\n` occurs exactly once                              | +0.125          |
    | `\\n</answer>` occurs exactly once                                | +0.125          |
    | text after the last `</answer>` (one newline right after it is free) | −0.001 per character |

    Range: ≤ 0.5; unbounded below for long trailing text.
    [D2] The original subtracted the trailing text twice (0.002 per character) and, with no newline after
    `</answer>`, charged the whole completion's length; REWARDS.md's 0.001 per character is kept.
    """
    return [_xml_count(completion_text(c)) for c in completions]


def _xml_count(text: str) -> float:
    lines = ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>")
    score = 0.125 * sum(text.count(line) == 1 for line in lines)
    close = text.rfind("</answer>")
    if close >= 0:
        trailing = text[close + len("</answer>"):]
        trailing = trailing[1:] if trailing.startswith("\n") else trailing
        score -= 0.001 * len(trailing)
    return score
