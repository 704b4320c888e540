"""Shared helpers of the pd_align benchmarks: synthetic pairs, timing statistics, one fresh process per
configuration (so that peak memory is that configuration's own), tables, JSON output, target lines."""
from __future__ import annotations
import argparse, json, math, os, platform, random, resource, subprocess, sys, time
from pathlib import Path

for _k, _v in dict(HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', MPLBACKEND='Agg', TOKENIZERS_PARALLELISM='false',
                   TRANSFORMERS_VERBOSITY='error', HF_DATASETS_DISABLE_PROGRESS_BARS='1').items():
    os.environ.setdefault(_k, _v)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / 'results'
WORKER_FLAG = '--_worker'
RESULT_TAG = '@@BENCH_RESULT '

# ---------------------------------------------------------------------------------------------------------------
# statistics and memory

def quantile(xs, q: float) -> float:
    "Linear-interpolation quantile (numpy's default), without numpy."
    xs = sorted(xs)
    if not xs: return float('nan')
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

def summary(xs) -> dict:
    "Median, quartiles and IQR of a list of numbers."
    xs = [float(x) for x in xs]
    q1, med, q3 = quantile(xs, .25), quantile(xs, .5), quantile(xs, .75)
    return dict(median=med, q1=q1, q3=q3, iqr=q3 - q1, n=len(xs), min=min(xs) if xs else float('nan'))

def fmt(s: dict, unit: str = '', scale: float = 1.0, digits: int = 1) -> str:
    "'median [q1, q3]' of a `summary`."
    f = lambda v: f"{v * scale:.{digits}f}"
    return f"{f(s['median'])} [{f(s['q1'])}, {f(s['q3'])}]{unit}"

def peak_rss_mb() -> float:
    "High-water mark of this process's resident memory (Linux: ru_maxrss is in KiB), MiB."
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def rss_mb() -> float:
    "Current resident memory of this process, MiB."
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20

def cuda_peak_mb():
    "torch.cuda.max_memory_allocated in MiB, or None without a GPU."
    import torch
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None

def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]

def machine() -> dict:
    "What the numbers were measured on."
    import torch
    try: commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError: commit = None
    return dict(python=platform.python_version(), torch=torch.__version__, cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                platform=platform.platform(), git_commit=commit, loadavg_start=loadavg(),
                time=time.strftime('%Y-%m-%d %H:%M:%S'))

def device() -> str:
    import torch
    return 'cuda' if torch.cuda.is_available() else 'cpu'

# ---------------------------------------------------------------------------------------------------------------
# synthetic text

_SYLL = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'to', 'vi', 'be', 'da', 'fo', 'gu', 'hi', 'ju', 'pe', 'zo']

def word_list(n: int = 256, seed: int = 0) -> list[str]:
    "n distinct pseudo-words of two or three syllables."
    rng, words = random.Random(seed), []
    while len(words) < n:
        w = ''.join(rng.choice(_SYLL) for _ in range(rng.choice((2, 3))))
        if w not in words: words.append(w)
    return words

def sized_pairs(n: int, # number of pairs
                    prompt_words: int = 24, # mean words per prompt
                    response_words: int = 48, # mean words per response
                    jitter: float = 0.5, # lengths uniform in [mean*(1-jitter), mean*(1+jitter)]
                    aspects=('helpfulness', 'honesty', 'instruction_following', 'truthfulness'),
                    seed: int = 0) -> list[dict]:
    """Fine-grained pair records (id, prompt, chosen, rejected, aspect, source) of pseudo-word text with given lengths.
    Not `pd_align.synthetic.synthetic_pairs`: a benchmark sets token lengths and the tokenizer's vocabulary size (the
    quantities it measures) over 256 pseudo-words; the labels carry no meaning. Tests and demos use the library's one."""
    rng, words = random.Random(seed), word_list(seed=seed)
    def text(mean):
        k = max(1, round(mean * rng.uniform(1 - jitter, 1 + jitter)))
        return ' '.join(rng.choice(words) for _ in range(k))
    return [dict(id=f'p{i}', prompt=text(prompt_words) + ' ?', chosen=' ' + text(response_words) + ' .',
                 rejected=' ' + text(response_words) + ' .', aspect=aspects[i % len(aspects)], source='bench')
            for i in range(n)]

