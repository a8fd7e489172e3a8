"""
What the experiments share: statistics, atomic writes, running train.py over a grid, tables, the
per-run data, command-line helpers. The core (model.py, train.py, ...) never imports it.
"""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: train.py, model.py, ...

import atomic_files  # noqa: E402
import batches  # noqa: E402
import checkpoint  # noqa: E402
import configurator  # noqa: E402
import runtime  # noqa: E402
from atomic_files import write_atomically  # noqa: E402
from checkpoint import load_model  # noqa: E402,F401  (load_model: the experiments' import)
from mask import check_options  # noqa: E402
from model import GPTConfig, num_params_of  # noqa: E402
from runtime import die  # noqa: E402


# -----------------------------------------------------------------------------
# statistics: a difference is a gain or a loss only where its paired 95% interval excludes 0

T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,  # Student t, 97.5%,
       2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086]  # df = 1..20


def mean_sd(values):
    """Mean and sample standard deviation (0 for a single value), ignoring NaNs."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_ci(a, b):
    """Mean of the paired differences a - b and the half-width of its 95% paired-t interval
    (NaN with fewer than two pairs). Pairs with a NaN on either side are dropped."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[~np.isnan(d)]
    if len(d) < 2:
        return (float(d.mean()) if len(d) else float("nan")), float("nan")
    t = T95[len(d) - 2] if len(d) - 1 <= len(T95) else 1.96
    return float(d.mean()), float(t * d.std(ddof=1) / math.sqrt(len(d)))


def steps_to(metrics, target=0.9, key="acc"):
    """The first logged iteration at which metrics[key] >= target; NaN if never."""
    for row in metrics:
        if key in row and row[key] >= target:
            return float(row["iter"])
    return float("nan")


# -----------------------------------------------------------------------------
# checkpoints and files: results are written atomically, never half a file

def read_json(path):
    with open(path) as f:
        return json.load(f)


