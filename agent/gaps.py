"""Deterministic knowledge-gap candidates, found without any model.

A weak local LLM (the embedded 135M default) invents spans and forgets queries, so the basic job
of noticing what a prompt names cannot depend on it. These rules find what an image model is
likely not to know: proper-noun phrases, years and dates, model names and numbers, quoted titles,
and words rare in general English (by `wordfreq`'s offline Zipf frequencies, judged on base
forms and compound parts, so "sunflowers" and "windowsill" are common). A prompt made of common
words ("a red apple on a table") yields nothing.

A candidate's queries are its span and, at most, the head noun right after it ("Zephyr X1
folding drone"); verbs, adverbs, conjunctions and prepositions after a name never join a query
("Jimi Hendrix famously played" searches "Jimi Hendrix"). `grounded_query` holds a weak model's
own queries to the same standard (issue 21.8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

CandidateRule = Literal["proper_noun", "year", "date", "model", "quoted", "rare_word"]

RARE_ZIPF = 3.0
"""Words below this Zipf frequency are rare (Zephyr 2.85, Chuseok 1.64; apple 4.76, drone 3.9)."""

_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "with",
        "by",
        "from",
        "over",
        "under",
        "near",
        "into",
        "onto",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "his",
        "her",
        "their",
        "our",
        "my",
        "your",
        "at",
        "while",
        "during",
        "after",
        "before",
        "above",
        "below",
        "between",
        "behind",
        "beside",
        "against",
        "across",
        "through",
        "around",
        "without",
        "within",
        "per",
        "via",
        "style",
        "photo",
        "picture",
        "image",
        "painting",
        "drawing",
        "render",
        "poster",
        "illustration",
        "portrait",
    ]
)
_CONNECTORS = frozenset({"of", "de", "la", "le", "du", "von", "van", "der", "di", "da", "&"})
_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december|"
    "jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’\-\.]*[A-Za-z0-9]|[A-Za-z0-9]")
_QUOTED = re.compile(r"[\"“”«]([^\"“”«»]{2,80})[\"“”»]|(?<![A-Za-z])'([^']{2,80})'(?![A-Za-z])")
_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d|21\d\d)s?\b")
_DATE = re.compile(
    rf"\b(?:(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS})\b(?:\s+\d{{4}})?"
    r"|\d{4}-\d{2}-\d{2})",
    re.IGNORECASE,
)
_TEXT_CUES = re.compile(r"\b(saying|says|reads?|reading|text|words?|sign|lettering|caption)\W*$")


@dataclass(frozen=True)
class Candidate:
    span: str
    """The words as they stand in the prompt."""
    start: int
    end: int
    rules: tuple[CandidateRule, ...]
    head: str = ""
    """Up to two common words after the span that say what it is ("folding drone")."""

    @property
    def kind(self) -> Literal["entity", "style", "text"]:
        if "quoted" in self.rules and self.head == "text":
            return "text"
        return "style" if self.head.split()[-1:] == ["style"] else "entity"

    def queries(self, prompt: str = "") -> tuple[list[str], list[str]]:
        """Text and image search queries from the span and its context."""
        if set(self.rules) <= {"year", "date"} and prompt:
            # A bare date says when, not what: search for what the prompt says about it.
            context = " ".join(w for w in prompt.split() if w.lower() not in {"a", "an", "the"})
            return [context[:120]], []
        head = self.head if self.head not in {"style", "text"} else ""
        subject = f"{self.span} {head}".strip()
        text = [subject] if subject == self.span else [subject, self.span]
        if self.kind == "style":
            text = [f"{self.span} style", f"{self.span} visual characteristics"]
        return text, [f"{self.span} style example" if self.kind == "style" else subject]


@lru_cache(maxsize=4096)
def zipf(word: str) -> float:
    from wordfreq import zipf_frequency

    return float(zipf_frequency(word, "en"))


def _is_rare(word: str) -> bool:
    """A word too rare in general English for an image model to know it well.

    Judged on the word's base forms and compound parts, not only its written form: plurals,
    inflections and compounds of common words ("sunflowers", "teapot", "windowsill") name
    common things, however rarely the whole word is written."""
    w = word.lower().strip(".-'’")
    if len(w) < 4 or not w.isalpha() or w in _STOP:
        return False
    return not any(zipf(form) >= RARE_ZIPF or _is_compound(form) for form in (w, *_base_forms(w)))


COMPOUND_PART_MIN = 3
"""Shortest part of a compound ("tea" + "pot"); 3-letter parts must be very common (below)."""
SHORT_PART_ZIPF = 3.7
"""A 3-letter part counts only from this frequency up (tea 4.73, pot 4.4, mug 3.71): short
strings are names and abbreviations as often as words. Function words never count as a part
("theremin" is not "there" + "min"; "gamelan" not "game" + "lan" 3.64)."""


def _common_part(part: str) -> bool:
    if len(part) < COMPOUND_PART_MIN or part in _FUNCTION_WORDS:
        return False
    floor = SHORT_PART_ZIPF if len(part) == COMPOUND_PART_MIN else RARE_ZIPF
    return zipf(part) >= floor or (
        len(part) > COMPOUND_PART_MIN + 1 and any(zipf(b) >= floor for b in _base_forms(part))
    )


def _is_compound(word: str) -> bool:
    """Two common words written as one ("windowsill", "moonbeams")."""
    n = COMPOUND_PART_MIN
    return any(
        _common_part(word[:i]) and _common_part(word[i:]) for i in range(n, len(word) - n + 1)
    )


def _base_forms(word: str) -> tuple[str, ...]:
    """Candidate base forms of an inflected word: plurals (-s, -es, -ies, -ves), -ing, -ed,
    comparatives and -ly/-ness derivations. Over-generating is harmless: a form counts only
    when it is itself a common word."""
    w = word
    forms: list[str] = []

    def add(*cands: str) -> None:
        forms.extend(c for c in cands if len(c) >= 3 and c != w)

    if w.endswith("ies"):
        add(w[:-3] + "y")
    if w.endswith("ves"):
        add(w[:-3] + "f", w[:-3] + "fe")
    if w.endswith("es") and w[:-2].endswith(("s", "x", "z", "ch", "sh", "o")):
        add(w[:-2])  # boxes, benches, tomatoes; not "kentes" -> "kent"
    if w.endswith("s") and not w.endswith("ss"):
        add(w[:-1])
    for suffix in ("ing", "ed", "er", "est"):
        if w.endswith(suffix):
            stem = w[: -len(suffix)]
            add(stem, stem + "e")
            if len(stem) > 2 and stem[-1] == stem[-2]:
                add(stem[:-1])  # running -> run, stopped -> stop
            if stem.endswith("i"):
                add(stem[:-1] + "y")  # carried -> carry, fluffier -> fluffy
    if w.endswith("ness"):
        add(w[:-4], w[:-5] + "y" if w.endswith("iness") else "")
    if w.endswith("ly"):
        add(*_adverb_bases(w))
    return tuple(dict.fromkeys(forms))


def _adverb_bases(w: str) -> tuple[str, ...]:
    """What an -ly word would come from: happily -> happy, gently -> gentle, truly -> true,
    fully -> full, quickly -> quick."""
    if w.endswith("ily"):
        return (w[:-3] + "y",)
    if w.endswith("uly"):
        return (w[:-2] + "e",)
    if w.endswith("lly"):
        return (w[:-1], w[:-2])
    if len(w) > 3 and w[-3] in "bptdgkz":
        return (w[:-1] + "e", w[:-2])  # nobly -> noble, softly -> soft
    return (w[:-2],)


def _is_model_token(word: str) -> bool:
    """X1, RTX-5090, iPhone17, GPT-5, A7IV: letters and digits in one token."""
    return bool(re.search(r"[A-Za-z]", word) and re.search(r"\d", word) and len(word) <= 20)


def find_candidates(prompt: str) -> list[Candidate]:
    """Every span of `prompt` a rule flags, overlapping and adjacent spans merged, in order."""
    spans: list[tuple[int, int, CandidateRule]] = []
    for m in _QUOTED.finditer(prompt):
        g = 1 if m.group(1) is not None else 2
        spans.append((m.start(g), m.end(g), "quoted"))
    for m in _DATE.finditer(prompt):
        spans.append((m.start(), m.end(), "date"))
    for m in _YEAR.finditer(prompt):
        spans.append((m.start(), m.end(), "year"))
    tokens = list(_TOKEN.finditer(prompt))
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        word = tok.group()
        sentence_start = i == 0 or prompt[: tok.start()].rstrip().endswith((".", "!", "?", ":"))
        if _is_model_token(word):
            spans.append((tok.start(), tok.end(), "model"))
        capital = (word[:1].isupper() or any(c.isupper() for c in word[1:])) and (
            word.lower() not in _STOP
        )
        if capital and sentence_start and not _is_rare(word):
            nxt = tokens[i + 1].group() if i + 1 < len(tokens) else ""
            capital = nxt[:1].isupper() and nxt.lower() not in _STOP
        if capital:
            j = i
            while j + 1 < len(tokens):
                nxt = tokens[j + 1].group()
                if nxt[:1].isupper() or _is_model_token(nxt) or nxt.isdigit():
                    j += 1
                elif (
                    nxt.lower() in _CONNECTORS
                    and j + 2 < len(tokens)
                    and tokens[j + 2].group()[:1].isupper()
                ):
                    j += 2
                else:
                    break
            spans.append((tok.start(), tokens[j].end(), "proper_noun"))
            i = j + 1
            continue
        if _is_rare(word) and not _verb_shaped(prompt, tokens, i):
            spans.append((tok.start(), tok.end(), "rare_word"))
        i += 1
    return _merge(prompt, spans, tokens)


def _verb_shaped(prompt: str, tokens: list[re.Match[str]], i: int) -> bool:
    """A rare word that is a verb or adverb by its shape and place, not a thing to look up:
    an -ly word ("drowsily"), or an -s/-ed/-ing word that takes an object ("Hendrix strums a
    guitar"). Merged into the name before it, it would make the query "Jimi Hendrix strums"."""
    w = tokens[i].group().lower()
    if w.endswith("ly"):
        return True
    if not w.endswith(("s", "ed", "ing")) or i + 1 >= len(tokens):
        return False
    nxt = tokens[i + 1]
    joined = not prompt[tokens[i].end() : nxt.start()].strip()
    return joined and nxt.group().lower() in _OBJECT_STARTS


def _merge(
    prompt: str, spans: list[tuple[int, int, CandidateRule]], tokens: list[re.Match[str]]
) -> list[Candidate]:
    spans.sort()
    merged: list[tuple[int, int, list[CandidateRule]]] = []
    for start, end, rule in spans:
        # Adjacent spans separated by blanks only ("2026" + "Zephyr X1") are one subject.
        if merged and start <= merged[-1][1] + 1 and not prompt[merged[-1][1] : start].strip():
            s, e, rules = merged[-1]
            merged[-1] = (s, max(e, end), rules + ([rule] if rule not in rules else []))
        else:
            merged.append((start, end, [rule]))
    out = []
    for start, end, rules in merged:
        span = prompt[start:end].strip(" '\"“”")
        if not span or (rules == ["year"] and len(merged) > 1):
            # A lone year beside a named subject is context for it, not a subject of its own.
            if rules == ["year"] and span:
                continue
            if not span:
                continue
        out.append(
            Candidate(
                span=span,
                start=start,
                end=end,
                rules=tuple(rules),
                head=_head(prompt, end, tokens, quoted="quoted" in rules, start=start),
            )
        )
    return out


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_FUNCTION_WORDS = _wordset(
    """
    about above across after against along amid among around as at before behind below beneath
    beside besides between beyond by despite down during except for from in inside into like
    near next of off on onto opposite out outside over past per since than through throughout
    till to toward towards under underneath unlike until up upon via with within without
    and or but nor so yet because although though unless whereas whether if then once
    when whenever where wherever while who whom whose which what whatever why how that
    i me you he him she her it we us they them myself himself herself itself themselves
    my your his its our their mine yours hers ours theirs this these those there here
    a an the some any each every no all both either neither several many much more most few
    is are was were be been being am has have had having do does did doing done
    can could will would shall should may might must ought not never
    very just also only even still often always sometimes usually again already almost
    soon now today tonight together alone else ever quite rather too instead perhaps maybe
    away back forth around apart
    """
)
"""Closed-class words: prepositions, conjunctions, relative and question words, pronouns,
determiners, auxiliaries, modals and adverbs that do not end in -ly. None is a head noun."""

_IRREGULAR_PAST = _wordset(
    """
    arose ate awoke beat became began bent bit blew broke brought built burnt bought caught
    chose clung came crept cut dealt dug dove drew dreamt drank drove fell fed felt fought found
    fled flung flew forgot froze got gave went ground grew hung heard hid hit held hurt kept
    knelt knew laid led leapt left lent let lay lit lost made meant met paid put quit read rode
    rang rose ran said saw sought sold sent set shook shone shot showed shrank shut sang sank sat
    slept slid slung spoke sped spent spun spread sprang stood stole stuck stung strode struck
    swore swept swam swung took taught tore told thought threw understood woke wore wove wept
    won wound wrote begun broken chosen driven eaten fallen flown forgotten frozen given gone
    grown hidden known ridden risen seen shaken shown spoken stolen sworn swum taken thrown
    woken worn woven written
    """
)
"""Irregular past forms, which the -ed rule cannot see."""

_STILL_VERBS = _wordset(
    """
    stand sit lie lean rest hang float fly hover rise loom tower glow shine gleam glitter sparkle
    shimmer twinkle burn blaze flicker overlook dominate span stretch walk run jump dance sing
    perform pose wait look stare gaze smile laugh cry wave swim climb fall grow bloom sleep
    sail emerge appear seem remain stay
    """
)
"""Intransitive verbs that follow a named subject in image prompts ("the Eiffel Tower glows
at night", "the Beatles perform live"): their -s and base forms are never a head noun. Their
-ing forms can be ("running shoes") unless nothing follows ("Scotland standing")."""
_ACTION_VERBS = _wordset(
    """
    hold carry wear ride drive play eat drink read write paint draw sing perform throw kick
    hug kiss strum pluck swing lift push pull grab catch
    """
)
"""Verbs that take an object: their -s and -ing forms are never a head noun ("Hendrix plays
guitar", "Monroe wearing sunglasses"). Transitive verbs outside this list are caught by what
follows them (an article or pronoun: "Hendrix strums a guitar")."""
_BASE_VERBS = _STILL_VERBS - _wordset("rest fall run walk wave span look sail tower")
"""Base forms that are verbs after a plural name ("the Beatles perform"); the ones left out are
nouns as often ("Nike run", "Eiffel tower")."""

_OBJECT_STARTS = _wordset(
    "a an the this that these those my your his her its our their him them me us it"
)
"""Words that begin a verb's object: a word directly before one is a verb, not a head noun."""


def _is_adverb(w: str) -> bool:
    return (
        len(w) > 4
        and w.endswith("ly")
        and any(len(b) >= 4 and zipf(b) >= RARE_ZIPF for b in _adverb_bases(w))
    )


def _is_past(w: str) -> bool:
    if w in _IRREGULAR_PAST:
        return True
    if not w.endswith("ed") or w.endswith("eed") or len(w) < 5:
        return False
    bases = [w[:-2], w[:-1]]
    if w[-3] == w[-4]:
        bases.append(w[:-3])  # stopped -> stop
    if w.endswith("ied"):
        bases.append(w[:-3] + "y")  # carried -> carry
    return any(len(b) >= 3 and zipf(b) >= RARE_ZIPF for b in bases)


def _is_verb_form(w: str) -> bool:
    """`w` is the -s form of a listed verb, the -ing form of an action verb, or the base form of
    a verb that is rarely a noun ("glows", "holding", "perform"; not "running" or "watch")."""
    if w in _BASE_VERBS:
        return True
    singular = [w[:-3] + "y"] if w.endswith("ies") else []
    singular += [w[:-2], w[:-1]] if w.endswith("es") else [w[:-1]] if w.endswith("s") else []
    if any(c in _STILL_VERBS or c in _ACTION_VERBS for c in singular):
        return True
    if w.endswith("ing"):
        stem = w[:-3]
        cands = [stem, stem + "e", stem[:-1]] + ([stem[:-1] + "ie"] if stem.endswith("y") else [])
        return any(c in _ACTION_VERBS for c in cands)
    return False


def _can_head(word: str, following: str) -> bool:
    """Whether `word`, right after a span and before `following`, can be (part of) the span's
    head noun. Function words, adverbs, past forms and verbs cannot; a word directly before an
    article or pronoun is a verb taking an object."""
    w = word.lower()
    if not w.isalpha() or w in _FUNCTION_WORDS or w in _STOP - {"style"}:
        return False
    if _is_adverb(w) or _is_past(w) or _is_verb_form(w):
        return False
    return following.lower() not in _OBJECT_STARTS


HEAD_WORDS = 2
"""At most this many common words after a span say what it is ("folding drone")."""


def _head(prompt: str, end: int, tokens: list[re.Match[str]], *, quoted: bool, start: int) -> str:
    """The span's head noun: the common words right after it that say what it is ("Zephyr X1
    folding drone"), never a verb, adverb, conjunction, preposition or relative word ("Jimi
    Hendrix famously played", "Golden Gate Bridge when", "Scotland standing" have none), and
    never ending in an -ing word ("Scotland dancing")."""
    if quoted and _TEXT_CUES.search(prompt[:start].rstrip(" \"“'«").lower()):
        return "text"
    after = [t for t in tokens if t.start() >= end]
    words: list[str] = []
    for k, tok in enumerate(after[:HEAD_WORDS]):
        if k and prompt[after[k - 1].end() : tok.start()].strip():
            break  # punctuation ends the noun phrase: "Zephyr X1, drone"
        w = tok.group()
        joined = k + 1 < len(after) and not prompt[tok.end() : after[k + 1].start()].strip()
        following = after[k + 1].group() if joined else ""
        if k == 0 and prompt[end : tok.start()].strip(" \"“”'’«»"):
            break
        if w[:1].isupper() or not _can_head(w, following):
            break
        words.append(w.lower())
        if w.lower() == "style":
            break
    while words and words[-1].endswith("ing"):
        words.pop()
    return " ".join(words)


MAX_QUERY_WORDS = 10
MAX_FOREIGN_WORDS = 3
"""A weak model's query may add this many words the prompt does not have ("specs", "review")."""
_QUERY_CHARS = re.compile(r"^[\w\s'’&,.:()+-]+$")
_FILE_OR_DOMAIN = re.compile(r"[\w-]{2,}\.[a-z][a-z0-9]{1,4}(?!\w)|www\.|://", re.IGNORECASE)
_QUERY_COMMON = frozenset({"the", "a", "an", "of", "in", "on", "at", "and", "for", "to", "with"})


def grounded_query(query: str, span: str, prompt: str) -> bool:
    """A weak model's search query worth running for its span: plain words (no path, URL, file
    or domain name, no markup), most of the span's words, and at most a few words the prompt
    does not contain. Everything else is the model talking to itself ("images/mother-child.jpg",
    "best pizza")."""
    q = " ".join(query.split())
    if not q or not _QUERY_CHARS.match(q) or _FILE_OR_DOMAIN.search(q):
        return False
    words = [w.strip(".,:()'’") for w in fold(q).split()]
    words = [w for w in words if w]
    if not words or len(words) > MAX_QUERY_WORDS:
        return False
    span_words = {w.strip(".,:()'’") for w in fold(span).split()} - _QUERY_COMMON - {""}
    if not span_words:
        return False
    covered = sum(1 for w in span_words if occurs_in(w, q))
    if covered * 2 < len(span_words):
        return False
    foreign = [w for w in words if w not in _QUERY_COMMON and not occurs_in(w, prompt)]
    return len(foreign) <= MAX_FOREIGN_WORDS


def fold(text: str) -> str:
    """Case and whitespace folded, for checking that a span occurs in the prompt."""
    return " ".join(text.casefold().split())


def occurs_in(span: str, prompt: str) -> bool:
    """The span's words stand in the prompt as whole words ("Japan" is not in "Japanese")."""
    folded = fold(span).strip(" .,'\"")
    if not folded:
        return False
    return re.search(rf"(?<!\w){re.escape(folded)}(?!\w)", fold(prompt)) is not None
