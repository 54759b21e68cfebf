"""One self-contained static HTML leaderboard per build (``index.html``): no server and no network
resource; the rows (JSON), the script, the style and the figures (base64 PNG) are inline.

Filters: dataset, protocol table, alpha, readout, test-time options, precision; toggles that hide
partial, reported and random-weight rows; every column sorts on a click; All shows its 95%
interval; each table states its protocol and comparison rule. Text goes into the page through
``textContent`` only, so a hostile method name cannot inject markup.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd

from benchmarks.protocol import is_strict

from .runs import WHOLE

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222}
#controls{display:flex;flex-wrap:wrap;gap:.6em 1.2em;margin:.8em 0;align-items:center}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
th{cursor:pointer;background:#f3f3f3;position:sticky;top:0}th.text,td.text{text-align:left}
tr.reported td{color:#555;font-style:italic}tr.random td.text:first-child::after{content:" \\2020";color:#b00}
td.best{font-weight:bold}td{white-space:nowrap}.ci{color:#777;font-size:11px}#caption{max-width:70em}figure{display:inline-block;margin:.5em}
figure img{max-width:48em}#empty{color:#b00}
"""

SCRIPT = r"""
const ROWS = JSON.parse(document.getElementById('data').textContent);
const MAIN = JSON.parse(document.getElementById('main').textContent);
const $ = id => document.getElementById(id);
const PROV = JSON.parse(document.getElementById('prov').textContent);
for (const [i, p] of PROV.entries()) {  // one block per measured run: what made it, as text
  const d = document.createElement('details'); d.id = 'prov-' + i;
  const s = document.createElement('summary'); s.textContent = p.run + ': ' + p.label + ' (' + p.status + ')';
  const pre = document.createElement('pre'); pre.textContent = JSON.stringify(p.record, null, 2);
  d.appendChild(s); d.appendChild(pre); $('provenance').appendChild(d);
}
const uniq = (xs) => [...new Set(xs)];
let sortKey = 'All', sortDir = -1;
function fill(sel, values, withAll) {
  const keep = sel.value;
  sel.textContent = '';
  if (withAll) { const o = document.createElement('option'); o.value = ''; o.textContent = 'all'; sel.appendChild(o); }
  for (const v of values) { const o = document.createElement('option'); o.value = String(v); o.textContent = String(v); sel.appendChild(o); }
  if ([...sel.options].some(o => o.value === keep)) sel.value = keep;
}
function fillReadout(sel, names, first) {
  const keep = first ? DEFAULT_READOUT : sel.value;
  sel.textContent = '';
  const opts = [['own', "each method's own"], ['best', 'best on test (selection!)'], ['', 'every readout'],
                ...names.map(n => [n, n])];
  for (const [v, t] of opts) { const o = document.createElement('option'); o.value = v; o.textContent = t; sel.appendChild(o); }
  sel.value = [...sel.options].some(o => o.value === keep) ? keep : 'own';
}
function current() {
  return {dataset: $('f-dataset').value, table: $('f-protocol').value, alpha: $('f-alpha').value,
          readout: $('f-readout').value, tta: $('f-tta').value, precision: $('f-precision').value,
          status: $('f-status').value,
          hidePartial: $('hide-partial').checked, hideReported: $('hide-reported').checked, hideRandom: $('hide-random').checked};
}
function refreshChoices(first) {
  fill($('f-dataset'), uniq(ROWS.map(r => r.dataset)).sort(), false);
  const ds = ROWS.filter(r => r.dataset === $('f-dataset').value);
  const main = MAIN[$('f-dataset').value] || {};
  fill($('f-protocol'), uniq(ds.map(r => r.table)).sort(), false);
  for (const o of $('f-protocol').options) { const r = ds.find(x => x.table === o.value); if (r) o.textContent = r.presets; }
  if ((first || $('f-protocol').dataset.dataset !== $('f-dataset').value) && main.table) $('f-protocol').value = main.table;
  $('f-protocol').dataset.dataset = $('f-dataset').value;
  const pt = ds.filter(r => r.table === $('f-protocol').value);
  fill($('f-alpha'), uniq(pt.map(r => r.alpha)).sort((a, b) => a - b), false);
  if (first && [...$('f-alpha').options].some(o => o.value === String(main.alpha))) $('f-alpha').value = String(main.alpha);
  fillReadout($('f-readout'), uniq(pt.map(r => r.readout)).sort(), first);
  fill($('f-tta'), uniq(pt.map(r => r.tta)).sort(), true);
  fill($('f-precision'), uniq(pt.map(r => r.precision)).sort(), true);
  fill($('f-status'), uniq(pt.map(r => r.status)).sort(), true);
}
function selected() {
  const c = current();
  let rows = ROWS.filter(r => r.dataset === c.dataset && r.table === c.table && String(r.alpha) === c.alpha
    && (!c.tta || r.tta === c.tta) && (!c.precision || r.precision === c.precision) && (!c.status || r.status === c.status)
    && !(c.hidePartial && r.partial) && !(c.hideReported && r.kind === 'reported') && !(c.hideRandom && r.random));
  const ident = r => [r.kind, r.method, r.run, r.tta, r.precision].join('\u0001');
  if (c.readout === 'own') {
    rows = rows.filter(r => r.own);
  } else if (c.readout === 'best') {  // a choice made on the test split: said in the caption and on each row
    const top = new Map();
    for (const r of rows) if (r.category === 'all' && typeof r.pck === 'number') {
      const k = ident(r), b = top.get(k);
      if (!b || r.pck > b.pck || (r.pck === b.pck && r.readout < b.readout)) top.set(k, r);
    }
    rows = rows.filter(r => top.has(ident(r)) && top.get(ident(r)).readout === r.readout);
  } else if (c.readout) {
    rows = rows.filter(r => r.readout === c.readout);
  }
  return rows;
}
function render() {
  const rows = selected();
  const groups = new Map();
  for (const r of rows) {
    const id = [r.kind, r.method, r.run, r.readout, r.tta, r.precision].join('\u0001');
    if (!groups.has(id)) groups.set(id, {Method: r.method + (r.kind === 'reported' ? ' [reported]' : ''), Kind: r.kind,
      Run: r.run, Readout: r.readout + (current().readout === 'best' && r.kind === 'measured' ? ' *' : ''), TTA: r.tta,
      Precision: r.precision, Pairs: r.pairs, Status: r.status, Weights: r.weights, partial: r.partial, random: r.random,
      prov: r.prov, cats: {}});
    const g = groups.get(id);
    if (r.category === 'all') { g.All = r.pck; g.lo = r.ci_low; g.hi = r.ci_high; } else { g.cats[r.category] = r.pck; }
  }
  const cats = uniq(rows.filter(r => r.category !== 'all').map(r => r.category)).sort();
  const data = [...groups.values()];
  // a column holding one value on every row is said in the caption, not repeated
  const same = ['TTA', 'Precision', 'Pairs', 'Status'].filter(k => data.length > 1 && uniq(data.map(g => g[k])).length === 1);
  const cols = ['Method', 'Run', 'Readout', 'TTA', 'Precision', 'Pairs', 'Status', 'All', ...cats].filter(k => !same.includes(k));
  const val = (g, k) => (k in g ? g[k] : g.cats[k]);
  data.sort((a, b) => {
    const x = val(a, sortKey), y = val(b, sortKey);
    if (x === undefined || x === null) return 1; if (y === undefined || y === null) return -1;
    return (typeof x === 'number' ? x - y : String(x).localeCompare(String(y))) * sortDir;
  });
  const best = {};  // bold only a unique best, measured on one pair set
  const pairSets = uniq(data.filter(g => g.Kind === 'measured').map(g => g.Pairs));
  for (const k of ['All', ...cats]) {
    const vs = data.map(g => val(g, k)).filter(v => typeof v === 'number');
    const top = Math.max(...vs);
    best[k] = vs.filter(v => Math.abs(v - top) < 5e-4).length === 1 && pairSets.length <= 1 ? top : null;
  }
  const thead = $('board').tHead, tbody = $('board').tBodies[0];
  thead.textContent = ''; tbody.textContent = '';
  const hr = thead.insertRow();
  for (const k of cols) {
    const th = document.createElement('th'); th.textContent = k + (k === sortKey ? (sortDir < 0 ? ' \u25bc' : ' \u25b2') : '');
    th.dataset.key = k; if (['Method', 'Kind', 'Run', 'Readout', 'TTA', 'Precision', 'Pairs', 'Status'].includes(k)) th.className = 'text';
    th.addEventListener('click', () => { if (sortKey === k) sortDir = -sortDir; else { sortKey = k; sortDir = ['All', ...cats].includes(k) ? -1 : 1; } render(); });
    hr.appendChild(th);
  }
  for (const g of data) {
    const tr = tbody.insertRow();
    tr.className = g.Kind + (g.random ? ' random' : '') + (g.partial ? ' partial' : '');
    tr.dataset.kind = g.Kind; tr.dataset.random = g.random; tr.dataset.partial = g.partial; tr.title = 'weights: ' + g.Weights;
    for (const k of cols) {
      const td = tr.insertCell(); const v = val(g, k);
      if (typeof v === 'number') {
        td.textContent = (100 * v).toFixed(1);
        if (best[k] !== null && Math.abs(v - best[k]) < 5e-4) td.className = 'best';
        if (k === 'All' && typeof g.lo === 'number' && typeof g.hi === 'number') {
          const s = document.createElement('span'); s.className = 'ci';
          s.textContent = ' \u00b1 ' + (50 * (g.hi - g.lo)).toFixed(1);
          td.title = '95% interval [' + (100 * g.lo).toFixed(1) + ', ' + (100 * g.hi).toFixed(1) + ']'; td.appendChild(s);
        }
      } else if (k === 'Run' && g.Kind === 'measured' && Number.isInteger(g.prov)) {
        const a = document.createElement('a'); a.href = '#prov-' + g.prov; a.textContent = String(v);
        a.title = 'what made this run'; td.appendChild(a); td.className = 'text';
      } else { td.textContent = v === undefined || v === null ? '\u2013' : String(v); td.className = 'text'; }
    }
  }
  const c = current(); const any = rows[0] || ROWS.find(r => r.dataset === c.dataset && r.table === c.table);
  $('caption').textContent = any ? (c.dataset + ': PCK@' + c.alpha + ' (%). Protocol (presets ' + any.presets + '): frame '
    + any.frame + ', threshold ' + any.threshold + ', aggregate ' + any.aggregate + '; a keypoint is correct when '
    + (any.strict ? 'd < alpha\u00b7T' : 'd \u2264 alpha\u00b7T') + '. '
    + (c.readout === 'own' ? "Each method's own readout. " : c.readout === 'best' ? 'Readout selected on the test split (*). ' : '')
    + (same.length ? 'All rows: ' + same.map(k => k.toLowerCase() + ' ' + data[0][k]).join(', ') + '. ' : '')
    + 'All \u00b1 = half-width of the 95% bootstrap interval over pairs (hover for the interval); '
    + (pairSets.length > 1 ? 'rows cover different pairs: not ranked; ' : 'a unique best in bold; ')
    + '\u2020 = random weights; reported rows are published numbers.') : '';
  $('empty').textContent = data.length ? '' : 'No rows match the filters.';
  $('count').textContent = data.length + ' rows';
  for (const f of document.querySelectorAll('figure')) f.style.display = f.dataset.dataset === c.dataset ? '' : 'none';
}
for (const id of ['f-dataset', 'f-protocol', 'f-alpha']) $(id).addEventListener('change', () => { refreshChoices(); render(); });
for (const id of ['f-readout', 'f-tta', 'f-precision', 'hide-partial', 'hide-reported', 'hide-random'])
  $(id).addEventListener('change', render);
// full runs first, partial rows one click away; when every measured run is partial, they are the view
$('hide-partial').checked = ROWS.some(r => r.kind === 'measured' && !r.partial);
refreshChoices(true); render();
"""


