"""The leaderboard's two views of benchmark/leaderboard.py's rows: LEADERBOARD.md and one static
page, leaderboard/index.html (no server, no network: the numbers are in its HTML, an inline
script sorts the tables and draws the per-class bars as SVG from the JSON block it carries).
Both are functions of the committed results only, so a rebuild is byte-identical."""
import html
import json
import os
import re
from typing import Dict, List

from .leaderboard import TRACKS, cell, columns, evaluation_note, fmt, protocol_note

INTRO = ('Robust fairness per class: every method under one protocol per track, trained from '
         'the same recipe (`scripts/reproduce.py --recipe shared`), each checkpoint chosen on a '
         'held-out validation split (never the test set), the final model beside it. '
         'Percent; mean ± sample std over seeds. Ranked by the worst class under PGD-20.')
DEFINITIONS = ('class std: the standard deviation of the 10 class accuracies; NSD: class std / '
               'average; gap: best class minus worst class; head / medium / tail (long-tailed '
               'tracks): the mean of classes 0-2 / 3-6 / 7-9, our split; AA: AutoAttack '
               '(standard, L-inf 0.031) on a class-stratified subset of the test set (its size '
               'per track); chosen: the epoch each seed\'s validation split chose; time: training '
               'seconds per epoch against TRADES on the same track (how they were timed: under '
               'each track); needs: what a run took beyond the base recipe.')


def _rel(path: str, start: str) -> str:
    return os.path.relpath(path, start).replace(os.sep, '/')


def _seeds(row) -> int:
    return len(row['figures']['seeds'])


def _time(row) -> str:
    return '-' if row['time_vs_trades'] is None else f"{row['time_vs_trades']:.2f}x"


def _chosen(row) -> str:
    return ','.join(map(str, row['figures']['selected_epochs']))


def markdown(tracks: Dict[str, List[dict]], root: str, out_dir: str) -> str:
    lines = ['# Leaderboard', '', INTRO, '', DEFINITIONS, '',
             'Rebuilt from the committed results by `python scripts/leaderboard.py`; the page '
             f"with sortable tables and per-class bars: [{_rel(os.path.join(root, 'index.html'), out_dir)}]"
             f"({_rel(os.path.join(root, 'index.html'), out_dir)}).", '']
    for track, rows in tracks.items():
        cols = columns(track)
        lines += [f"## {TRACKS[track]['title']} (`--protocol {track}`)", '',
                  protocol_note(track) + '.', '']
        if not rows:
            lines += ['No entry yet.', '']
            continue
        lines += [evaluation_note(rows), '',
                  '| # | method | seeds | chosen | ' + ' | '.join(h for _, h in cols)
                  + ' | time | needs |',
                  '|---:|---|---|---|' + '---:|' * len(cols) + '---:|---|']
        for rank, row in enumerate(rows, 1):
            seeds = _seeds(row)
            cells = [fmt(cell(row['figures'], k), seeds, k.rpartition('.')[2]) for k, _ in cols]
            card = _rel(os.path.join(row['folders'][0], 'model_card.json'), out_dir)
            lines.append(f"| {rank} | [{row['label']}]({card}) | "
                         f"{','.join(map(str, row['figures']['seeds']))} | {_chosen(row)} | "
                         + ' | '.join(cells) + f" | {_time(row)} | "
                         f"{', '.join(row['needs']) or '-'} |")
        lines += ['', 'PGD-20 per class (mean over seeds):', '',
                  '| method | ' + ' | '.join(rows[0]['class_names']) + ' |',
                  '|---|' + '---:|' * len(rows[0]['class_names'])]
        for row in rows:
            means = row['figures']['pgd20']['per_class'][0]
            lines.append(f"| {row['label']} | " + ' | '.join(f'{v:.2f}' for v in means) + ' |')
        lines += ['', 'The commands:', '']
        lines += [f'    {line}' for row in rows for line in row['command'].splitlines()]
        lines.append('')
    return '\n'.join(lines)


