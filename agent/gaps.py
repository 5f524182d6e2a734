"""Deterministic knowledge-gap candidates, found without any model.

A weak local LLM (the embedded 135M default) invents spans and forgets queries, so the basic job
of noticing what a prompt names cannot depend on it. These rules find what an image model is
likely not to know: proper-noun phrases, years and dates, model names and numbers, quoted titles,
and words rare in general English (by `wordfreq`'s offline Zipf frequencies). A prompt made of
common words ("a red apple on a table") yields nothing.
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
    w = word.lower().strip(".-'’")
    if len(w) < 4 or not w.isalpha() or w in _STOP:
        return False
    return zipf(w) < RARE_ZIPF


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
        if _is_rare(word):
            spans.append((tok.start(), tok.end(), "rare_word"))
        i += 1
    return _merge(prompt, spans, tokens)


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


def _head(prompt: str, end: int, tokens: list[re.Match[str]], *, quoted: bool, start: int) -> str:
    if quoted and _TEXT_CUES.search(prompt[:start].rstrip(" \"“'«").lower()):
        return "text"
    words: list[str] = []
    for tok in tokens:
        if tok.start() < end:
            continue
        w = tok.group()
        if w.lower() in _STOP - {"style"} or w[:1].isupper() or len(words) == 2:
            break
        words.append(w.lower())
        if w.lower() == "style":
            break
    return " ".join(words)


def fold(text: str) -> str:
    """Case and whitespace folded, for checking that a span occurs in the prompt."""
    return " ".join(text.casefold().split())


def occurs_in(span: str, prompt: str) -> bool:
    folded = fold(span).strip(" .,'\"")
    return bool(folded) and folded in fold(prompt)
