"""What must match exactly before a similar input may be answered with another's stored answer.

An embedding says two texts are about the same thing; it does not see that "order 1182" is not
"order 1183", that "does not include" is the opposite of "includes", or that "from EUR to USD"
is the other way round. So a semantic lookup only compares inputs whose :class:`Guard` is equal:
the numbers (digits and number words, in order), the identifiers and named entities (tokens
with digits, capitals inside or after the first word, e-mail addresses, paths, quoted strings;
in order, so a swap differs), the negations, the words whose opposite is a different question
(before/after, more/less, ...), and, from the request, every other field of the body (a
conversation's whole history included) but those the stage lists as ``ignoreFields``. Two inputs with equal guards land in the same bucket of the index;
the similarity threshold decides inside it. Precision first: a guard that differs where the
meaning does not only costs a hit.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def _words(text: str) -> list[str]:
    return text.split()


_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        _words(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
            " fifteen sixteen seventeen eighteen nineteen twenty"
        )
    )
} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "half": "0.5",
    "once": "1",
    "twice": "2",
    "first": "1st",
    "second": "2nd",
    "third": "3rd",
    "single": "1",
    "double": "2",
    "triple": "3",
}
_NEGATIONS = frozenset(
    _words(
        "not no never none nobody nothing neither nor without cannot can't won't don't doesn't"
        " didn't isn't aren't wasn't weren't shouldn't wouldn't couldn't mustn't hasn't haven't"
        " hadn't except excluding unless lack lacks"
    )
)
# Each group: words that are the same question only when the same one is used.
_OPPOSITES: tuple[frozenset[str], ...] = tuple(
    frozenset(group.split())
    for group in (
        "before after prior following",
        "more less fewer",
        "most least",
        "increase decrease raise lower reduce grow shrink",
        "above below over under",
        "maximum minimum max min highest lowest largest smallest biggest",
        "buy sell",
        "import export",
        "upload download",
        "encrypt decrypt",
        "enable disable",
        "start stop",
        "open close",
        "add remove delete",
        "win lose",
        "hot cold",
        "cheap expensive",
        "early late",
        "fast slow",
        "input output",
        "send receive",
        "push pull",
        "inside outside",
        "north south east west",
        "left right",
        "true false",
        "am pm",
        "on off",
        "up down",
        "soft hard",
        "lock unlock",
        "connect disconnect",
        "upgrade downgrade",
        "best worst",
        "better worse",
        "faster slower quicker",
        "higher lower",
        "bigger smaller",
        "cheaper dearer",
        "accept reject decline",
        "allow deny block",
        "include exclude",
        "boiling freezing",
        "day night",
    )
)
_OPPOSITE_OF = {word: index for index, group in enumerate(_OPPOSITES) for word in group}
_QUOTED = re.compile(r"\"([^\"]{1,200})\"|'([^']{1,200})'|`([^`]{1,200})`")
_TOKEN = re.compile(r"[\w@./:#+-]+(?:'[a-z]+)?", re.UNICODE)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 1,000 is one number
_NUMBER = re.compile(r"^[-+]?\d[\d,]*(?:\.\d+)?(?:st|nd|rd|th|k|m|%)?$", re.IGNORECASE)


@dataclass(frozen=True)
class TextGuard:
    """The parts of one text that must be equal for a semantic match."""

    numbers: tuple[str, ...]
    identifiers: tuple[str, ...]
    negations: int
    opposites: tuple[str, ...]

    def parts(self) -> list[Any]:
        return [list(self.numbers), list(self.identifiers), self.negations, list(self.opposites)]


def _number(token: str) -> str | None:
    lower = token.lower()
    if lower in _NUMBER_WORDS:
        return _NUMBER_WORDS[lower]
    if _NUMBER.match(token):
        text = lower.replace(",", "")
        if text.endswith(("st", "nd", "rd", "th")) and text[:-2].isdigit():
            return text  # an ordinal stays an ordinal: "1st" is not "1"
        return text
    return None


def _is_identifier(token: str, sentence_start: bool) -> bool:
    core = token.strip(".:/#-+")
    if not core:
        return False
    if any(ch.isdigit() for ch in core) or "@" in core or "/" in core or "_" in core:
        return True
    if sum(ch.isupper() for ch in core) >= 2:  # USD, iPhone, McDonald, OpenAI
        return True
    if "." in core.strip(".") and not core.endswith("."):  # file.txt, example.com, v1.2
        return True
    # A capitalised word that does not start a sentence is a name ("Paris", "Kubernetes").
    return core[0].isupper() and not sentence_start and core.lower() not in {"i", "i'm", "i've"}


def text_guard(text: str) -> TextGuard:
    numbers: list[str] = []
    identifiers: list[str] = [next(g for g in m.groups() if g) for m in _QUOTED.finditer(text)]
    negations = 0
    opposites: list[str] = []
    unquoted = _THOUSANDS.sub("", _QUOTED.sub(" ", text))
    sentence_start = True
    for match in _TOKEN.finditer(unquoted):
        raw = match.group(0)
        token = raw.rstrip(".,;:!?")
        lower = token.lower()
        value = _number(token)
        if value is not None:
            numbers.append(value)
        elif lower in _NEGATIONS or lower.endswith("n't"):
            negations += 1
        elif lower in _OPPOSITE_OF:
            opposites.append(lower)
        elif _is_identifier(token, sentence_start):
            identifiers.append(lower)
        sentence_start = raw.endswith((".", "!", "?"))
    return TextGuard(tuple(numbers), tuple(identifiers), negations, tuple(sorted(opposites)))


_STOPWORDS = frozenset(
    _words(
        "a an the is are was were be been being am do does did doing have has had having i me my"
        " mine we us our you your he him his she her it its they them their what which who whom"
        " whose this that these those how why when where there here can could would should will"
        " shall may might must of in on at by for to from with into onto about as and or but if"
        " so than then too very just also any some all each every please tell give show me let"
        " get got way what's how's it's i'm i've there's that's one ones thing things much many"
        " out up off over again"
    )
)
_WORD = re.compile(r"[a-z0-9][a-z0-9'-]*")


def _stem(word: str) -> str:
    word = word.removesuffix("'s")
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


MAX_TEXT_CHARS = 4000  # longer texts are not compared (MiniLM reads 256 tokens anyway)
MAX_SLOT_WORDS = 96


def content_words(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def changes_one_slot(stored: str, asked: str) -> bool:
    """Whether ``asked`` is ``stored`` with one run of its content words replaced, added or
    removed and the rest (at least half) in place: "pancakes without eggs" -> "waffles without
    eggs", "for a soft yolk" -> "for a hard yolk", "reset my password" -> "reset my password
    after the link expired". That is how a different question usually looks next to the one
    stored; a paraphrase rewords more than one place, or none (only function words change)."""
    a, b = content_words(stored), content_words(asked)
    if a == b:
        return False
    if max(len(a), len(b)) > MAX_SLOT_WORDS:  # the diff is quadratic: the stricter bar then
        return True
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    opcodes = matcher.get_opcodes()
    changed = [op for op in opcodes if op[0] != "equal"]
    same = sum(i2 - i1 for tag, i1, i2, _, _ in opcodes if tag == "equal")
    return len(changed) == 1 and same * 2 >= max(len(a), len(b))


@dataclass(frozen=True)
class SemanticInput:
    """What a request is compared by: the text to embed and the guard's digest."""

    text: str
    guard: str  # a digest: equal for inputs that may be answered with each other's answers


