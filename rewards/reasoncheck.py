"""grpo-reasoncheck's answer rewards (REWARDS.md E); its three format rewards are in `rewards.formats`.

The five rewards of E and their maxima (total 4.0):

    correctness 2.0 · integer 0.5 · strict_format 0.5 · soft_format 0.5 · xml_count 0.5

Column: `answer`, GSM8K's gold text after "####" (a whole solution is cut there first, see
`rewards.math_answers` [D4]). For a numeric comparison instead of string equality use
`rewards.math_answers.numeric_correctness` (1.0/0.0; weight it 2.0 to keep E's scale).

Implementation details:
[D1] The answer is read as upstream's `extract_xml_answer`: the text after the last `<answer>` up to
     the next `</answer>` (or the end), stripped. Without any `<answer>` tag the whole completion is
     the answer, so a bare "72" earns correctness as it did upstream.
[D2] integer uses str.isdigit, as upstream: Unicode digits count ("٣٤", "²"), signs and decimal
     points do not ("-3", "3.0"), and the empty answer is not an integer.
"""
from __future__ import annotations

from rewards.inputs import completion_text
from rewards.math_answers import gold_answers


def xml_answer(text: str) -> str:
    """The answer of an E completion [D1]."""
    start = text.rfind("<answer>")
    after = text if start < 0 else text[start + len("<answer>"):]
    end = after.find("</answer>")
    return (after if end < 0 else after[:end]).strip()


def correctness(prompts, completions, **columns) -> list[float | None]:
    """E's correctness reward (original `correctness_reward_func`).

    | case                                                        | reward |
    |-------------------------------------------------------------|--------|
    | `xml_answer(completion)` == gold (exact string equality)    | 2.0    |
    | anything else ("72.0", "1200" for "1,200", "$72")           | 0.0    |
    | gold is None                                                | None   |
    """
    golds = gold_answers(completions, columns, "correctness")
    return [None if gold is None else 2.0 if xml_answer(completion_text(c)) == gold else 0.0
            for c, gold in zip(completions, golds)]


def integer(prompts, completions, **columns) -> list[float]:
    """E's integer reward (original `int_reward_func`).

    | case                                                        | reward |
    |-------------------------------------------------------------|--------|
    | `xml_answer(completion)` is all digits (str.isdigit) [D2]   | 0.5    |
    | anything else (empty, "-3", "3.5", "72 apples")             | 0.0    |
    """
    return [0.5 if xml_answer(completion_text(c)).isdigit() else 0.0 for c in completions]
