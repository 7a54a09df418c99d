"""PNG figures: per-class accuracy bars, grouped bars of several runs (--compare), the
confusion matrix under attack, DAFA's class weights W and class similarity S, and a run's
training curves."""
import os
from typing import List, Optional, Tuple

import matplotlib

matplotlib.use('Agg')  # files only; no display needed (servers, CI)
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.colors import LogNorm  # noqa: E402
import numpy as np  # noqa: E402

from engine.run import replacing  # noqa: E402

from .schema import evaluations  # noqa: E402
from .tables import group_results, seed_stats  # noqa: E402
from .runner import attack_of, display_name  # noqa: E402

DPI = 120
ANNOTATE_MAX_CLASSES = 12  # write the numbers into heatmap cells up to this many classes
SIMILARITY_FLOOR = 1e-3  # lowest similarity with its own colour on the log scale
COLORS = {'clean': '#4c72b0', 'pgd': '#dd8452', 'cw': '#8172b3', 'autoattack': '#c44e52'}


def _class_axis(ax, class_names):
    many = len(class_names) > 20
    ax.set_xticks(np.arange(len(class_names)))
    ax.set_xticklabels(class_names, rotation=90 if many else 45 if len(class_names) > 6 else 0,
                       ha='center' if many or len(class_names) <= 6 else 'right',
                       fontsize=6 if many else 9)
    ax.set_xlim(-0.6, len(class_names) - 0.4)


def _color(name: str) -> str:
    return COLORS[attack_of(name)]


def _save(fig, path: str) -> str:
    """Written through a temporary file and os.replace: never a torn PNG."""
    fig.tight_layout()
    try:
        with replacing(path, suffix='.png') as tmp:  # the suffix tells savefig the format
            fig.savefig(tmp, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def _width(num_classes: int) -> float:
    return min(24.0, max(7.0, 0.55 * num_classes + 2))


def per_class_figure(result: dict, path: str) -> str:
    """Bars per class, one per evaluation side by side; each evaluation's worst class is
    marked by a triangle in its colour (its tick label in bold) and its average drawn as a
    dashed line."""
    names, class_names = evaluations(result), result['class_names']
    x = np.arange(len(class_names))
    bar = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(_width(len(class_names)), 4.2))
    for i, n in enumerate(names):
        offset = (i - (len(names) - 1) / 2) * bar
        acc = np.array(result[n]['per_class'])
        ax.bar(x + offset, acc, bar, color=_color(n),
               label=f"{display_name(n)} (avg {result[n]['avg']:.1f}, worst "
                     f"{result[n]['worst']:.1f})")
        ax.axhline(result[n]['avg'], color=_color(n), ls='--', lw=1)
        worst = class_names.index(result[n]['worst_class'])
        ax.plot(x[worst] + offset, acc[worst] + 4, marker='v', ms=8, color=_color(n),
                markeredgecolor='black', ls='none')
    _class_axis(ax, class_names)
    worst_classes = {result[n]['worst_class'] for n in names}
    for label in ax.get_xticklabels():
        if label.get_text() in worst_classes:
            label.set_fontweight('bold')
    ax.set_ylim(0, 118)  # the band above 100 holds the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel('accuracy (%)')
    ax.set_title(f"{result['method'] or result['model']} on {result['dataset']}: per-class "
                 f"accuracy\n(n={result['n_eval']}, eps={result['epsilon']:g}; dashed line = "
                 'average, triangle = worst class)', fontsize=10)
    ax.legend(fontsize=8, loc='upper right', ncol=len(names))
    return _save(fig, path)


def compare_figure(results: List[Tuple[str, dict]], path: str) -> str:
    """Grouped bars per class, one bar per method (the mean over its seeds, with the sample
    std as an error bar when it has several), one panel per evaluation all results hold."""
    class_names = results[0][1]['class_names']
    names = [n for n in evaluations(results[0][1]) if all(n in r for _, r in results)]
    groups = group_results(results)
    x = np.arange(len(class_names))
    bar = 0.8 / len(groups)
    fig, axes = plt.subplots(len(names), 1, squeeze=False,
                             figsize=(_width(len(class_names)), 3.2 * len(names)))
    cmap = plt.get_cmap('tab10')
    for ax, n in zip(axes[:, 0], names):
        for i, (label, members) in enumerate(groups):
            st = seed_stats(members, n)
            seeds = f', {len(members)} seeds' if len(members) > 1 else ''
            ax.bar(x + (i - (len(groups) - 1) / 2) * bar, st['per_class'][0], bar,
                   yerr=st['per_class'][1] if len(members) > 1 else None, capsize=2,
                   color=cmap(i % 10),
                   label=f"{label} (avg {st['avg'][0]:.1f}, worst {st['worst'][0]:.1f}{seeds})")
        _class_axis(ax, class_names)
        ax.set_ylim(0, 118)  # the band above 100 holds the legend
        ax.set_yticks(range(0, 101, 20))
        ax.set_ylabel(f'{display_name(n)} accuracy (%)')
        ax.legend(fontsize=8, loc='upper right', ncol=len(groups))
    axes[0, 0].set_title(f"per-class accuracy, {results[0][1]['dataset']} "
                         f"(n={results[0][1]['n_eval']})")
    return _save(fig, path)