class NotSemantic(ValueError):
    """The body has no text to compare (no such field, or not a string)."""


def _take(body: Any, path: str) -> Any:
    """Remove the value at a dotted path from ``body`` and return it (None when absent)."""
    *parents, name = path.split(".")
    value = body
    for part in parents:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value.pop(name, None) if isinstance(value, dict) else None


def semantic_input(
    body: Any, text_field: str = "text", ignore_fields: Sequence[str] = (), scope: str = ""
) -> SemanticInput:
    """The comparable form of a JSON body.

    The text is ``text_field`` (a dotted path), or, for a body with ``messages`` (a chat), the
    last message's ``content``. Every other part of the body must be equal (so is part of the
    guard): the earlier messages of a chat, whole and in order, and every field but the text
    and ``ignore_fields`` (dotted paths: request ids, timestamps). ``scope`` (the stage's exact
    cache key material without the body: image, model, method, path, key headers) too.
    """
    rest = json.loads(json.dumps(body))  # a copy to take the text and ignored fields out of
    messages = rest.get("messages") if isinstance(rest, dict) else None
    if text_field == "text" and isinstance(messages, list) and messages:
        last = messages[-1]
        text = last.pop("content", None) if isinstance(last, dict) else None
    else:
        text = _take(rest, text_field)
    if not isinstance(text, str) or not text.strip():
        raise NotSemantic(f"the body has no text at {text_field!r} to compare")
    if len(text) > MAX_TEXT_CHARS:
        raise NotSemantic(f"the text is longer than {MAX_TEXT_CHARS} characters")
    for path in ignore_fields:
        _take(rest, path)
    material = [scope, text_guard(text).parts(), rest]
    digest = hashlib.sha256(
        json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    return SemanticInput(" ".join(text.split()), digest)