def tokenizer_for(records, vocab_size: int = 512):
    "A byte-level BPE tokenizer trained on the records' texts (pd_align.tiny)."
    from pd_align.tiny import train_tokenizer
    texts = [r[k] for r in records for k in ('prompt', 'chosen', 'rejected')]
    return train_tokenizer(texts, vocab_size)

def n_params(model) -> int: return sum(p.numel() for p in model.parameters())

# ---------------------------------------------------------------------------------------------------------------
# fresh-process runs

def run_isolated(script: str, # the benchmark file (`__file__`)
                 worker: str, # name of a worker function registered with `worker_main`
                 kwargs: dict, # its JSON-able arguments
                 timeout: float = 600,
                 threads: int | None = None, # torch threads in the child (None: torch's default)
                ) -> dict:
    "Run `worker(**kwargs)` in a fresh Python process and return its JSON result (plus wall time of the process)."
    env = dict(os.environ)
    if threads: env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), BENCH_THREADS=str(threads))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.abspath(script), WORKER_FLAG, worker, json.dumps(kwargs)], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    lines = [l for l in p.stdout.splitlines() if l.startswith(RESULT_TAG)]
    if p.returncode != 0 or not lines:
        sys.stderr.write(p.stdout[-3000:] + '\n' + p.stderr[-6000:] + '\n')
        raise RuntimeError(f"worker {worker}({kwargs}) failed with exit code {p.returncode}")
    out = json.loads(lines[-1][len(RESULT_TAG):])
    out['process_wall_s'] = wall
    return out

def worker_main(workers: dict) -> bool:
    "If this process was started by `run_isolated`, run the requested worker, print its result and return True."
    if len(sys.argv) >= 4 and sys.argv[1] == WORKER_FLAG:
        name, kwargs = sys.argv[2], json.loads(sys.argv[3])
        if os.environ.get('BENCH_THREADS'):
            import torch
            torch.set_num_threads(int(os.environ['BENCH_THREADS']))
        res = workers[name](**kwargs)
        res.setdefault('peak_rss_mb', peak_rss_mb())
        res.setdefault('cuda_peak_mb', cuda_peak_mb())
        print(RESULT_TAG + json.dumps(res), flush=True)
        return True
    return False

def interleaved(configs: list, rounds: int):
    "ABAB order: round 1 runs every config once, then round 2, ... (so drifting machine load hits all alike)."
    return [(r, c) for r in range(rounds) for c in configs]

# ---------------------------------------------------------------------------------------------------------------
# output

def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument('--out', type=Path, default=None, help='JSON output file (default bench/results/NAME.json)')
    p.add_argument('--quick', action='store_true', help='tiny sizes: checks that the script works, numbers mean little')
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads per run (default 1: on a shared machine, '
                   'multi-threaded kernels stall on busy cores; 0 = torch default)')
    return p

def table(rows: list[dict], columns: list[str] | None = None) -> str:
    "A GitHub-markdown table of `rows` (dicts), also readable on a terminal."
    columns = columns or list(rows[0])
    cells = [[str(r.get(c, '')) for c in columns] for r in rows]
    w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(columns)]
    line = lambda xs: '| ' + ' | '.join(x.ljust(w[i]) for i, x in enumerate(xs)) + ' |'
    return '\n'.join([line(columns), '|' + '|'.join('-' * (x + 2) for x in w) + '|'] + [line(x) for x in cells])

def target_line(name: str, value: float, op: str, target: float) -> dict:
    "Print and return whether `value op target` holds ('<=' or '>=')."
    met = value <= target if op == '<=' else value >= target
    print(f"TARGET {name}: {value:.3f} (target {op} {target:g}) -> {'MET' if met else 'MISSED'}")
    return dict(name=name, value=value, op=op, target=target, met=met)

def save(name: str, result: dict, out: Path | None = None) -> Path:
    "Write the result JSON atomically to `out`, or bench/results/NAME.json (NAME_quick.json for --quick runs)."
    if result.get('size') == 'quick' and '_quick' not in name: name += '_quick'
    out = Path(out) if out else RESULTS / f'{name}.json'
    out.parent.mkdir(parents=True, exist_ok=True)
    result.setdefault('loadavg_end', loadavg())
    tmp = out.with_name(f'.{out.name}.tmp')
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return out