_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{padding:3px 8px;border-bottom:1px solid #ddd}
th{cursor:pointer;background:#f4f4f4;position:sticky;top:0}td.n{text-align:right}
.bars{display:flex;flex-wrap:wrap;gap:12px}.bars figure{margin:0}figcaption{font-size:12px}
code{background:#f4f4f4;padding:1px 3px}"""

# Sorts a table by the clicked column (numbers by data-v), and draws each method's per-class
# PGD-20 bars from the page's JSON block.
_SCRIPT = """
document.querySelectorAll('table.board th').forEach(function(th, i) {
  th.addEventListener('click', function() {
    var body = th.closest('table').tBodies[0];
    var rows = Array.from(body.rows), up = th.dataset.dir !== 'up';
    th.dataset.dir = up ? 'up' : 'down';
    rows.sort(function(a, b) {
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v;
      var cmp = (x !== undefined && y !== undefined) ? parseFloat(x) - parseFloat(y)
        : a.cells[i].textContent.localeCompare(b.cells[i].textContent);
      return up ? cmp : -cmp;
    });
    rows.forEach(function(r) { body.appendChild(r); });
  });
});
var data = JSON.parse(document.getElementById('per-class').textContent);
Object.keys(data).forEach(function(track) {
  var holder = document.getElementById('bars-' + track), t = data[track];
  t.rows.forEach(function(row) {
    var w = 22, h = 120, svg = '<svg width="' + (w * row.pgd20.length + 10) + '" height="' +
      (h + 40) + '" xmlns="http://www.w3.org/2000/svg">';
    var worst = Math.min.apply(null, row.pgd20);
    row.pgd20.forEach(function(v, c) {
      var bh = v / 100 * h, colour = v === worst ? '#c0392b' : '#4a7ab5';
      svg += '<rect x="' + (5 + c * w) + '" y="' + (h - bh) + '" width="' + (w - 4) +
        '" height="' + bh + '" fill="' + colour + '"><title>' + t.classes[c] + ': ' + v.toFixed(2) +
        '</title></rect><text x="' + (5 + c * w + 8) + '" y="' + (h + 12) +
        '" font-size="9" text-anchor="middle">' + t.classes[c].slice(0, 3) + '</text>';
    });
    svg += '<text x="5" y="' + (h + 30) + '" font-size="11">' + row.label + '</text></svg>';
    var fig = document.createElement('figure');
    fig.innerHTML = svg;
    holder.appendChild(fig);
  });
});
"""


def _prose(text: str) -> str:
    """Markdown's `code` as HTML."""
    return re.sub(r'`([^`]*)`', r'<code>\1</code>', html.escape(text))


def page(tracks: Dict[str, List[dict]], root: str) -> str:
    e = html.escape
    parts = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
             '<title>Robust-fairness leaderboard</title>', f'<style>{_STYLE}</style></head><body>',
             '<h1>Robust-fairness leaderboard</h1>', f'<p>{_prose(INTRO)}</p>',
             f'<p>{_prose(DEFINITIONS)}</p>']
    bars = {}
    for track, rows in tracks.items():
        cols = columns(track)
        parts += [f"<h2 id=\"{track}\">{e(TRACKS[track]['title'])} "
                  f'(<code>--protocol {track}</code>)</h2>', f'<p>{e(protocol_note(track))}.</p>']
        if not rows:
            parts.append('<p>No entry yet.</p>')
            continue
        parts.append(f'<p>{e(evaluation_note(rows))}</p>')
        parts.append(f'<table class="board" id="table-{track}"><thead><tr><th>#</th><th>method</th>'
                     '<th>seeds</th><th>chosen</th>' + ''.join(f'<th>{e(h)}</th>' for _, h in cols)
                     + '<th>time</th><th>needs</th><th>evidence</th></tr></thead><tbody>')
        for rank, row in enumerate(rows, 1):
            seeds = _seeds(row)
            tds = []
            for key, _ in cols:
                value = cell(row['figures'], key)
                v = '' if value is None else f' data-v="{value[0]:.6f}"'
                tds.append(f'<td class="n" data-key="{key}"{v}>'
                           f"{e(fmt(value, seeds, key.rpartition('.')[2]))}</td>")
            links = ' '.join(
                f'<a href="{e(_rel(os.path.join(f, name), root))}">{label}{s}</a>'
                for s, f in zip(row['figures']['seeds'], row['folders'])
                for name, label in (('model_card.json', 'card'), ('result.json', 'result')))
            time_v = '' if row['time_vs_trades'] is None else f" data-v=\"{row['time_vs_trades']:.6f}\""
            parts.append(f'<tr data-method="{row["method"]}"><td class="n" data-v="{rank}">{rank}</td>'
                         f"<td>{e(row['label'])}</td><td>{','.join(map(str, row['figures']['seeds']))}</td>"
                         f'<td>{_chosen(row)}</td>'
                         + ''.join(tds) + f'<td class="n"{time_v}>{_time(row)}</td>'
                         f"<td>{e(', '.join(row['needs']) or '-')}</td>"
                         f'<td>{links}<br><code>{e(row["command"])}</code></td></tr>')
        parts += ['</tbody></table>', '<h3>PGD-20 per class (mean over seeds; 0-100%, the '
                  'worst class in red)</h3>',
                  f'<div class="bars" id="bars-{track}"></div>']
        bars[track] = {'classes': rows[0]['class_names'],
                       'rows': [{'method': r['method'], 'label': r['label'],
                                 'pgd20': [round(v, 4) for v in r['figures']['pgd20']['per_class'][0]]}
                                for r in rows]}
    block = json.dumps(bars, sort_keys=True).replace('</', '<\\/')
    parts += [f'<script type="application/json" id="per-class">{block}</script>',
              f'<script>{_SCRIPT}</script>', '</body></html>', '']
    return '\n'.join(parts)
