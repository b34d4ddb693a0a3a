"""Near-miss guard: decide whether a cached answer fits a new query.

Cosine search finds candidates, but "turn on 2FA" / "turn off 2FA" or "£50" / "£500"
score higher than many true paraphrases, so no cosine threshold alone separates them.
`NearMissGuard.verify` runs on each candidate, using only the two texts and their
cosine (no extra model calls, ~0.2 ms p50 per candidate in pure Python):

1. Floor: never accept below `similarity_min` (cosine, -1..1).
2. Identical text after normalisation (case, punctuation) is accepted.
3. Hard rules, each a rejection with its own reason: numbers/dates/amounts differ
   ("number_mismatch", 7pm vs 7am included), parity of negators differs
   ("negation_mismatch"), a generic antonym or un-/in-/dis-/non- pair appears
   ("antonym_mismatch"), the from/to direction is swapped ("direction_swap"), both
   sides hold a capitalised name the other lacks ("entity_mismatch"), or a scope word
   is swapped within its group (my/our, per/each/all, iPhone/Android, child/adult...:
   "scope_mismatch"), a comparison differs ("5 > 3" / "5 < 3": "operator_mismatch"),
   or a word that is not a name differs from the other side's only in its accents
   ("año" / "ano": "accent_mismatch"), or a word mixes Latin with Cyrillic or Greek
   letters (a look-alike: "mixed_script"). Format characters (soft hyphen,
   zero-width ones) are dropped first, as the embedder drops them.
4. A logistic regression over the cosine and content-word edit features gives `score`;
   accept when it reaches `accept_min`. Its weights are in `guard_weights.json`, fitted
   on qqp_dev by `semcache calibrate` (`service.cache.calibrate`).

Defaults: `similarity_min` 0.75, `accept_min` 0.79, the largest value that still
serves >= 40% of qqp_dev duplicates. Measured (top-5 candidates, best score served):

- fow-cache pairs: should-hit served 48.0% (near_repeat 81%, paraphrase 31.5%);
  traps served wrongly 1.0% (negation 1.3%, entity_swap 0%, number_date 1.3%,
  scope 1.3%). Static cosine 0.97 serves 28% with 4% wrong. Misses the 55% target.
- qqp_dev: duplicates served 40.0%, non-duplicates served 5.45% (misses the 2% target).

Conversations (`conversation`): the embedded and verified text is the final user message
(`conversation_text`). When that message does not stand alone (fewer than four content
words, or "it", "that", "yes"...), `context_text` gives every earlier turn, newest first,
and `verify_context` must also pass: both contexts present, context cosine >= 0.7, and no
hard rule firing across the whole context; an accepted context is scored by the guard
model (1.0 when equal), and the error budget weighs a follow-up at the weaker of its
question and context scores. On fow-cache conversations (budget, delta 0.01):
context_swap 0/42 served, detail_swap 5/42, intent_flip 6/36; should-hit 34% served
(reworded 8%, irrelevant history 69%, extra chatter 23%). The zero-trap target is
missed: detail and offer changes that keep the cosine and rules quiet pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from service.cache import guard_lexicon as lex
from service.cache.guard_model import GuardModel, shipped_guard_model
from service.cache.scope import exact_form

__all__ = [
    "GuardVerdict",
    "NearMissGuard",
    "PairFeatures",
    "pair_features",
    "veto_reason",
]

_RAW_TOKEN_RE = re.compile(r"[^\W_]+")  # letters and digits of any script, case kept
_NUMBER_RE = re.compile(r"^(\d+(?:,\d{3})*(?:\.\d+)?)([a-z]*)$")
_TENS = frozenset({20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0})
_SENTENCE_BREAKS = frozenset('.?!:;"(')


def _stem(word: str) -> str:
    if len(word) <= 3:
        return word
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + repl
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word[:-1] if len(word) > 4 and word.endswith("e") else word


def _antonym_map() -> dict[str, frozenset[str]]:
    pairs: dict[str, set[str]] = {}
    for left, right in lex.ANTONYMS:
        a, b = _stem(left), _stem(right)
        pairs.setdefault(a, set()).add(b)
        pairs.setdefault(b, set()).add(a)
    return {k: frozenset(v) for k, v in pairs.items()}


_ANTONYM_MAP = _antonym_map()


def _synonym_map() -> dict[str, str]:
    canon: dict[str, str] = {}
    for line in lex.SYNONYMS:
        words = [_stem(w) for w in line.split()]
        for word in words:
            canon.setdefault(word, words[0])
    return canon


_SYNONYM_MAP = _synonym_map()
_DATE_WORDS = frozenset(lex.MONTHS + lex.WEEKDAYS)


@dataclass(frozen=True)
class _Parsed:
    """One text cut into the parts the rules compare."""

    all_stems: frozenset[str]
    content: frozenset[str]
    numbers: frozenset[float]
    dates: frozenset[str]
    negations: int
    entities: frozenset[str]
    sources: frozenset[str]
    targets: frozenset[str]
    words: frozenset[str]  # as written, lower-cased (not stemmed: accents kept)
    operators: frozenset[str]
    mixed_script: bool  # a word of Latin letters with a Cyrillic or Greek look-alike


def _entities(text: str) -> frozenset[str]:
    """Lower-cased tokens written with a capital where grammar does not require one."""
    found: set[str] = set()
    for match in _RAW_TOKEN_RE.finditer(text):
        token = match.group()
        before = text[: match.start()].rstrip()
        at_start = not before or before[-1] in _SENTENCE_BREAKS
        inner_caps = any(c.isupper() for c in token[1:])
        if (
            token != "I"
            and not token.isdigit()
            and (inner_caps or (token[0].isupper() and not at_start))
        ):
            found.add(token.lower())
    return frozenset(found)


def _number_value(token: str) -> float | None:
    match = _NUMBER_RE.match(token)
    if match is None or match.group(2) not in lex.UNITS | {""}:
        return None
    value = float(match.group(1).replace(",", ""))
    unit = match.group(2)
    return value * 1000.0 if unit == "k" else value + 12.0 if unit == "pm" else value


@lru_cache(maxsize=8192)  # a query meets up to five candidates; popular entries recur
def _parse(text: str) -> _Parsed:
    text = lex.visible(text)
    words: list[str] = []
    numbers: list[float] = []
    dates: set[str] = set()
    for token in lex.tokens(text):
        value = _number_value(token) if token[0].isdigit() else lex.NUMBER_WORDS.get(token)
        if value is None:
            if token in _DATE_WORDS:
                dates.add(token)
            else:
                words.append(token)
            continue
        if numbers and numbers[-1] in _TENS and 0 < value < 10 and not token[0].isdigit():
            numbers[-1] += value
        else:
            numbers.append(value)
    stems = frozenset(_stem(w) for w in words)
    content = frozenset(
        _SYNONYM_MAP.get(st, st)
        for st in (_stem(w) for w in words if w not in lex.STOPWORDS and w not in lex.NEGATORS)
    )
    negations = sum(1 for w in words if w in lex.NEGATORS)
    sources, targets = _directions(words)
    return _Parsed(
        stems, content, frozenset(numbers), frozenset(dates), negations, _entities(text),
        sources, targets, frozenset(words), _operators(text),
        any(_MIXED_SCRIPT_RE.search(token) for token in words),
    )  # fmt: skip


# A Latin letter and a Cyrillic or Greek one in one word: "nоt" with a Cyrillic "о" is
# "not" to a reader, and no word to the rules (found from outside: it hid a negation,
# served with the error budget off at cosine 0.956). Real words rarely mix the two.
_MIXED_SCRIPT_RE = re.compile(
    r"[a-z][\u0370-\u03ff\u0400-\u04ff]|[\u0370-\u03ff\u0400-\u04ff][a-z]"
)


# Comparisons the tokens do not see: "5 > 3" and "5 < 3" are the same words.
_OPERATOR_RE = re.compile(r"[<>!=]=|<>|[<>=\u2260\u2264\u2265\u226e\u226f\u2270\u2271\u2248\u2261]")


def _operators(text: str) -> frozenset[str]:
    """The comparison and equality operators of `text` ("==" read as "="). Two texts
    that both hold some and not the same differ, as two with different numbers do;
    one side's "=" and the other's "equals" do not ("0! = 1" / "0! equal to 1")."""
    return frozenset(_OPERATOR_SPELLINGS.get(op, op) for op in _OPERATOR_RE.findall(text))


# One spelling per operator (found from outside: ">=" / "≥" was an operator mismatch).
_OPERATOR_SPELLINGS = {"==": "=", "\u2265": ">=", "\u2264": "<=", "\u2260": "!=", "<>": "!="}


def _accent_swap(only_a: frozenset[str], only_b: frozenset[str]) -> bool:
    """Whether a word of one side is a word of the other but for its accents ("año" /
    "ano"): the embedder reads them alike (cosine 1.0), the language does not. Names
    are left out (the callers pass words that are not entities): "Pokémon" is often
    written "Pokemon"."""
    return bool(_bare(only_a) & _bare(only_b))  # the sides share no word as written


_DETERMINERS = frozenset(
    ["a", "an", "the", "my", "our", "your", "his", "her", "their", "this", "that", "some"]
)


def _directions(words: Sequence[str]) -> tuple[frozenset[str], frozenset[str]]:
    """Words moved *from* (or sitting before "to") and words moved *to*: "from X to Y"."""
    sources: set[str] = set()
    targets: set[str] = set()
    for i, word in enumerate(words):
        if word not in ("from", "to", "into"):
            continue
        after = next((w for w in words[i + 1 :] if w not in _DETERMINERS), None)
        if after is not None and after not in lex.STOPWORDS:
            (sources if word == "from" else targets).add(_stem(after))
        if word != "from" and i > 0 and words[i - 1] not in lex.STOPWORDS:
            sources.add(_stem(words[i - 1]))
    return frozenset(sources), frozenset(targets)


_SAME_WORD_MIN_CHARS = 4  # shorter words are the same word only when equal (`_same_word`)


def _one_edit_apart(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return len(diffs) == 1 or (
            len(diffs) == 2 and diffs[1] == diffs[0] + 1 and a[diffs[0]] == b[diffs[1]]
        )
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k, (x, y) in enumerate(zip(short, long_, strict=False)) if x != y), len(short))
    return short[i:] == long_[i + 1 :]


def _same_word(a: str, b: str) -> bool:
    """Equal up to an inflection or a typo (the near-repeat cases)."""
    if a == b:
        return True
    shorter, gap = min(len(a), len(b)), abs(len(a) - len(b))
    if shorter < _SAME_WORD_MIN_CHARS or gap > 3:  # too short, or too far apart for either
        return False
    if a.startswith(b) or b.startswith(a):
        return True
    return shorter >= 5 and gap <= 1 and _one_edit_apart(a, b)


def _unmatched(mine: frozenset[str], theirs: frozenset[str]) -> frozenset[str]:
    """The words of `mine` with no `_same_word` in `theirs`.

    A word both share is matched as it stands, and a word shorter than four letters
    matches only itself, so the pairwise comparison (most of a verification's time)
    runs only for the longer words left on each side (issue 13).
    """
    rest = mine - theirs
    if not rest:
        return frozenset()
    longer = [v for v in theirs if len(v) >= _SAME_WORD_MIN_CHARS]
    return frozenset(
        w
        for w in rest
        if len(w) < _SAME_WORD_MIN_CHARS or not any(_same_word(w, v) for v in longer)
    )


def _has_antonym(only_a: frozenset[str], only_b: frozenset[str]) -> bool:
    for word in only_a:
        if _ANTONYM_MAP.get(word, frozenset()) & only_b:
            return True
        if any(
            p + word in only_b or (word.startswith(p) and word[len(p) :] in only_b)
            for p in lex.NEG_PREFIXES
        ):
            return True
    return False


@dataclass(frozen=True)
class PairFeatures:
    """What the guard measures on one (query, cached) pair; exposed for tests and tuning."""

    similarity: float
    jaccard: float
    unmatched_min: int
    unmatched_max: int
    length_ratio: float
    number_one_sided: bool
    entity_one_sided: int
    scope_one_sided: bool
    number_mismatch: bool
    negation_mismatch: bool
    antonym: bool
    entity_mismatch: bool
    scope_mismatch: bool
    direction_swap: bool
    operator_mismatch: bool = False
    accent_mismatch: bool = False
    mixed_script: bool = False

    def vector(self) -> tuple[float, ...]:
        """The soft features, in the order of `guard_model.FEATURE_NAMES`."""
        return (
            self.similarity,
            float(self.unmatched_min >= 1),
            float(self.unmatched_min == 0 and self.unmatched_max >= 1),
            float(self.unmatched_max >= 3),
            float(self.number_one_sided),
            float(self.entity_one_sided > 0),
            float(self.scope_one_sided),
        )


def _scope_flags(a: _Parsed, b: _Parsed) -> tuple[bool, bool]:
    swapped = one_sided = False
    canon_a = frozenset(_SYNONYM_MAP.get(w, w) for w in a.all_stems)
    canon_b = frozenset(_SYNONYM_MAP.get(w, w) for w in b.all_stems)
    for i, group in enumerate(lex.SCOPE_GROUPS):
        in_a, in_b = canon_a & group, canon_b & group
        if in_a and in_b and in_a != in_b:
            swapped = True
        elif (in_a or in_b) and not (in_a and in_b) and i > 0:
            one_sided = True
    return swapped, one_sided


def _entity_gaps(a: _Parsed, b: _Parsed) -> tuple[int, int]:
    """How many names each side holds that the other lacks, accents aside (found from
    outside: "José Mourinho" / "Jose Mourinho" was an entity mismatch at cosine 1.0)."""
    only_a = _unmatched(_bare(a.entities), _bare(b.all_stems | b.entities))
    only_b = _unmatched(_bare(b.entities), _bare(a.all_stems | a.entities))
    return len(only_a), len(only_b)


def _bare(words: frozenset[str]) -> frozenset[str]:
    if all(word.isascii() for word in words):
        return words
    return frozenset(lex.without_accents(word) for word in words)


def pair_features(query: str, cached: str, similarity: float) -> PairFeatures:
    """Compare two texts; `similarity` is their embedding cosine (-1..1)."""
    a, b = _parse(query), _parse(cached)
    only_a, only_b = _unmatched(a.content, b.content), _unmatched(b.content, a.content)
    union = len(a.content | b.content)
    jaccard = 1.0 - (len(only_a) + len(only_b)) / union if union else 1.0
    ent_a, ent_b = _entity_gaps(a, b)
    scope_swap, scope_one = _scope_flags(a, b)
    nums_a, nums_b = a.numbers | set(a.dates), b.numbers | set(b.dates)
    return PairFeatures(
        similarity=similarity,
        jaccard=max(jaccard, 0.0),
        unmatched_min=min(len(only_a), len(only_b)),
        unmatched_max=max(len(only_a), len(only_b)),
        length_ratio=abs(math.log((len(a.content) + 1) / (len(b.content) + 1))),
        number_one_sided=bool(nums_a) != bool(nums_b),
        entity_one_sided=max(ent_a, ent_b) if min(ent_a, ent_b) == 0 else 0,
        scope_one_sided=scope_one,
        number_mismatch=bool(nums_a) and bool(nums_b) and nums_a != nums_b,
        negation_mismatch=a.negations % 2 != b.negations % 2,
        antonym=_has_antonym(a.all_stems - b.all_stems, b.all_stems - a.all_stems),
        entity_mismatch=ent_a > 0 and ent_b > 0,
        scope_mismatch=scope_swap,
        direction_swap=bool(a.sources & b.targets or a.targets & b.sources),
        operator_mismatch=bool(a.operators) and bool(b.operators) and a.operators != b.operators,
        mixed_script=a.mixed_script or b.mixed_script,
        accent_mismatch=_accent_swap(
            a.words - b.words - a.entities, b.words - a.words - b.entities
        ),
    )


_VETOES = (
    ("number_mismatch", "number_mismatch"),
    ("negation_mismatch", "negation_mismatch"),
    ("antonym", "antonym_mismatch"),
    ("direction_swap", "direction_swap"),
    ("entity_mismatch", "entity_mismatch"),
    ("scope_mismatch", "scope_mismatch"),
    ("operator_mismatch", "operator_mismatch"),
    ("accent_mismatch", "accent_mismatch"),
    ("mixed_script", "mixed_script"),
)


@dataclass(frozen=True)
class GuardVerdict:
    """The guard's decision on one cached candidate."""

    accept: bool
    score: float  # probability (0..1) that the cached answer fits the query
    reason: str  # "ok", "identical", "below_threshold", "low_score" or a rule name

    @property
    def vetoed(self) -> bool:
        """Refused by a rule or a floor, not by its score: no error budget may serve it
        (a "low_score" refusal is the guard's own accept, which the budget weighs)."""
        return not self.accept and self.reason != "low_score"


def veto_reason(features: PairFeatures) -> str | None:
    """The first hard rule that rejects the pair ("number_mismatch"...), or None."""
    return next((reason for field, reason in _VETOES if getattr(features, field)), None)


# Identical texts have the same `exact_form`, nothing looser. An apostrophe inside a
# word and a hyphen between words used to be let through as well ("dont" / "don't",
# "well-known" / "well known"): found from outside, "its" / "it's", "were" / "we're",
# "Lets go" / "Let's go" (asked as grammar questions), "price-discount" /
# "price discount" (SQL), "re-sign" / "resign" were then served at P(wrong) 0; such
# pairs are now scored as any other. Before that, "-5 minus 3" / "5 minus -3",
# "20% of 50" / "20 of 50%", '5' / 5 and echo '$HOME' / echo "$HOME" were identical.
@lru_cache(maxsize=8192)  # as `_parse`: a query meets up to five candidates
def _plain(text: str) -> str:
    """What must agree for two texts to count as identical: their `exact_form`."""
    return exact_form(text)


class NearMissGuard:
    """Verifies a cache candidate found by cosine search before its answer is served.

    Args:
        similarity_min: cosine floor (-1..1); nothing below it is ever accepted.
        accept_min: minimum guard score (0..1) for pairs that pass the hard rules.
        context_min: cosine floor for the conversation contexts of follow-up questions.
        model: the score's weights; None reads the shipped `guard_weights.json`.

    Raises:
        GuardModelError: `model` is None and the shipped weights file is missing or damaged.
    """

    def __init__(
        self,
        similarity_min: float = 0.75,
        accept_min: float = 0.79,
        context_min: float = 0.7,
        model: GuardModel | None = None,
    ) -> None:
        self.similarity_min = similarity_min
        self.accept_min = accept_min
        self.context_min = context_min
        self.model = model if model is not None else shipped_guard_model()

    def verify(self, query: str, cached: str, similarity: float) -> GuardVerdict:
        """Decide whether the answer cached for `cached` may be served for `query`."""
        if similarity < self.similarity_min:
            return GuardVerdict(False, 0.0, "below_threshold")
        if _plain(query) == _plain(cached):
            return GuardVerdict(True, 1.0, "identical")
        features = pair_features(query, cached, similarity)
        score = self.model.score(features.vector())
        reason = veto_reason(features)
        if reason is not None:
            return GuardVerdict(False, score, reason)
        if score < self.accept_min:
            return GuardVerdict(False, score, "low_score")
        return GuardVerdict(True, score, "ok")

    def verify_context(
        self, query_context: str, cached_context: str, similarity: float
    ) -> GuardVerdict:
        """Check the `context_text` of a multi-turn request against the cached entry's.

        Both empty: the final message stands alone and the context does not matter. One
        empty: the conversations are not comparable. Otherwise the contexts' cosine must
        reach `self.context_min` and no hard rule (numbers, names, negation...) may fire.
        An accepted context's score is the guard model's on the two contexts (1.0 when
        they are equal after normalisation), so the decision can weigh how well the
        conversations match, as it weighs the final messages; a refusal's is the cosine.
        """
        if not query_context and not cached_context:
            return GuardVerdict(True, 1.0, "standalone")
        if not query_context or not cached_context:
            return GuardVerdict(False, 0.0, "context_mismatch")
        if similarity < self.context_min:
            return GuardVerdict(False, similarity, "context_below_threshold")
        if _plain(query_context) == _plain(cached_context):
            return GuardVerdict(True, 1.0, "identical")
        features = pair_features(query_context, cached_context, similarity)
        reason = veto_reason(features)
        if reason is not None:
            return GuardVerdict(False, similarity, "context_" + reason)
        return GuardVerdict(True, self.model.score(features.vector()), "ok")