def evals_of(run_dir):
    """The evaluation rows (those with a val_loss) of the train.py log in run_dir, metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [row for row in map(json.loads, f) if "val_loss" in row]


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    write_atomically(path, write)  # a half-written result is never read as finished


def save_png(fig, path):
    """A matplotlib Figure as a PNG at path, through a temporary file: never a half-written picture."""
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1))


# -----------------------------------------------------------------------------
# running train.py: one run per folder, several at a time, Ctrl-C stops them all

def train_cmd(run_dir, ratio, seed, settings):
    """The train.py command of one run; resumes when the run has a checkpoint."""
    cmd = [sys.executable, "train.py", "--out_dir", run_dir, "--mask_ratio", str(ratio), "--seed", str(seed)]
    cmd += [f"--{k}={v}" for k, v in settings.items()]
    if os.path.exists(os.path.join(run_dir, "ckpt.pt")):
        cmd += ["--init_from", "resume"]
    return cmd


_children = set()  # the train.py processes running now (stop_children stops them)
_stopping = False  # set by stop_children: from then on no train.py is started
_lock = threading.Lock()  # guards both: a worker thread cannot start a run while they are read


def stop_children():
    """Ctrl-C every train.py this process started, and wait until each has ended: it stops at once,
    keeping its last checkpoint, which a rerun resumes from (bit-exact). The signal is sent again
    every few seconds to a run that is still there (one caught while loading its libraries)."""
    global _stopping
    with _lock:
        _stopping = True
    while True:
        with _lock:
            alive = [p for p in _children if p.poll() is None]
        if not alive:
            return
        for p in alive:
            p.send_signal(signal.SIGINT)
        for p in alive:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def train(run_dir, ratio, seed, settings, threads):
    """Train one run with train.py (train_cmd) into run_dir, logging to run_dir/train.log: from
    scratch, from its checkpoint, or not at all when that checkpoint has reached max_iters.
    threads: OMP threads for train.py (0 = its default). RuntimeError naming the log on failure."""
    run_dir = os.path.abspath(run_dir)  # train.py runs from the repository, wherever we were called
    os.makedirs(run_dir, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # two 1-thread runs on 2 cores beat one 2-thread run
    try:
        _, _, done_iters = load_model(run_dir) if os.path.exists(os.path.join(run_dir, "ckpt.pt")) else (0, 0, -1)
    except ValueError as e:
        raise RuntimeError(f"{e}; delete {run_dir} to train that run again") from None
    if done_iters < int(settings["max_iters"]):
        with open(os.path.join(run_dir, "train.log"), "a") as log:
            with _lock:
                if _stopping:  # Ctrl-C came while this worker was on its way here
                    raise KeyboardInterrupt
                p = subprocess.Popen(train_cmd(run_dir, ratio, seed, settings), stdout=log,
                                     stderr=subprocess.STDOUT, env=env, cwd=ROOT)
                _children.add(p)
            try:
                p.wait()
            except KeyboardInterrupt:  # (in the main thread: compare_sft's base run)
                stop_children()
                raise
            finally:
                with _lock:
                    _children.discard(p)
        if p.returncode != 0:
            raise RuntimeError(f"train.py failed for {run_dir}; see {run_dir}/train.log")


def in_parallel(fn, todo, jobs, describe, eta_label="eta"):
    """fn(job) for every job of todo, `jobs` at a time, with a progress line after each:
    describe(job, result), its minutes and the ETA. A RuntimeError (a failed run) starts no more
    jobs and exits with its one line; Ctrl-C stops the running ones and raises KeyboardInterrupt at
    once (see interrupted). Returns [(job, result)] in the order they finished."""
    global _stopping
    t0, done, _stopping = time.time(), [], False

    def timed(job):
        t = time.time()
        return job, fn(job), time.time() - t

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for n, future in enumerate(as_completed([pool.submit(timed, job) for job in todo]), 1):
            try:
                job, res, dt = future.result()
            except RuntimeError as e:  # a failed run: start no more, say which and where its log is
                pool.shutdown(wait=True, cancel_futures=True)
                die(f"{e}")
            done.append((job, res))
            eta = (time.time() - t0) / n * (len(todo) - n)
            print(f"[{n}/{len(todo)}] {describe(job, res)} | {dt / 60:.1f} min | {eta_label} {eta / 60:.1f} min",
                  flush=True)
    except KeyboardInterrupt:
        stop_children()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return done


def run_name(ratio, seed):
    return f"r{ratio:.2f}_s{seed}"


def grid_runs(out, ratios, seeds, train, describe, jobs):
    """The runs of a grid of (mask ratio, seed): those with a suite.json in out/runs are read back, the
    others trained by train((ratio, seed, run_dir)), `jobs` at a time, each finished one printed with
    describe(job, suite) (see in_parallel). Returns {(ratio, seed): suite}."""
    todo, results = [], {}
    for seed in seeds:
        for r in ratios:
            run_dir = os.path.join(out, "runs", run_name(r, seed))
            if os.path.exists(os.path.join(run_dir, "suite.json")):
                results[(r, seed)] = read_json(os.path.join(run_dir, "suite.json"))
            else:
                todo.append((r, seed, run_dir))
    if results:
        print(f"reusing {len(results)} finished run(s) in {out}/runs")
    finished = in_parallel(train, todo, jobs, describe, eta_label="grid eta")
    results.update({(r, seed): res for (r, seed, _), res in finished})
    return results


def interrupted(out):
    """After Ctrl-C: stop the train.py runs, say how to continue, and exit (130) without waiting
    for an evaluation still running in a worker thread (its result is simply redone next time)."""
    stop_children()
    print(f"error: interrupted; the finished runs are kept in {out}; run the same command again to continue "
          f"(a half-trained run resumes from its last checkpoint)", file=sys.stderr, flush=True)
    checkpoint.release()
    sys.stdout.flush()
    os._exit(130)


# -----------------------------------------------------------------------------
# tables: mean ± sd per row, and paired differences with their intervals

def seeds_of(results, row, seeds):
    """The seeds among `seeds` that row `row` of results has a run for."""
    return [s for s in seeds if (row, s) in results]


VERDICTS = " (gain or loss where the interval excludes 0; higher or lower where neither side is better)"


def verdict(d, h, better=None):
    """The word a paired difference d ± h (95% interval) earns: "no measurable difference" unless the
    interval excludes 0; then "gain" or "loss" where the column says which side is better
    ("higher" or "lower"), else just "higher" or "lower". Without an interval (one seed), no word."""
    if math.isnan(d) or math.isnan(h):
        return "no interval"
    if d - h <= 0 <= d + h:
        return "no measurable difference"
    if better is None:
        return "higher" if d > 0 else "lower"
    return "gain" if (d > 0) == (better == "higher") else "loss"


# -----------------------------------------------------------------------------
# the reports' cells and tables, one way everywhere (the reports and digest.py's README tables)

def header(first, titles):
    """A markdown table's head: the first column's title, the others', and the rule under them."""
    return f"| {first} | " + " | ".join(titles) + " |\n" + "|---" * (len(titles) + 1) + "|\n"


