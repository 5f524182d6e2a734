"""Main-text extraction from HTML and query-relevant passage selection, for `browse`.

Extraction is trafilatura's (the field's standard main-text extractor, on lxml/libxml2), run
with hard caps on the work a page can cause, because pages are hostile (issue 22.2):
- at most `max_chars` characters are parsed (the fetcher already cut the body at
  `max_page_bytes`);
- libxml2 parses in C, linearly, and bounds nesting depth itself;
- the parsed tree is cut to its first `max_elements` elements in document order before
  trafilatura walks it (its cost is ~40 us per element, so this bounds a 2 MB page made of
  100,000 paragraphs to about a second instead of seven);
- only the first `max_text_chars` of extracted text is chunked and ranked.
The stdlib `html.parser` extractor this replaces was quadratic on repeated `<!--` (500 KB:
101 s) and could not be stopped; `read_page` now runs in a worker process that is killed on
timeout (`tools.extract_pool`). Passages are ranked by BM25 against the query, which needs no
model and works offline. No script runs and no external entity resolves in either path.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lxml.html import HtmlElement


@dataclass(frozen=True)
class PageLimits:
    """The caps on the work one page may cause (see the module docstring)."""

    max_chars: int = 2_500_000
    max_elements: int = 25_000
    max_text_chars: int = 400_000


@dataclass
class ExtractedPage:
    title: str = ""
    blocks: list[str] = field(default_factory=list)  # main-text paragraphs, document order
    notes: list[str] = field(default_factory=list)  # caps that were hit


def _cut_tree(tree: HtmlElement, max_elements: int) -> int:
    """Keep the first `max_elements` elements of `tree` in document order; returns how many
    were dropped. Linear: one walk to the cut point, then one removal per dropped subtree."""
    cut_at = None
    for n, el in enumerate(tree.iter(), 1):
        if n == max_elements:
            cut_at = el
            break
    if cut_at is None:
        return 0
    before = sum(1 for _ in tree.iter())
    for child in list(cut_at):
        cut_at.remove(child)
    node = cut_at
    while node is not None:
        parent = node.getparent()
        if parent is None:
            break
        nxt = node.getnext()
        while nxt is not None:
            after = nxt.getnext()
            parent.remove(nxt)
            nxt = after
        node = parent
    return before - sum(1 for _ in tree.iter())


def _title(tree: HtmlElement) -> str:
    for el in tree.iter("title"):
        return " ".join((el.text_content() or "").split())[:500]
    return ""


def extract_main_text(html: str, limits: PageLimits | None = None) -> ExtractedPage:
    """The page's title and main-text paragraphs (boilerplate, navigation, comments, scripts
    dropped), with every cap of `limits` applied. CPU-bound and only bounded by the caps: call
    it through `tools.extract_pool` (a worker process killed on timeout), not on a thread."""
    import trafilatura
    from trafilatura.utils import load_html

    lim = limits or PageLimits()
    notes: list[str] = []
    if len(html) > lim.max_chars:
        html = html[: lim.max_chars]
        notes.append(f"page cut at {lim.max_chars:,} characters before parsing")
    tree = load_html(html)
    if tree is None:
        return ExtractedPage(notes=[*notes, "page did not parse as HTML"])
    title = _title(tree)
    dropped = _cut_tree(tree, lim.max_elements)
    if dropped:
        notes.append(f"page cut at {lim.max_elements:,} HTML elements ({dropped:,} dropped)")
    doc: Any = trafilatura.bare_extraction(
        tree,
        fast=True,
        with_metadata=False,
        include_comments=False,
        include_tables=True,
        include_images=False,
        include_links=False,
    )
    text = str(getattr(doc, "text", None) or "") if doc is not None else ""
    if len(text) > lim.max_text_chars:
        text = text[: lim.max_text_chars]
        notes.append(f"text cut at {lim.max_text_chars:,} characters")
    blocks = [" ".join(line.split()) for line in text.split("\n")]
    blocks = [b for b in blocks if len(b.split()) >= 3 or b.endswith((".", ":", "?", "!"))]
    return ExtractedPage(title=title, blocks=blocks, notes=notes)


@dataclass
class PageReading:
    """What `read_page` returns: the passages most relevant to the query, best first."""

    title: str
    passages: list[tuple[str, float]]
    notes: list[str] = field(default_factory=list)
    relevant: bool = True  # False: nothing matched the query; the page's opening is shown


def read_page(
    text: str,
    is_html: bool,
    query: str,
    passage_chars: int,
    k: int,
    limits: PageLimits | None = None,
) -> PageReading:
    """Extract (HTML) or split (plain text), chunk into passages near `passage_chars`, rank them
    by BM25 against `query`; the whole of browse's CPU work on one page, every step bounded by
    `limits`. This is the function `tools.extract_pool` runs in its worker processes."""
    lim = limits or PageLimits()
    if is_html:
        page = extract_main_text(text, lim)
        blocks, title, notes = page.blocks, page.title, page.notes
    else:
        notes = []
        if len(text) > lim.max_text_chars:
            text = text[: lim.max_text_chars]
            notes.append(f"text cut at {lim.max_text_chars:,} characters")
        blocks, title = text_to_blocks(text), ""
    passages = chunk_blocks(blocks, passage_chars)
    if not passages:
        return PageReading(title=title, passages=[], notes=notes)
    scores = rank_passages(query, passages, title)
    order = sorted(range(len(passages)), key=lambda i: -scores[i])
    relevant = scores[order[0]] > 0
    if not relevant:
        order = list(range(len(passages)))
    return PageReading(
        title=title,
        passages=[(passages[i], round(scores[i], 4)) for i in order[:k]],
        notes=notes,
        relevant=relevant,
    )


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
                if len(buf) > target_chars * 1.5:
                    # One long run with no sentence end: cut it in windows by index (slicing
                    # the remainder again and again was quadratic in its length).
                    cuts = range(0, len(buf), target_chars)
                    windows = [buf[i : i + target_chars] for i in cuts]
                    pieces.extend(windows[:-1])
                    buf = windows[-1]
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
