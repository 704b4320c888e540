"""Benchmark 5: wall time of the toy experiment (`pd_align.toy.run_experiment`) vs the number of prompts, 1e2 ... 1e5.

The problem grows with the prompts: `pairs_per_aspect = n_prompts` (K = 4 aspects, so 4 pairs per prompt),
6 candidate responses per prompt, one conflict share (0.3), one seed, every main-table method, DPO with the
default 150 full-batch steps; the budget sweep and the PD-quality curve are off (they multiply the same work).
Each size runs in a fresh process (peak RSS per size); rounds repeat all sizes (small sizes only, the large
ones once). The target: linear growth, i.e. a log-log slope of time vs prompts <= 1.1 over 1e3..1e5
(below 1e3 fixed costs dominate). Writes bench/results/toy_scaling.png.

    python bench/toy_scaling.py                  # 1e2 ... 1e5, ~3-5 min on 2 cores
    python bench/toy_scaling.py --max-prompts 10000
    python bench/toy_scaling.py --quick
"""
from __future__ import annotations
import math, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

POINTS = [100, 300, 1_000, 3_000, 10_000, 30_000, 100_000]
QUICK = [300, 1_000, 3_000]

def worker(n_prompts: int) -> dict:
    from pd_align.toy import run_experiment
    t = time.perf_counter()
    table = run_experiment(shares=(0.3,), seeds=1, n_prompts=n_prompts, pairs_per_aspect=n_prompts, sweep_share=None,
                           quality=False, progress=False)
    return dict(seconds=time.perf_counter() - t, n_methods=len(table), n_pairs=4 * n_prompts)

WORKERS = dict(run=worker)

def slope(xs, ys) -> float:
    "Least-squares slope of log(y) on log(x)."
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)

def plot(points: dict, path: Path):
    "Left: time vs prompts (log-log) with a linear reference; right: time per 1k prompts (flat when linear)."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    xs = sorted(points)
    med = [C.summary(points[x])['median'] for x in xs]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for x in xs: ax.scatter([x] * len(points[x]), points[x], color='tab:blue', alpha=.35, s=14)
    ax.plot(xs, med, 'o-', color='tab:blue', label='run_experiment (median)')
    ref = med[-1] / xs[-1]
    ax.plot(xs, [ref * x for x in xs], '--', color='grey', label='linear through the largest point')
    ax.set_xscale('log'); ax.set_yscale('log')
    ax.set_xlabel('prompts (pairs = 4 x prompts)'); ax.set_ylabel('wall time, s')
    ax.set_title('toy experiment: time vs problem size'); ax.legend()
    ax2.plot(xs, [m / x * 1e3 for m, x in zip(med, xs)], 'o-', color='tab:orange')
    ax2.set_xscale('log'); ax2.set_ylim(bottom=0)
    ax2.set_xlabel('prompts'); ax2.set_ylabel('seconds per 1k prompts'); ax2.set_title('cost per prompt (flat = linear)')
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110); plt.close(fig)

def main():
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument('--max-prompts', type=int, default=100_000)
    p.add_argument('--repeats', type=int, default=2, help='runs per size up to 1e4 (larger sizes run once)')
    a = p.parse_args()
    pts = [x for x in (QUICK if a.quick else POINTS) if x <= a.max_prompts]
    reps = {x: (1 if a.quick else a.repeats if x <= 10_000 else 1) for x in pts}
    info = C.machine()
    print(f"toy scaling: prompts {pts}, pairs = 4 x prompts, 6 responses, 9 methods x 150 DPO steps; load {info['loadavg_start']}")
    order = [(r, x) for r in range(max(reps.values())) for x in pts if r < reps[x]]
    times, runs = {x: [] for x in pts}, []
    for r, x in order:
        res = C.run_isolated(__file__, 'run', dict(n_prompts=x), timeout=900, threads=a.threads)
        res.update(n_prompts=x, round=r, loadavg=C.loadavg())
        runs.append(res); times[x].append(res['seconds'])
        print(f"  {x:>7,} prompts: {res['seconds']:7.2f} s  peak RSS {res['peak_rss_mb']:6.0f} MiB  (load {res['loadavg'][0]})", flush=True)
    rows = []
    for x in pts:
        st, mem = C.summary(times[x]), C.summary([q['peak_rss_mb'] for q in runs if q['n_prompts'] == x])
        rows.append({'prompts': f"{x:,}", 'pairs': f"{4 * x:,}", 'seconds, median [IQR]': C.fmt(st, '', 1, 2), 'runs': st['n'],
                     'ms per 1k prompts': f"{st['median'] / x * 1e6:.0f}", 'peak RSS MiB': f"{mem['median']:.0f}"})
    print(C.table(rows))
    big = [x for x in pts if x >= 1_000]
    med = {x: C.summary(times[x])['median'] for x in pts}
    out = a.out or C.RESULTS / ('toy_scaling_quick.json' if a.quick else 'toy_scaling.json')
    png = Path(out).with_suffix('.png')
    plot(times, png)
    print(f"plot: {png}")
    res = dict(benchmark='toy_scaling', size='quick' if a.quick else 'default', points=pts, settings=dict(pairs_per_aspect='= n_prompts', n_responses=6, shares=[0.3], seeds=1,
               sweep=False, quality=False, threads=a.threads), machine=info, times=times, median=med, runs=runs, table=rows, plot=str(png))
    if len(big) >= 2:
        s = slope(big, [med[x] for x in big])
        res.update(slope_1e3_up=s, slope_all=slope(pts, [med[x] for x in pts]))
        res['target'] = C.target_line(f'log-log slope of time vs prompts, {big[0]:,}..{big[-1]:,}', s, '<=', 1.1)
    else: print('fewer than two sizes >= 1e3: no slope (use the default sizes)')
    C.save('toy_scaling', res, out)

if __name__ == '__main__':
    if not C.worker_main(WORKERS): main()
