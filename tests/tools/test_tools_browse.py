"""browse: main-text extraction and relevance on a real-looking article page, over HTTP."""

from __future__ import annotations

from pathlib import Path

from core.artifacts import ArtifactStore
from tests.tools.conftest import LoopServer, tool_settings
from tools.extract import chunk_blocks, extract_main_text, rank_passages
from tools.observations import Passage
from tools.toolkit import Toolkit

ARTICLE = """<!DOCTYPE html>
<html lang="en"><head>
<meta charset="utf-8"><title>Aurora Pavilion opens on the Riverside - City Chronicle</title>
<style>.hero{background:#000} body{font-family:serif}</style>
<script>window.dataLayer=[];function track(){console.log("Subscribe now for 1 dollar")}</script>
<script type="application/ld+json">{"@type":"NewsArticle","headline":"Aurora Pavilion"}</script>
</head><body>
<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience.
 <button>Accept all cookies</button></div>
<header class="site-header"><a href="/">City Chronicle</a>
 <nav class="main-nav"><ul><li><a href="/news">News</a></li><li><a href="/sport">Sport</a></li>
 <li><a href="/culture">Culture</a></li></ul></nav></header>
<div class="layout">
<main id="content">
<article class="story">
<h1>Aurora Pavilion opens on the Riverside</h1>
<p class="byline">By Jane Doe, 3 March 2026</p>
<p>The long-awaited Aurora Pavilion opened to the public on Saturday after four years of
construction, drawing thousands of visitors to the redeveloped riverside quarter.</p>
<p>Designed by the studio Halden &amp; Kirsch, the pavilion is a low, oval building wrapped in
a lattice of pale larch timber. Its most striking feature is a copper roof with a green
patina that curls upward at the northern end like a wave, supported by twelve slender white
steel columns.</p>
<div class="ad-slot advert">ADVERTISEMENT: Buy the new Phone 17 today</div>
<p>Inside, a single open hall hosts exhibitions about the history of the river, while a
rooftop terrace offers views of the old harbour cranes.</p>
<aside class="related-links"><h3>Related</h3><ul><li>Ten best bakeries in town</li>
<li>Mayor announces new tram line to the airport district</li></ul></aside>
<p>Tickets are free until the end of the month; afterwards adults pay eight euros.</p>
</article>
<section class="comments"><h3>Comments</h3><p>Great news!! Finally something nice here in
 town, love it a lot.</p></section>
</main>
<div class="sidebar"><h3>Most read</h3><p>Local team wins the regional cup after penalties in
 a dramatic final.</p></div>
</div>
<footer class="site-footer"><p>Copyright 2026 City Chronicle. All rights reserved. Privacy
 policy and terms of use apply to this site.</p></footer>
</body></html>"""

BOILERPLATE = [
    "cookies",
    "Subscribe now",
    "Sport",
    "ADVERTISEMENT",
    "bakeries",
    "Most read",
    "Copyright",
    "Great news",
    "NewsArticle",
]


def test_extraction_keeps_the_story_and_drops_boilerplate() -> None:
    page = extract_main_text(ARTICLE)
    assert page.title.startswith("Aurora Pavilion opens")
    text = "\n".join(page.blocks)
    assert "copper roof with a green patina" in text
    assert "Tickets are free" in text
    for junk in BOILERPLATE:
        assert junk not in text, junk


def test_ranking_prefers_the_relevant_paragraph() -> None:
    page = extract_main_text(ARTICLE)
    passages = chunk_blocks(page.blocks, 300)
    scores = rank_passages("what does the Aurora Pavilion roof look like", passages, page.title)
    best = passages[max(range(len(passages)), key=lambda i: scores[i])]
    assert "copper roof" in best


async def test_browse_over_http(tmp_path: Path, server: LoopServer) -> None:
    url = server.add("/2026/03/aurora", "text/html; charset=utf-8", ARTICLE.encode())
    kit = Toolkit(
        tool_settings(tmp_path, [server.host_port], cache_enabled=False, passage_chars=300),
        ArtifactStore(tmp_path / "a"),
    )
    try:
        obs = await kit.browse(url, "Aurora Pavilion roof material and colour")
        plain = await kit.browse(
            server.add("/notes.txt", "text/plain", b"alpha\n\nroof is copper"), "roof"
        )
    finally:
        await kit.aclose()
    assert obs.ok, obs.error
    passages = [p for p in obs.items if isinstance(p, Passage)]
    assert "copper roof with a green patina" in passages[0].text
    assert passages[0].source == url
    assert all(j not in p.text for p in passages for j in BOILERPLATE)
    assert any("page title: Aurora Pavilion" in n for n in obs.notes)
    assert plain.ok and "roof is copper" in plain.items[0].text  # type: ignore[union-attr]