def _heatmap(ax, matrix: np.ndarray, class_names, *, fmt: str, cmap: str, label: str, fig,
             vmin=None, vmax=None, norm=None):
    image = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, norm=norm)
    ticks = np.arange(len(class_names))
    small = 7 if len(class_names) > ANNOTATE_MAX_CLASSES else 9
    ax.set_xticks(ticks)
    ax.set_xticklabels(class_names, rotation=90, fontsize=small)
    ax.set_yticks(ticks)
    ax.set_yticklabels(class_names, fontsize=small)
    if len(class_names) <= ANNOTATE_MAX_CLASSES:
        for (i, j), value in np.ndenumerate(matrix):
            r, g, b, _ = image.cmap(image.norm(value))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # perceived brightness of the cell
            ax.text(j, i, format(value, fmt), ha='center', va='center', fontsize=7,
                    color='white' if dark else 'black')
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)


def confusion_figure(result: dict, name: str, path: str) -> str:
    """The confusion matrix of one evaluation, each row as percent of its true class; the
    worst class's row label is drawn in red."""
    class_names = result['class_names']
    counts = np.array(result['confusion'][name], dtype=float)
    percent = 100.0 * counts / counts.sum(1, keepdims=True)
    size = min(16.0, max(5.5, 0.45 * len(class_names) + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    _heatmap(ax, percent, class_names, fmt='.0f', cmap='Blues', fig=fig, vmin=0, vmax=100,
             label='% of the true class')
    worst = class_names.index(result[name]['worst_class'])
    ax.get_yticklabels()[worst].set_color('red')
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(f"confusion under {display_name(name)} (worst class "
                 f"{result[name]['worst_class']} in red)")
    return _save(fig, path)


def dafa_figure(class_names, class_weights, similarity, path: str) -> Optional[str]:
    """DAFA's class weights W (bars; 1 = the plain loss) next to the class similarity S
    recorded during the warm-up epoch (heatmap). W is drawn only when it is not all ones (a
    DAFA run past the warm-up), S whenever given; None, and no file, when neither is."""
    if class_weights is not None and bool(np.all(np.asarray(class_weights) == 1)):
        class_weights = None
    panels = [p for p in (class_weights, similarity) if p is not None]
    if not panels:
        return None
    size = min(14.0, max(5.0, 0.45 * len(class_names) + 2.5))
    fig, axes = plt.subplots(1, len(panels), squeeze=False, figsize=(size * len(panels), size))
    axes = list(axes[0])
    if class_weights is not None:
        ax = axes.pop(0)
        w = np.asarray(class_weights, dtype=float)
        ax.bar(np.arange(len(w)), w, color=np.where(w < 1, '#4c72b0', '#c44e52'))
        ax.axhline(1.0, color='black', lw=1, ls='--')
        _class_axis(ax, class_names)
        ax.set_ylabel('class weight W (loss weight and eps margin)')
        ax.set_title('DAFA class weights W (red > 1 > blue)')
    if similarity is not None:
        ax = axes.pop(0)
        # Log colours: the diagonal dominates S, and the point is which off-diagonal (similar)
        # classes stand out from the rest.
        _heatmap(ax, np.asarray(similarity, dtype=float), class_names, fmt='.2f',
                 cmap='viridis', fig=fig, label='similarity (log scale)',
                 norm=LogNorm(vmin=SIMILARITY_FLOOR, vmax=1.0, clip=True))
        ax.set_xlabel('class j')
        ax.set_ylabel('true class i')
        ax.set_title('class similarity S[i, j]: mean adversarial probability\n'
                     'of class j on class-i samples (warm-up epoch)')
    return _save(fig, path)


def evaluation_figures(result: dict, out_dir: str, stem: str) -> List[str]:
    """The figures of one evaluation file: per-class bars, and the confusion matrix under each
    attack (the clean one when no attack ran). Written as <out_dir>/<stem>_*.png."""
    paths = [per_class_figure(result, os.path.join(out_dir, f'{stem}_per_class.png'))]
    for name in evaluations(result)[1:] or ['clean']:
        paths.append(confusion_figure(result, name,
                                      os.path.join(out_dir, f'{stem}_confusion_{name}.png')))
    return paths


def sweep_figure(runs: List[dict], key: str, path: str) -> str:
    """A sensitivity study: for each swept method, average and worst-class accuracy under its
    last evaluation against the value of --key, one point per seed and a line through the means.
    runs: reproduce.py's run records ({'method', 'setting': [key, value], 'seed', 'result'})."""
    swept = [r for r in runs if r['setting']]
    values = sorted({r['setting'][1] for r in swept}, key=_as_number)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method in dict.fromkeys(r['method'] for r in swept):
        mine = [r for r in swept if r['method'] == method]
        name = evaluations(mine[0]['result'])[-1]
        for ax, stat in zip(axes, ('avg', 'worst')):
            x = [values.index(r['setting'][1]) for r in mine]
            y = [r['result'][name][stat] for r in mine]
            points = ax.scatter(x, y, s=18, alpha=0.6)
            means = [np.mean([v for xi, v in zip(x, y) if xi == i]) for i in range(len(values))]
            ax.plot(range(len(values)), means, marker='o', color=points.get_facecolor()[0],
                    label=f'{method} ({display_name(name)})')
            ax.set_xticks(range(len(values)), values)
            ax.set_xlabel(f'--{key}')
            ax.set_ylabel(f"{'average' if stat == 'avg' else 'worst-class'} accuracy (%)")
            ax.grid(alpha=0.3)
    for method in dict.fromkeys(r['method'] for r in runs if not r['setting']):
        mine = [r for r in runs if r['method'] == method]
        name = evaluations(mine[0]['result'])[-1]
        for ax, stat in zip(axes, ('avg', 'worst')):  # what the swept runs compare against
            ax.axhline(np.mean([r['result'][name][stat] for r in mine]), ls='--', lw=1,
                       color='grey', label=f'{method} (not swept), mean')
    axes[0].legend(fontsize=8)
    fig.suptitle(f'sensitivity to --{key} (points: seeds; line: mean over seeds)')
    return _save(fig, path)


def _as_number(text: str):
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def curves_figure(rows: List[dict], class_names: List[str], path: str, *,
                  marks: dict = (), class_weights: Optional[List[float]] = None) -> str:
    """Training curves from a run's metrics rows: the loss (natural and robust terms) and the
    lr per epoch, then each class's clean and PGD test accuracy at the evaluated epochs (the
    worst class drawn bold), with marks ({label: epoch}, e.g. DAFA's tau) as vertical lines and
    class_weights (e.g. DAFA's W) in the class legend."""
    epochs = [r['epoch'] for r in rows]
    pgd = next((k for r in rows for k in r if attack_of(k) == 'pgd'), None)
    evaluated = [r for r in rows if 'clean' in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    for key, style in (('loss', '-'), ('loss_natural', '--'), ('loss_robust', ':')):
        ax.plot(epochs, [r[key] for r in rows], style, color='#4c72b0', label=key)
    ax.set_xlabel('epoch')
    ax.set_ylabel('training loss')
    lr = ax.twinx()
    lr.plot(epochs, [r['lr'] for r in rows], color='gray', lw=1, label='lr')
    lr.set_yscale('log')
    lr.set_ylabel('lr', color='gray')
    ax.legend(fontsize=7, loc='upper right')
    cmap = plt.get_cmap('tab10' if len(class_names) <= 10 else 'tab20')
    for ax, name in zip(axes[1:], ('clean', pgd)):
        if name is None or not evaluated:
            ax.set_axis_off()
            continue
        x = [r['epoch'] for r in evaluated]
        final = evaluated[-1][name]['per_class']
        worst = int(np.argmin(final))
        for c, class_name in enumerate(class_names):
            label = class_name + (f' (W {class_weights[c]:.2f})' if class_weights else '')
            ax.plot(x, [r[name]['per_class'][c] for r in evaluated], marker='.',
                    color=cmap(c % cmap.N), lw=2.5 if c == worst else 1, label=label)
        ax.set_xlabel('epoch')
        ax.set_ylabel(f'{display_name(name)} test accuracy (%)')
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    if evaluated and len(class_names) <= 20:
        axes[2 if pgd else 1].legend(fontsize=6.5, loc='upper left', ncol=2)
    for ax in axes:
        for label, epoch in dict(marks).items():
            ax.axvline(epoch, color='#c44e52', ls=':', lw=1)
            ax.text(epoch, ax.get_ylim()[0], f' {label}', fontsize=7, color='#c44e52',
                    va='bottom')
    return _save(fig, path)