def mean_cell(values, fmt):
    """"mean ± sd" over seeds in fmt (a spread has no sign); NaNs (a step never reached) are left
    out and counted: "never" when all are."""
    n_nan = int(np.isnan(np.asarray(values, dtype=float)).sum())
    if n_nan == len(values):
        return "never"
    m, sd = mean_sd(values)
    return f"{fmt.format(m)} ± {fmt.replace('+', '').format(sd)}" + (f" ({n_nan} never)" if n_nan else "")


def diff_cell(a, b, fmt, better=None):
    """a - b paired by position (values of the same seeds): "mean [95% paired-t interval] verdict",
    in fmt, the mean with its sign; "n/a" or "(one seed, no interval)" with fewer than two pairs (a
    NaN is "never")."""
    d, h = paired_ci(a, b)
    fmt = fmt.replace("+", "")
    signed = fmt.replace("{:", "{:+")
    if not math.isnan(h):
        return f"{signed.format(d)} [{fmt.format(d - h)}, {fmt.format(d + h)}] {verdict(d, h, better)}"
    return "n/a" if math.isnan(d) else f"{signed.format(d)} (one seed, no interval)"


def diff_cells(a, b, columns, seeds):
    """diff_cell of each column (key, title, format[, better]); a and b map a seed to a run's dict."""
    return [diff_cell([a[s][key] for s in seeds], [b[s][key] for s in seeds], fmt, *better)
            for key, _, fmt, *better in columns]


def within(results, ratios, seeds, key, control, fmt="{:+.3f}"):
    """Markdown lines: per row, results[key] minus results[control] of the same runs, paired by seed,
    with its verdict (a measure against its own control, e.g. a metric against what renormalising
    alone gives)."""
    lines = []
    for r in ratios:
        both = seeds_of(results, r, seeds)
        a, b = ({s: {"d": results[(r, s)][k]} for s in both} for k in (key, control))
        label = f"{r:.2f}{' (NTP)' if r == 0 else ''}" if isinstance(r, float) else str(r)
        lines.append(f"- {label}: " + diff_cells(a, b, [("d", "", fmt)], both)[0] + "\n")
    return "".join(lines)


def summary(results, ratios, seeds, columns, names=None, baseline=0.0, first="mask_ratio"):
    """Markdown: mean ± sd over seeds per mask ratio of each (key, title, format) column, then
    each row minus the baseline row (NTP, ratio 0), paired by seed with a 95% paired-t interval,
    when the baseline is in the grid. A row may have fewer seeds than others (its label says how
    many); it is paired with the baseline over the seeds both have. names optionally maps a ratio
    (any key of results) to its row label; first is the title of the label column."""
    uneven = len({tuple(seeds_of(results, r, seeds)) for r in ratios}) > 1

    def name(r):
        label = (names or {}).get(r) or f"{r:.2f}{' (NTP)' if r == 0 else ''}"
        n = len(seeds_of(results, r, seeds))
        return label + (f" ({n} seeds)" if uneven else "")

    def vals(r, key):
        return [results[(r, s)][key] for s in seeds_of(results, r, seeds)]

    head = header(first, [c[1] for c in columns])
    lines = ["Mean ± sd over seeds " + ", ".join(map(str, seeds)) + (" (rows name their number of seeds)"
                                                                     if uneven else "") + ".\n", head]
    for r in ratios:
        lines.append(f"| {name(r)} | " + " | ".join(mean_cell(vals(r, key), fmt) for key, _, fmt, *_ in columns) + " |\n")
    if baseline in ratios and len(ratios) > 1:
        minus = "MEAP - NTP" if baseline == 0.0 else f"Minus {name(baseline)}"
        lines += [f"\n{minus}, paired by seed: mean [95% paired-t interval] and its verdict{VERDICTS}.\n", head]
        base = {s: results[(baseline, s)] for s in seeds_of(results, baseline, seeds)}
        for r in ratios:
            if r != baseline:
                both = [s for s in seeds_of(results, r, seeds) if s in base]
                row = {s: results[(r, s)] for s in both}
                lines.append(f"| {name(r)} | " + " | ".join(diff_cells(row, base, columns, both)) + " |\n")
    return "".join(lines).replace("nan", "n/a")


