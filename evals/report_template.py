"""The HTML report as a Jinja2 template with autoescape on: every string from runs, suites, the
web or the config is escaped by the engine, not by hand. Kept in a module (not a data file) so
it ships with the package wherever the code does."""

from __future__ import annotations

from typing import Any

import jinja2

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px}
th,td{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top;text-align:left}
th{background:#f3f3f3}
.grid td{max-width:280px}
.grid img{display:block;max-width:256px;height:auto}
.ok{color:#1e7b34}.bad{color:#b02a2a}.unk{color:#888}
details{font-size:12px;color:#444}
.prompt{margin:18px 0 4px;font-size:15px}
.req{font-size:12px;color:#444;margin:2px 0}
figure{display:inline-block;margin:8px}
figure img{max-width:640px}
"""

COUNT_SCRIPT = """
function gwCountImages(){
  var imgs=Array.prototype.slice.call(document.images);
  var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;
  var broken=imgs.filter(function(i){return i.complete&&i.naturalWidth===0;}).length;
  document.body.setAttribute('data-images-total',String(imgs.length));
  document.body.setAttribute('data-images-loaded',String(ok));
  document.body.setAttribute('data-images-broken',String(broken));
}
window.addEventListener('load',gwCountImages);
"""

REPORT = """\
{%- macro table(head, rows) -%}
<table><thead><tr>{% for c in head %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{%- for row in rows %}<tr>{% for c in row %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor -%}
</tbody></table>
{%- endmacro -%}
<!doctype html><html lang='en'><head><meta charset='utf-8'>
<title>Eval report: {{ name }}</title><style>{{ css | safe }}</style></head><body>
<h1>Eval report: {{ name }}</h1>
<ul>{% for x in fairness %}<li>{{ x }}</li>{% endfor %}</ul>
<h2>Runs</h2><ul>{% for x in counts %}<li>{{ x }}</li>{% endfor %}</ul>
{% if skips %}<h2>Metrics skipped</h2><ul>
{%- for m, r in skips %}<li><b>{{ m }}</b>: {{ r }}</li>{% endfor %}</ul>{% endif %}
{% if protocols or overall.rows %}<h2>Benchmark protocols</h2>
{%- for p in protocols %}<p>{{ p }}</p>{% endfor %}
{% if overall.rows %}{{ table(overall.head, overall.rows) }}{% endif %}{% endif %}
<h2>Scores per arm</h2>{{ table(summary.head, summary.rows) }}
{% if categories.rows %}<h2>Scores per category</h2>{{ table(categories.head, categories.rows) }}
{% endif %}
{% if paired.rows %}<h2>Paired against {{ baseline }}</h2><p>Per-prompt deltas (arm −
baseline); ↑ higher is better, ↓ lower is better; p: Wilcoxon signed-rank.</p>
{{ table(paired.head, paired.rows) }}{% endif %}
{% if pairwise.rows %}<h2>Pairwise judge (both orders)</h2><p>Win rate of the first arm (ties
count half); a verdict that flips with the order is a tie.</p>
{{ table(pairwise.head, pairwise.rows) }}{% endif %}
{% if ranking.rows %}<h2>Bradley-Terry ranking ({{ ranking_metric }})</h2>
{{ table(ranking.head, ranking.rows) }}{% endif %}
<h2>Plots</h2>
{% if plot_note %}<p>{{ plot_note }}</p>{% endif %}
{%- for f in figures %}
<figure><img class='plot' alt='{{ f.title }}' src='{{ f.src }}'><figcaption>{{ f.title }}
</figcaption></figure>
{%- endfor %}
<h2>Images</h2>
{%- for p in grid %}
<div class='prompt'><b>{{ p.key }}</b>: {{ p.prompt }}</div>
{%- for r in p.requirements %}
<div class='req'><code>{{ r.id }}</code> {{ r.question }}</div>
{%- endfor %}
<table class='grid' data-prompt='{{ p.key }}'><thead><tr><th>arm</th>
{%- for s in seeds %}<th>seed {{ s }}</th>{% endfor %}</tr></thead><tbody>
{%- for arm in p.rows %}<tr><th>{{ arm.name }}</th>
{%- for c in arm.cells %}
{%- if c is none %}<td class='unk'>not run</td>
{%- else %}<td>
{%- if c.thumb %}<img class='thumb' alt='{{ c.alt }}' src='{{ c.thumb }}'>{% endif -%}
<div class='{{ "ok" if c.status == "done" else "bad" }}'>{{ c.status }}</div>
{%- if c.verdicts %}<div>
{%- for k, cls, mark in c.verdicts %}<span class='{{ cls }}'>{{ mark }}{{ k }}</span>
{% endfor -%}
</div>{% endif -%}
{%- if c.scores %}<div>{{ c.scores | join(", ") }}</div>{% endif -%}
{%- if c.error %}<div class='bad'>{{ c.error }}</div>{% endif -%}
{%- if c.gen_prompt %}<details><summary>prompt sent</summary>{{ c.gen_prompt }}</details>
{%- endif -%}
</td>{% endif %}
{%- endfor %}</tr>
{%- endfor %}</tbody></table>
{%- endfor %}
<script>{{ script | safe }}</script>
</body></html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_TEMPLATE = _ENV.from_string(REPORT)


def render(context: dict[str, Any]) -> str:
    return _TEMPLATE.render(css=CSS, script=COUNT_SCRIPT, **context)
