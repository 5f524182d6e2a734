"""Main-text extraction from HTML and query-relevant passage selection, for `browse`.

Stdlib only (html.parser), because the pages are hostile and the output is plain text: no
scripts run, no external entities resolve. Boilerplate (navigation, headers, footers, forms,
scripts, asides) is dropped; `<article>`/`<main>` content is preferred when a page has it.
Passages are ranked by BM25 against the query, which needs no model and works offline.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser

_SKIP = {
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "math",
    "canvas",
    "iframe",
    "object",
    "nav",
    "header",
    "footer",
    "aside",
    "form",
    "button",
    "select",
    "textarea",
    "head",
}
_BLOCK = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "td",
    "th",
    "tr",
    "table",
    "dd",
    "dt",
    "dl",
    "figcaption",
    "figure",
    "br",
    "hr",
    "caption",
    "summary",
    "details",
    "address",
}
_VOID = {
    "br",
    "hr",
    "img",
    "meta",
    "link",
    "input",
    "area",
    "base",
    "col",
    "embed",
    "source",
    "track",
    "wbr",
    "param",
}
_BOILERPLATE_HINT = re.compile(
    r"(^|[\s_-])(nav|menu|footer|header|sidebar|cookie|banner|advert|ads|share|social|"
    r"related|comments?|subscribe|newsletter|breadcrumbs?|popup|modal|promo|sponsored|"
    r"signup|paywall|disqus)([\s_-]|$)",
    re.I,
)


@dataclass
class ExtractedPage:
    title: str = ""
    blocks: list[str] = field(default_factory=list)  # main-text paragraphs, document order


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self._in_title = False
        self._skip_depth = 0
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, started a skip, started main)
        self._main_depth = 0
        self._current: list[str] = []
        self.blocks: list[tuple[str, bool]] = []  # (text, inside article/main)

    def _flush(self) -> None:
        text = " ".join("".join(self._current).split())
        if text:
            self.blocks.append((text, self._main_depth > 0))
        self._current = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        if tag in _VOID:
            if tag in _BLOCK:
                self._flush()
            return
        marker = " ".join(v or "" for k, v in attrs if k in ("class", "id", "role"))
        skip = (
            tag in _SKIP
            or bool(_BOILERPLATE_HINT.search(marker))
            and tag not in ("article", "main", "body", "html")
        )
        if skip:
            self._skip_depth += 1
        if tag in ("article", "main") or ("main" in marker.split() and tag != "nav"):
            self._main_depth += 1
            main = True
        else:
            main = False
        if tag in _BLOCK:
            self._flush()
        self._stack.append((tag, skip, main))

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if tag in _VOID:
            return
        # Close up to the matching open tag (tolerates unclosed <p>, <li>, ...).
        for pos in range(len(self._stack) - 1, -1, -1):
            if self._stack[pos][0] == tag:
                break
        else:
            return
        while len(self._stack) > pos:
            open_tag, skip, main = self._stack.pop()
            if open_tag in _BLOCK:
                self._flush()
            if skip:
                self._skip_depth -= 1
            if main:
                self._main_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
            return
        if self._skip_depth == 0:
            self._current.append(data)


def extract_main_text(html: str) -> ExtractedPage:
    parser = _Extractor()
    parser.feed(html)
    parser.close()
    parser._flush()
    blocks = parser.blocks
    if any(in_main for _, in_main in blocks):
        main_words = sum(len(t.split()) for t, m in blocks if m)
        if main_words >= 40:
            blocks = [(t, m) for t, m in blocks if m]
    texts = [t for t, _ in blocks if len(t.split()) >= 3 or t.endswith((".", ":", "?", "!"))]
    return ExtractedPage(title=" ".join(parser.title.split()), blocks=texts)


def text_to_blocks(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def chunk_blocks(blocks: list[str], target_chars: int) -> list[str]:
    """Merge short paragraphs and split long ones into passages near `target_chars`."""
    out: list[str] = []
    current = ""
    for block in blocks:
        pieces = [block]
        if len(block) > target_chars * 1.5:
            sentences = re.split(r"(?<=[.!?])\s+", block)
            pieces, buf = [], ""
            for s in sentences:
                if buf and len(buf) + len(s) + 1 > target_chars:
                    pieces.append(buf)
                    buf = ""
                buf = f"{buf} {s}".strip()
                while len(buf) > target_chars * 1.5:
                    pieces.append(buf[:target_chars])
                    buf = buf[target_chars:]
            if buf:
                pieces.append(buf)
        for piece in pieces:
            if current and len(current) + len(piece) + 1 > target_chars:
                out.append(current)
                current = ""
            if len(piece) >= target_chars * 0.6 and not current:
                out.append(piece)
            else:
                current = f"{current}\n{piece}".strip()
    if current:
        out.append(current)
    return out


_TOKEN = re.compile(r"[\w]+", re.UNICODE)
_STOP_WORDS = (
    "a an the of and or to in on at for by with from is are was were be been it its this "
    "that as what which who whom how when where why does do did about into over"
)
_STOP = frozenset(re.findall(r"\w+", _STOP_WORDS))


def _tokens(text: str) -> list[str]:
    out = []
    for tok in _TOKEN.findall(text.casefold()):
        if tok in _STOP:
            continue
        for suffix in ("ing", "ies", "es", "ed", "s"):
            if len(tok) > len(suffix) + 3 and tok.endswith(suffix):
                tok = tok[: -len(suffix)] + ("y" if suffix == "ies" else "")
                break
        out.append(tok)
    return out


def rank_passages(
    query: str, passages: list[str], title: str = "", k1: float = 1.5, b: float = 0.75
) -> list[float]:
    """BM25 score of each passage for `query` (0 when nothing matches).

    Query terms that are in the page title count a quarter: they say which page this is, and
    the passage that repeats the headline is rarely the one holding the detail asked for.
    """
    docs = [_tokens(p) for p in passages]
    q = set(_tokens(query))
    in_title = set(_tokens(title))
    if not docs or not q:
        return [0.0] * len(passages)
    n = len(docs)
    avg = sum(len(d) for d in docs) / n or 1.0
    df = Counter(t for d in docs for t in set(d) if t in q)
    scores = []
    for d in docs:
        tf = Counter(t for t in d if t in q)
        s = 0.0
        for term, f in tf.items():
            idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
            weight = 0.25 if term in in_title else 1.0
            s += weight * idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(d) / avg))
        scores.append(s)
    return scores