# -----------------------------------------------------------------------------
# per-run data: every folder keeps runs.json, and its report is a pure function of it

def load_runs(out, key="mask_ratio"):
    """out/runs.json as (data, {(run[key], seed): run}); a one-line exit if it is not one."""
    path = os.path.join(out, "runs.json")
    data = read_json_or_die(path)
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not isinstance(data.get("commands", []), list) or not all(
            isinstance(run, dict) and isinstance(run.get(key), (int, float, str)) and type(run.get("seed")) is int
            for run in runs):
        die(f"{path} is not a runs.json with a {key} and a seed in every run; restore it (git checkout)")
    data.setdefault("commands", [])
    return data, {(run[key], run["seed"]): run for run in data["runs"]}


def report_or_die(report, out):
    """report(out), or a one-line exit where out's per-run data lack what the report reads."""
    try:
        return report(out)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        die(f"{out}: its per-run data lack what the report reads ({type(e).__name__}: {e}); restore them "
            f"(git checkout), or run the grid again")


def record_runs(out, results, command=None, key="mask_ratio", **extra):
    """Merge results {(row, seed): run dict} into out/runs.json, add command (if any) to its list
    of commands, and set the extra fields given (those not None)."""
    path = os.path.join(out, "runs.json")
    data, runs = load_runs(out, key) if os.path.exists(path) else ({"commands": []}, {})
    runs.update(results)
    if command and command not in data["commands"]:
        data["commands"].append(command)
    data.update({k: v for k, v in extra.items() if v is not None})
    data["runs"] = [{key: row, "seed": seed, **{k: v for k, v in run.items() if k not in (key, "seed")}}
                    for (row, seed), run in sorted(runs.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))]
    write_json(path, data)


# -----------------------------------------------------------------------------
# the command lines of the experiments

# the command that prepares a dataset, where it is not data/NAME/prepare.py
PREPARE = {"stdlib_dense": "python data/stdlib/prepare.py --repeat 1 --out_dir data/stdlib_dense",
           "stdlib_repeat": "python data/stdlib/prepare.py --repeat 0.5 --repeat_block 128 --repeat_span 16,48 "
                            "--out_dir data/stdlib_repeat"}


def prepare_command(dataset):
    return PREPARE.get(dataset, f"python {shlex.quote(os.path.join('data', dataset, 'prepare.py'))}")


def parse_list(text, kind, flag=""):
    """A comma-separated option as a tuple of kind (finite, for floats); a one-line exit if not."""
    try:
        values = tuple(kind(v) for v in text.split(","))
        if kind is float and not all(math.isfinite(v) for v in values):
            raise ValueError
        return values
    except ValueError:
        die(f"cannot read {f'--{flag} ' if flag else ''}{text!r} as a comma-separated "
                         f"list of {kind.__name__}s")


