"""Redraw the text toy's committed figures from the committed results, in the project's one figure style.

The PNGs of `nbs/results/text_toy_exploratory_{plain,rpo}/` and `nbs/results/text_toy_confirmatory/` were drawn
before the figure style (`pd_align.experiments.METHOD_STYLES`, `method_color`, `save_figure`). Their `results.json`
holds every number the plotting functions read (per-run rows, summary, config; the protocol of the confirmatory run),
so the figures are drawn again from it, by the functions that draw them today, without rerunning anything. Only the
PNGs are written; every results file stays as it is.

    python tools/redraw_text_toy_figures.py          # redraw the PNGs
    python tools/redraw_text_toy_figures.py --dry    # draw them, write nothing, print what would be written
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / 'nbs' / 'results'
EXPLORATORY = ('text_toy_exploratory_plain', 'text_toy_exploratory_rpo')
CONFIRMATORY = 'text_toy_confirmatory'


def exploratory_figures(folder:Path) -> dict:
    "{file name: figure} of an exploratory run, as `pd_align.text_toy.run_text_toy` draws them."
    from pd_align.experiments import read_results
    from pd_align.text_toy import plot_results, exploratory_title
    res = read_results(folder)
    axes = plot_results(res.runs, res.summary, title=exploratory_title(res.config['rpo_alpha']))
    return {'text_toy.png': axes[0].figure}


def confirmatory_figures(folder:Path) -> dict:
    "{file name: figure} of confirmatory run 1, as `pd_align.text_toy.write_confirmatory` draws them."
    from pd_align.experiments import read_results
    from pd_align.text_toy import Protocol, plot_confirmatory, plot_diagnostics
    res = read_results(folder)
    p = Protocol(**res.config['protocol'])
    return {'text_toy_confirmatory.png': plot_confirmatory(res.runs, p)[0].figure,
            'text_toy_diagnostics.png': plot_diagnostics(res.summary, p)[0].figure}


def redraw(write:bool=True) -> list[Path]:
    "Draw every figure from its folder's results.json; save it over the old PNG when `write`."
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from pd_align.experiments import figure_style, save_figure
    done = []
    with figure_style():
        jobs = [(RESULTS / n, exploratory_figures) for n in EXPLORATORY]
        jobs.append((RESULTS / CONFIRMATORY, confirmatory_figures))
        for folder, draw in jobs:
            for name, fig in draw(folder).items():
                path = folder / name
                if not path.exists():
                    raise FileNotFoundError(f'{path}: no committed figure of that name to redraw')
                if write: save_figure(fig, path, strict=True)
                else: plt.close(fig)
                done.append(path)
    return done


if __name__ == '__main__':
    dry = '--dry' in sys.argv[1:]
    for p in redraw(write=not dry): print(('would write ' if dry else 'wrote ') + str(p.relative_to(ROOT)))
