"""Word lists for the near-miss guard: negators, antonyms, synonyms, scope words,
and the tokenizer they are matched against (`tokens`).

Generic English, written by hand; nothing here was taken from an evaluation set.
"""

from __future__ import annotations

import re
import unicodedata


def words(text: str) -> frozenset[str]:
    """The whitespace-separated words of `text`, as a set."""
    return frozenset(text.split())


STOPWORDS = words(
    "a an the and or but if then so of to in on at by for with from into onto about as is "
    "are was were be been being am do does did doing have has had having can could will "
    "would shall should may might must i me my mine we us our ours you your yours he him "
    "his she her hers it its they them their theirs this that these those there here what "
    "which who whom whose when where why how whats hows wheres whos any some much many "
    "more most very really just also too than such own same other get got getting gets go "
    "going way ways one ones thing things something anything please thanks thank hi hello "
    "hey quick question tell know want need like would s t ve ll re d m let lets make i'm "
    "im"
)
NEGATORS = words("not no never without none nobody nothing neither nor non cannot")
ANTONYMS: tuple[tuple[str, str], ...] = (
    ("on", "off"), ("open", "close"), ("open", "closed"), ("include", "exclude"),
    ("included", "excluded"), ("including", "excluding"), ("before", "after"),
    ("allow", "ban"), ("allowed", "banned"), ("allow", "forbid"), ("allowed", "forbidden"),
    ("permitted", "prohibited"), ("eat", "avoid"), ("do", "avoid"), ("accept", "decline"),
    ("accept", "reject"), ("approve", "reject"), ("lock", "unlock"), ("enable", "disable"),
    ("activate", "deactivate"), ("subscribe", "unsubscribe"), ("add", "remove"),
    ("add", "delete"), ("increase", "decrease"), ("increase", "reduce"), ("raise", "lower"),
    ("buy", "sell"), ("upload", "download"), ("import", "export"), ("login", "logout"),
    ("start", "stop"), ("start", "end"), ("begin", "end"), ("advantage", "disadvantage"),
    ("advantage", "drawback"), ("benefit", "drawback"), ("benefit", "risk"), ("pro", "con"),
    ("hot", "cold"), ("warm", "cold"), ("cheap", "expensive"), ("cheapest", "expensive"),
    ("min", "max"), ("minimum", "maximum"), ("more", "less"), ("more", "fewer"),
    ("high", "low"), ("higher", "lower"), ("highest", "lowest"), ("up", "down"),
    ("inside", "outside"), ("internal", "external"), ("arrive", "depart"),
    ("arrival", "departure"), ("send", "receive"), ("deposit", "withdraw"),
    ("credit", "debit"), ("win", "lose"), ("pass", "fail"), ("legal", "illegal"),
    ("best", "worst"), ("first", "last"), ("join", "leave"), ("hire", "fire"),
    ("agree", "disagree"), ("like", "dislike"), ("connect", "disconnect"),
    ("install", "uninstall"), ("pause", "resume"), ("show", "hide"), ("public", "private"),
    ("mute", "unmute"), ("follow", "unfollow"), ("block", "unblock"), ("early", "late"),
    ("earliest", "latest"), ("new", "old"), ("old", "young"), ("male", "female"),
    ("man", "woman"), ("men", "women"), ("boy", "girl"), ("husband", "wife"),
    ("positive", "negative"), ("true", "false"), ("safe", "dangerous"), ("gain", "lose"),
    ("gain", "loss"), ("profit", "loss"), ("import", "export"), ("in", "out"),
    ("easy", "hard"), ("easy", "difficult"), ("fast", "slow"), ("good", "bad"),
    ("right", "wrong"), ("left", "right"), ("north", "south"), ("east", "west"),
    ("can", "cannot"), ("with", "without"), ("always", "never"), ("all", "none"),
    ("strength", "weakness"), ("success", "failure"), ("online", "offline"),
    ("love", "hate"), ("rich", "poor"), ("big", "small"), ("large", "small"),
    ("long", "short"), ("light", "heavy"), ("light", "dark"), ("wet", "dry"),
    ("full", "empty"), ("over", "under"), ("above", "below"), ("most", "least"),
    ("optional", "compulsory"), ("optional", "mandatory"), ("optional", "required"),
    ("quiet", "busy"), ("cover", "exclude"), ("take", "avoid"), ("weekday", "weekend"),
    ("full", "part"), ("stop", "continue"), ("keep", "cancel"), ("same", "next"),
    ("same", "different"), ("increase", "cut"), ("approve", "deny"), ("pass", "fail"),
    ("true", "false"), ("valid", "invalid"), ("entry", "exit"), ("import", "export"),
)  # fmt: skip
# Common interchangeable words, so that a swap between them is not read as a change of topic.
SYNONYMS: tuple[str, ...] = (
    "change switch modify alter amend update edit",
    "buy purchase order",
    "get obtain receive acquire",
    "fix repair solve resolve",
    "find locate",
    "cancel terminate end stop close",
    "send submit",
    "start begin",
    "make create generate",
    "delete remove erase",
    "need require",
    "cost price fee charge",
    "best top good great",
    "way method",
    "learn study",
    "help assist support",
    "big large",
    "small little",
    "quick fast",
    "job work career",
    "movie film",
    "car vehicle",
    "phone mobile cellphone smartphone",
    "shop store",
    "parcel package delivery order",
    "money cash",
    "kid child children",
    "people person",
    "improve better",
    "reason why cause",
)
NEG_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "de")
SCOPE_GROUPS: tuple[frozenset[str], ...] = tuple(
    frozenset(g.split())
    for g in (
        "my our your his her their",
        "per each every all any some",
        "today tomorrow yesterday tonight week weekend month year daily weekly monthly "
        "yearly annual annually hourly quarterly",
        "iphone ipad android window mac macos linux io web desktop mobile tablet",
        "kid child children baby infant toddler adult student senior teen teenager member "
        "staff employee customer business personal individual",
        "morning afternoon evening night",
        "domestic international",
        "single double family",
    )
)
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
NUMBER_WORDS = {
    w: float(i)
    for i, w in enumerate(
        [
            "zero",
            "_",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
    if w != "_"
}
NUMBER_WORDS.update(
    {"thirty": 30.0, "forty": 40.0, "fifty": 50.0, "sixty": 60.0, "seventy": 70.0,
     "eighty": 80.0, "ninety": 90.0, "hundred": 100.0, "thousand": 1e3, "million": 1e6,
     "billion": 1e9, "half": 0.5, "quarter": 0.25, "dozen": 12.0, "second": 2.0,
     "third": 3.0, "fourth": 4.0, "fifth": 5.0, "sixth": 6.0, "tenth": 10.0}
)  # fmt: skip
UNITS = words(
    "k m km kg g mg lb lbs oz ml l cm mm mb gb tb kb mph kmh h hr hrs s min mins ms yr "
    "yrs y st nd rd th x am pm p gbp usd eur pc"
)
CONTRACTIONS = (
    (re.compile(r"\bcan'?t\b"), "can not"),
    (re.compile(r"\bwon'?t\b"), "will not"),
    (re.compile(r"\bcannot\b"), "can not"),
    (
        re.compile(
            r"\b(do|does|did|is|are|was|were|has|have|had|could|would|should|must|need)n'?t\b"
        ),
        r"\1 not",
    ),
    (re.compile(r"'(s|re|ve|ll|d|m)\b"), r" \1"),
)

# Letters and digits of any script: "включить" and "отключить", or "3²" and "32", are
# different words. On ASCII text this is exactly `[a-z0-9]+` (the text is lower-cased).
TOKEN_RE = re.compile(r"[^\W_]+(?:[.,][0-9]+)*")
# The English-only form, for rules that only hold for English (a follow-up's anaphora).
ASCII_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")


def visible(text: str) -> str:
    """`text` without format characters (Unicode category Cf: soft hyphen, zero-width
    space and joiners, word joiner, direction marks), which the embedder drops too.
    Found from outside: "of\u00adf" kept the antonym rule from seeing "off" while the
    embedder scored the pair as the plain one."""
    if text.isascii():
        return text
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def without_accents(word: str) -> str:
    """`word` with its combining marks removed ("año" -> "ano"), as the embedder reads it."""
    if word.isascii():
        return word
    decomposed = unicodedata.normalize("NFD", word)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalise(text: str) -> str:
    """`text` without format characters, lower-cased, with curly apostrophes straightened
    and contractions expanded."""
    lowered = visible(text).replace("\u2019", "'").lower()
    for pattern, repl in CONTRACTIONS:
        lowered = pattern.sub(repl, lowered)
    return lowered


def tokens(text: str) -> list[str]:
    """The words and numbers of `normalise(text)`, in any script, in order."""
    return TOKEN_RE.findall(normalise(text))


def ascii_tokens(text: str) -> list[str]:
    """The ASCII words and numbers of `normalise(text)`, in order (`tokens` without
    other scripts: a rule written for English sees no words in Russian)."""
    return ASCII_TOKEN_RE.findall(normalise(text))