def records(d: pd.DataFrame) -> list[dict]:
    """The rows the page holds (numbers in [0, 1], text as text); ``own`` marks each method's own readout."""
    from .compact import select_readout

    out = []
    for (ds, split, *key), g in d.groupby(["dataset", "split", "frame", "threshold", "aggregate"], sort=True):
        key = [ds if split == "test" else f"{ds}-{split}", *key]  # a split other than test is named, as in the files
        presets = ", ".join(sorted(set(g["protocol"].astype(str))))
        strict = is_strict(presets.split(", "), ds)
        g = g.drop_duplicates(["kind", "method", "run", "readout", "tta", "precision", "alpha", "category"])
        own_rows = select_readout(g, 0.1, "own", ["kind", "method", "run", "tta", "precision"])
        own_flags = {(r.kind, r.method, r.run, r.tta, r.precision): r.readout for r in own_rows.itertuples(index=False)}
        for r in g.itertuples(index=False):
            n, t = r.n_pairs, r.split_pairs
            num = lambda v: None if pd.isna(v) else round(float(v), 6)  # noqa: E731
            out.append({"dataset": key[0], "table": f"{key[1]} / {key[2]} / {key[3]}", "frame": key[1], "threshold": key[2],
                        "aggregate": key[3], "presets": presets, "strict": strict, "kind": r.kind, "method": r.method,
                        "run": str(r.run), "readout": r.readout, "tta": r.tta, "precision": r.precision,
                        "alpha": float(r.alpha), "category": "all" if r.category == WHOLE else str(r.category),
                        "pck": num(r.pck), "ci_low": num(r.ci_low), "ci_high": num(r.ci_high),
                        "partial": bool(r.partial), "random": bool(r.random_weights), "weights": str(r.weights),
                        "own": own_flags.get((r.kind, r.method, r.run, r.tta, r.precision)) == r.readout,
                        "status": str(r.status) or str(r.kind), "source": str(r.source),
                        "pairs": "published" if pd.isna(n) else f"{int(n)}/{'?' if pd.isna(t) else int(t)}"})
    return out


