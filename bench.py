"""
Training step time of NTP against MEAP, measured in one run on one machine, and printed as a table.
MEAP adds nothing to the model's compute (paper §3.1): its only extra work is drawing the mask
positions and writing [MASK] into the input, so the MEAP/NTP ratio should be about 1.00.

    python bench.py                              # train.py's default model, a larger one, GPT-2 small (GPU only)
    python bench.py --configs default,gpt2 --compile true          # on a GPU: compiled
    python bench.py --reference ../nanoGPT       # our model's forward+backward beside another model.py's
    python bench.py --reference ../nanoGPT --compile true          # the same, both models compiled
    OMP_NUM_THREADS=1 python bench.py ...        # on one CPU core

Each step is what train.py does: forward, backward, then the next synthetic batch generated, masked
(MEAP only) and copied to the device while a GPU still computes, then clip and AdamW. The two
objectives alternate in short blocks of steps on the same model, so drift in clock speed hits both
alike. The table gives each objective's median block, and the MEAP/NTP ratio as the median and
quartiles of the ratios of paired blocks: on a busy or throttling machine the quartiles show how
much of a difference is noise.
"""

import contextlib
import dataclasses
import importlib.util
import io
import os
import statistics
import sys
import time

import runtime  # before torch: Ctrl-C while the libraries load is one line too
import configurator
runtime.exit_on_ctrl_c("no table was written", at_once=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import atomic_files  # noqa: E402
from runtime import die  # noqa: E402
import tasks  # noqa: E402
from mask import meap_inputs  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

# -----------------------------------------------------------------------------
configs = "default,larger,gpt2"  # comma-separated names from CONFIGS below; gpt2 runs on CUDA only
device = "auto"  # 'auto' (cuda, then mps, then cpu), or cpu, cuda, mps
dtype = "auto"  # 'auto' (as train.py: bfloat16 on CUDA, float16 on older GPUs, float32 elsewhere), or a name
compile = False  # torch.compile the model
steps = 5  # steps per timed block; blocks of NTP and MEAP alternate
seconds = 20.0  # timed seconds per objective (and at least 3 blocks each)
warmup = 3  # untimed steps per objective first
mask_ratio = 0.15  # MEAP's ratio
reference = ""  # a folder with another model.py (a nanoGPT checkout): time its forward+backward beside ours
out = ""  # also write the table to this file (e.g. results/bench/cpu.md), headed by the command, commit and date
# -----------------------------------------------------------------------------
try:
    configurator.apply(sys.argv[1:], globals())
except configurator.ConfigError as e:
    die(e)

train_defaults = configurator.read_settings("train.py")  # the default run, straight from train.py
CONFIGS = {
    "default": {k: train_defaults[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size")},
    "larger": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8),  # nanoGPT's char model
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, vocab_size=50304),  # 124M
}
unknown = [c for c in configs.split(",") if c not in CONFIGS]
if unknown:
    die(f"unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
if steps < 1 or warmup < 0 or not seconds > 0 or not 0 <= mask_ratio < 1:
    die(f"need --steps >= 1, --warmup >= 0, --seconds > 0 and --mask_ratio in [0, 1) "
             f"(got {steps}, {warmup}, {seconds}, {mask_ratio})")
if out:  # the table is written at the end: check the file and its folder before minutes of timing
    if out.endswith(os.sep) or os.path.isdir(out):
        die(f"--out {out} is a folder; give the table's file name, like results/bench/cpu.md")
    try:
        atomic_files.reserved(out)
        atomic_files.check_writable(os.path.dirname(os.path.abspath(out)))
    except (ValueError, OSError) as e:
        die(f"--out: {e}")
try:
    precision = runtime.precision(device, dtype)  # as train.py sets it up
except ValueError as e:
    die(e)
device, device_type, dtype, ctx = precision.device, precision.device_type, precision.dtype, precision.autocast


def sync():
    if device_type == "cuda":
        torch.cuda.synchronize()
    elif device_type == "mps":
        torch.mps.synchronize()


def model_config(cfg):
    """The GPTConfig of a CONFIGS entry (the synthetic tasks' vocabulary unless it names one; GPTConfig pads it)."""
    return GPTConfig(block_size=cfg["block_size"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                     n_kv_head=cfg["n_head"], n_embd=cfg["n_embd"], vocab_size=cfg.get("vocab_size", tasks.VOCAB_SIZE))


def bench(name, cfg):
    torch.manual_seed(0)
    B, T = cfg["batch_size"], cfg["block_size"]
    model = GPT(model_config(cfg)).to(device)
    optimizer = model.configure_optimizers(0.05, 1e-4, (0.9, 0.95), device_type)
    fwd = torch.compile(model) if compile else model
    scaler = runtime.precision(device, dtype).scaler  # a fresh loss scaler per model
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    n_pairs, n_needles = max(1, min(8, T // 8)), max(1, min(4, T // 16))

    def batch(ratio):
        b = tasks.make_batch("mix", rng, B, T, n_pairs, n_needles)
        x, _ = meap_inputs(b.x, ratio, tasks.MASK_ID, generator=g)
        return runtime.to_device(device, x, b.y)  # as train.py copies them

    ready = {}  # each objective's next batch

    def step(ratio):
        x, y = ready.pop(ratio) if ratio in ready else batch(ratio)
        with ctx:
            _, loss = fwd(x, y)
        scaler.scale(loss).backward()
        ready[ratio] = batch(ratio)  # as train.py: the next batch while the GPU computes this step
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    ratios = {"NTP": 0.0, "MEAP": mask_ratio}
    for ratio in ratios.values():
        for _ in range(warmup):
            step(ratio)
    times = {k: [] for k in ratios}  # seconds per step, one entry per block
    while len(times["NTP"]) < 3 or sum(times["NTP"]) * steps < seconds:
        for k, ratio in ratios.items():  # alternate short blocks, so that drift hits both alike
            sync()  # only between blocks: inside one, the CPU prepares batches while the GPU runs
            t0 = time.perf_counter()
            for _ in range(steps):
                step(ratio)
            sync()
            times[k].append((time.perf_counter() - t0) / steps)
    ntp, meap = statistics.median(times["NTP"]), statistics.median(times["MEAP"])
    paired = [m / n for n, m in zip(times["NTP"], times["MEAP"])]  # MEAP block / the NTP block before it
    lo, mid, hi = statistics.quantiles(paired, n=4, method="inclusive")
    b = tasks.make_batch("mix", rng, B, T, n_pairs, n_needles)
    t0 = time.perf_counter()
    for _ in range(100):  # MEAP's only extra work, timed alone
        meap_inputs(b.x, mask_ratio, tasks.MASK_ID, generator=g)
    mask_ms = (time.perf_counter() - t0) * 10
    mfu = runtime.mfu(model.flops_per_token(T), B * T / ntp, device) if dtype != "float32" else None
    return (f"| {name} | {model.num_params() / 1e6:.2f}M | {B}x{T} | {ntp * 1e3:.1f} | {meap * 1e3:.1f} | "
            f"{B * T / ntp / 1e3:.1f}k | {B * T / meap / 1e3:.1f}k | {mid:.3f} [{lo:.3f}, {hi:.3f}] | {mask_ms:.2f} | "
            f"{'-' if mfu is None else f'{mfu * 100:.1f}%'} |")


# --reference: the same shapes through another model.py (two: train.py's default, and 4 layers
# on 256 tokens), forward and backward only, so that the comparison is of the models alone
SHAPES = {"default": CONFIGS["default"], "4x128, 256 tokens": dict(n_layer=4, n_head=4, n_embd=128, block_size=256,
                                                                   batch_size=12)}


def load_reference(folder):
    """GPT and GPTConfig of folder/model.py, imported under a name of their own."""
    path = os.path.join(folder, "model.py")
    if not os.path.isfile(path):
        die(f"--reference {folder}: no model.py there (give the folder of a nanoGPT checkout)")
    spec = importlib.util.spec_from_file_location("reference_model", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.GPT, module.GPTConfig
    except Exception as e:  # whatever that file does wrong
        die(f"--reference {path}: cannot import GPT and GPTConfig from it ({type(e).__name__}: {e})")


def compare_reference(RefGPT, RefConfig, cfg):
    """A table row: our model and the reference at the shape cfg, forward+backward, alternating blocks."""
    torch.manual_seed(0)
    B, T = cfg["batch_size"], cfg["block_size"]
    ours = GPT(model_config(cfg)).to(device)
    wanted = dict(block_size=T, vocab_size=ours.config.padded_vocab_size, n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                  dropout=0.0, bias=False)
    fields = {f.name for f in dataclasses.fields(RefConfig)}
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter count
        ref = RefGPT(RefConfig(**{k: v for k, v in wanted.items() if k in fields})).to(device)
    x, y = (torch.randint(0, tasks.VOCAB_SIZE, (B, T), device=device) for _ in range(2))  # the tasks' ids
    runs = {"ours": ours, "reference": ref}
    if compile:  # both alike: fused element-wise kernels for each (the first warm-up step compiles)
        runs = {k: torch.compile(m) for k, m in runs.items()}

    def step(model):
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for model in runs.values():
        for _ in range(warmup):
            step(model)
    times = {"ours": [], "reference": []}
    while len(times["ours"]) < 3 or sum(times["ours"]) * steps < seconds:
        for k, model in runs.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step(model)
            sync()
            times[k].append((time.perf_counter() - t0) / steps)
    paired = [a / b for a, b in zip(times["ours"], times["reference"])]
    lo, mid, hi = statistics.quantiles(paired, n=4, method="inclusive")
    n_ours, n_ref = (sum(p.numel() for p in m.parameters()) for m in (ours, ref))  # every parameter, both alike
    return (f"| {cfg['n_layer']}x{cfg['n_embd']}, {cfg['n_head']} heads | {B}x{T} | {n_ours / 1e6:.2f}M | "
            f"{n_ref / 1e6:.2f}M | {statistics.median(times['ours']) * 1e3:.1f} | "
            f"{statistics.median(times['reference']) * 1e3:.1f} | {mid:.3f} [{lo:.3f}, {hi:.3f}] |")


lines = []  # the table, printed as it is measured and written to `out` at the end


def emit(line):
    print(line, flush=True)
    lines.append(line)


def save_table():
    """Write the table to `out` (atomically), headed by what produced it, so a figure quoted elsewhere
    has a committed file behind it."""
    if not out:
        return
    import subprocess
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS",) if k in os.environ]  # it changes the figures
    head = (f"`{' '.join(env + ['python bench.py'] + sys.argv[1:])}` at commit {commit}, "
            f"{time.strftime('%Y-%m-%d', time.gmtime())}\n\n")
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(head + "\n".join(lines) + "\n")
    runtime.exit_on_ctrl_c("no table was written")  # (by unwinding: no half-written file)
    try:
        atomic_files.write_atomically(out, write)
    except OSError as e:
        die(f"--out: {atomic_files.write_failed(out, e)}")
    print(f"wrote {out}")


threads = torch.get_num_threads()  # OMP_NUM_THREADS sets it
name = torch.cuda.get_device_name(device) if device_type == "cuda" else f"{device_type}, {threads} thread{'s' * (threads > 1)}"
if reference:
    RefGPT, RefConfig = load_reference(reference)
    emit(f"device: {name} | {dtype} | compile {compile} | torch {torch.__version__} | forward+backward of model.py and "
         f"{os.path.join(reference, 'model.py')} at the same shapes, blocks of {steps} alternating; "
         f"ours/reference: median [quartiles] of paired blocks")
    emit("| shape | batch | params (ours) | params (reference) | ours ms | reference ms | ours/reference |")
    emit("|---|---|---|---|---|---|---|")
    for cfg in SHAPES.values():
        emit(compare_reference(RefGPT, RefConfig, cfg))
    save_table()
    sys.exit(0)
emit(f"device: {name} | {dtype} | compile {compile} | torch {torch.__version__} | "
     f"blocks of {steps} steps, >= {seconds:g} s per objective; ms/step: median block; "
     f"MEAP/NTP: median [quartiles] of paired blocks")
emit("| config | params | batch | NTP ms/step | MEAP ms/step | NTP tok/s | MEAP tok/s | MEAP/NTP | masking ms | MFU (NTP) |")
emit("|---|---|---|---|---|---|---|---|---|---|")
for c in configs.split(","):
    if c == "gpt2" and device_type != "cuda":  # 124M at 16 x 1,024 tokens: minutes per step on a CPU
        cfg = CONFIGS[c]
        with torch.device("meta"):  # shapes only: counts the parameters without allocating them
            n = GPT(model_config(cfg)).num_params()
        emit(f"| {c} | {n / 1e6:.2f}M | {cfg['batch_size']}x{cfg['block_size']} | not measured: needs a CUDA GPU "
             f"(results/bench/ has the GPU figures) | - | - | - | - | - | - |")
        continue
    emit(bench(c, CONFIGS[c]))
save_table()