def apply_set(settings, pairs, fixed, hint):
    """settings updated by --set KEY=VALUE pairs; a one-line exit for a malformed pair, a key in
    fixed (chosen per run by the comparison; hint names the options that choose it), or a key or
    value train.py would refuse: its type (as a flag), its range, the model's shape, MEAP's and
    fine-tuning's settings, the device and dtype, by train.py's own checks. All before anything is
    written."""
    settings = dict(settings)
    defaults = configurator.read_settings(os.path.join(ROOT, "train.py"))
    for kv in pairs:
        if "=" not in kv:
            die(f"--set takes KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        if k in fixed:
            die(f"--set {k} is chosen by the comparison; use {hint}")
        settings[k] = v
    try:
        s = {**defaults, **configurator.parse([f"--{k}={v}" for k, v in settings.items()], defaults)}
        configurator.check_ranges(s)
        device = runtime.precision(s["device"], s["dtype"]).device
        least = GPTConfig(block_size=s["block_size"], vocab_size=64, n_layer=s["n_layer"], n_head=s["n_head"],
                          n_kv_head=s["n_kv_head"], n_embd=s["n_embd"], init=s["init"], emb_common=s["emb_common"])
        runtime.check_memory(num_params_of(least), s["batch_size"] * s["block_size"], 64, device)
        if s["sft"] != "none":
            batches.check_sft(s)
        else:
            check_options(s["mask_ratio"], mode=s["mask_mode"], spares=not s["mask_queries"], corruption=s["corruption"])
        data = os.path.join("data", s["dataset"], "train.bin")
        if s["dataset"] != "synthetic" and not os.path.exists(data):
            die(f"{data} not found; prepare it first: {prepare_command(s['dataset'])}")
        # the task fits the block, the data fit their vocabulary: train.py's own checks
        batches.vocabulary(s["dataset"], s["block_size"], s["task"], s["n_pairs"], s["n_needles"], s["mqar_offset"])
    except ValueError as e:  # (ConfigError is one)
        die(f"--set: {e}")
    return settings


RESULTS = (".json", ".md", ".png", ".pt")  # what a results folder holds besides grid.json: per-run data, reports


def results_in(out):
    """The files of results (RESULTS) under the folder out, grid.json aside."""
    found = []
    for d, _, files in os.walk(out):
        found += [os.path.join(d, f) for f in files if f.endswith(RESULTS) and not atomic_files.is_temp(f)
                  and os.path.join(d, f) != os.path.join(out, "grid.json")]
    return sorted(found)


def claim_out(out, grid, planned=None, key="mask_ratio", overwrite=False):
    """Lock the results folder `out` for this process and write grid (its configuration) to
    out/grid.json, after two checks that keep results safe (a one-line exit, nothing written):
    - a folder holds one configuration: another is refused once the folder holds any results
      (before that, a corrected command may replace it);
    - planned, {(row, seed): the file that marks that run finished}, names the runs this command
      trains unless their file is there; one that out/runs.json already records (a committed
      result, on a fresh clone) is refused unless overwrite."""
    try:
        note = checkpoint.claim(out)
    except (ValueError, OSError) as e:
        die(f"--out: {e}")
    if note:
        print(note)
    cfg_path = os.path.join(out, "grid.json")
    old = read_json_or_die(cfg_path) if os.path.exists(cfg_path) else None
    if old is not None and not isinstance(old, dict):
        die(f"{cfg_path} is not a grid.json (a dict of settings); restore it (git checkout) or give a new --out")
    if old is not None and old != grid and results_in(out):
        changed = sorted(k for k in set(old) | set(grid) if old.get(k) != grid.get(k))
        die(f"{out} holds results of other settings ({cfg_path}: {', '.join(changed)} differ); "
            f"give a new --out (nothing there is replaced)")
    runs_path = os.path.join(out, "runs.json")
    if planned and os.path.exists(runs_path):
        recorded = load_runs(out, key)[1]
        again = [f"{row} seed {seed}" for (row, seed), done in planned.items()  # (a half-trained one continues)
                 if (row, seed) in recorded and not os.path.exists(os.path.dirname(done))]
        if again and overwrite:
            print(f"--overwrite: training {len(again)} run(s) that {runs_path} records again; their records "
                  f"will be replaced ({', '.join(again)})", flush=True)
        elif again:
            die(f"{runs_path} already records {len(again)} of these runs ({', '.join(again[:3])}"
                f"{', ...' if len(again) > 3 else ''}) whose run folders are not here (a fresh clone?); "
                f"--report {shlex.quote(out)} rewrites the report from them, --overwrite trains them again and "
                f"replaces their records, or give a new --out")
    write_json(cfg_path, grid)


def keep_result(path, overwrite):
    """A one-line exit if path (a script's result file) exists and overwrite is not set."""
    if os.path.exists(path) and not overwrite:
        die(f"{path} already holds an earlier result; --overwrite replaces it (or copy it away first)")


def read_json_or_die(path):
    """The JSON at path, or a one-line exit naming it."""
    try:
        return read_json(path)
    except (OSError, ValueError) as e:
        die(f"cannot read {path} ({getattr(e, 'strerror', None) or str(e).splitlines()[0][:80]}); "
            f"restore it (git checkout) or give another folder")