def embed(value) -> str:
    """JSON for a ``<script type="application/json">`` element: '<', '>' and '&' escaped, so no text in it
    (``</script>``, ``<!--`` then ``<script``) can end or alter the element."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def page(d: pd.DataFrame, figures: list[Path], title: str = "corrbench leaderboard", alpha: float = 0.1,
         readout: str = "own") -> str:
    """The whole page as text; each dataset opens on its main protocol table at ``alpha``, one row per
    method at ``readout`` (own by default), full runs only, sorted by score."""
    from html import escape

    from .compact import main_protocol
    from .sources import PROVENANCE

    meas = d[d["kind"] == "measured"].drop_duplicates("source")
    index = {str(r.source): i for i, r in enumerate(meas.itertuples(index=False))}
    rows = records(d)
    for r in rows:  # rows point at their run's provenance block; no local path goes into the page
        r["prov"] = index.get(r.pop("source"))
    blob = embed(rows)
    prov_blob = embed([{"run": str(r.run), "label": str(r.method), "status": str(r.status),
                        "record": PROVENANCE.get(str(r.source), {})} for r in meas.itertuples(index=False)])
    main = {}
    for ds, split in sorted(set(zip(d["dataset"], d["split"]))):
        key, _, _ = main_protocol(d[d["split"] == split], ds)
        main[ds if split == "test" else f"{ds}-{split}"] = {"table": " / ".join(map(str, key)), "alpha": alpha}
    main_blob = embed(main)
    figs = []
    for f in figures:
        if f.suffix == ".png" and f.is_file():
            data = base64.b64encode(f.read_bytes()).decode()
            ds = f.name.rsplit("-pck-vs-alpha", 1)[0].rsplit("-categories", 1)[0]
            figs.append(f'<figure data-dataset="{escape(ds)}"><img alt="{escape(f.stem)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{escape(f.stem)}</figcaption></figure>")
    n_runs = d.loc[d["kind"] == "measured", "source"].nunique()
    controls = "".join(f'<label>{lab} <select id="f-{k}"></select></label>' for k, lab in
                       [("dataset", "Dataset"), ("protocol", "Protocol table"), ("alpha", "alpha"), ("readout", "Readout"),
                        ("tta", "TTA"), ("precision", "Precision"), ("status", "Status")])
    toggles = "".join(f'<label><input type="checkbox" id="hide-{k}"> hide {lab}</label>' for k, lab in
                      [("partial", "partial runs"), ("reported", "reported rows"), ("random", "random-weight rows")])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'; script-src 'unsafe-inline'\"><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f"<p>{n_runs} measured run(s) and the bundled published numbers. Hover a row for its weights.</p>"
            f'<div id="controls">{controls}{toggles}<span id="count"></span></div>'
            '<p id="caption"></p><p id="empty"></p><table id="board"><thead></thead><tbody></tbody></table>'
            f"<h2>Figures</h2>{''.join(figs)}"
            "<h2>Provenance</h2><p>What made each measured run (its run.json: settings, weights and their hashes, "
            "versions, coverage). Status: verified = re-scored here from its predictions and a dataset copy "
            "(that proves the numbers follow from the predictions, not that the predictions came from the stated "
            "model); unverified = as its run claims; reported = a paper's number.</p><div id=\"provenance\"></div>"
            f'<script id="data" type="application/json">{blob}</script>'
            f'<script id="main" type="application/json">{main_blob}</script>'
            f'<script id="prov" type="application/json">{prov_blob}</script><script>const DEFAULT_READOUT = {embed(readout)};{SCRIPT}</script></body></html>\n')
