"""
The plumbing of the flat scripts (train.py, sample.py, bench.py): their settings, their errors,
their device and precision. Nothing here is machine learning.

Settings. The scripts' settings are plain globals; apply() overrides them from the command line:

    python train.py config/NAME.py --mask_ratio 0.15 --compile=false

Arguments apply left to right. A path ending in .py is a config file: Python that assigns some of
the settings. `--key value` and `--key=value` set one setting, converted to the type of its
default: an int is accepted where a float is expected, booleans take true/false/1/0/yes/no, and a
bare `--flag` sets a boolean to true. An unknown key or a value of the wrong type raises
ConfigError with one line naming the fix; `--help` prints every setting with its comment.

Checkpoints and run folders are in checkpoint.py.
"""

import ast
import difflib
import os
import re
import signal
import sys
import time
from contextlib import nullcontext
from types import SimpleNamespace



class ConfigError(ValueError):
    pass


def _closest(key, keys):
    match = difflib.get_close_matches(key, keys, n=1)
    return f" (did you mean --{match[0]}?)" if match else " (see --help)"


def convert(key, value, default):
    """value (a string from the command line, or any object from a config file) as the type of
    default; ConfigError if it does not fit."""
    want = type(default)
    bad = ConfigError(f"--{key} expects {want.__name__} (like {default!r}), got {value!r}")
    if isinstance(value, str) and want is not str:
        text = value.strip().lower()
        if want is bool:
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise bad
        try:
            value = int(text) if want is int and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise bad from None
    if want is bool and not isinstance(value, bool):
        raise bad
    if want is int and isinstance(value, float) and value.is_integer():
        value = int(value)  # 1e3 or 2.0 for an int setting
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)  # an int where a float is expected: --mask_ratio=0
    if not isinstance(value, want):
        raise bad
    return value


def parse(argv, defaults):
    """The settings that argv changes, as a dict {key: value}; defaults gives the valid keys and
    their types."""
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise ConfigError(f"unexpected argument {arg!r}: use --key value, or a config file ending in .py")
            try:
                with open(arg) as f:
                    source = f.read()
            except OSError:
                raise ConfigError(f"config file not found: {arg}") from None
            namespace = {}
            try:
                exec(compile(source, arg, "exec"), {}, namespace)
            except SyntaxError as e:
                raise ConfigError(f"{arg}, line {e.lineno}: {e.msg}") from None
            except Exception as e:  # the config file's own code failed
                raise ConfigError(f"{arg} raised {type(e).__name__}: {e}") from None
            for key, value in namespace.items():
                if key.startswith("_") or type(value).__name__ == "module":
                    continue
                if key not in defaults:
                    raise ConfigError(f"{arg} sets unknown setting {key!r}{_closest(key, list(defaults))}")
                out[key] = convert(key, value, defaults[key])
            continue
        key, has_value, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key not in defaults:
            raise ConfigError(f"unknown option --{key}{_closest(key, list(defaults))}")
        if not has_value:
            if i < len(argv) and not argv[i].startswith("--"):
                value = argv[i]
                i += 1
            elif isinstance(defaults[key], bool):
                value = "true"  # a bare --flag
            else:
                raise ConfigError(f"--{key} needs a value, like --{key} {defaults[key]!r}")
        out[key] = convert(key, value, defaults[key])
    return out


def help_text(script_path, defaults):
    """Every setting with its default and the comment beside it in the script."""
    comments = {}
    with open(script_path) as f:
        for line in f:
            m = re.match(r"^(\w+) = .*?#\s*(.*)$", line)
            if m:
                comments.setdefault(m.group(1), m.group(2))  # the settings block, not a later reassignment
    lines = [f"usage: python {script_path} [config/NAME.py] [--key value | --key=value ...]", ""]
    lines += [f"  --{k} {v!r:<16} {comments.get(k, '')}" for k, v in defaults.items()]
    return "\n".join(lines)


def check_ranges(s):
    """train.py's numeric settings (s, a dict of them) in their ranges; ConfigError naming the flag.
    (The model's shape is GPTConfig's to check, MEAP's and the data's batches.py's.)"""
    for k in ("batch_size", "block_size", "max_iters", "gradient_accumulation_steps", "eval_interval",
              "log_interval", "eval_iters", "eval_examples"):
        if not 1 <= s[k] < 2**31:
            raise ConfigError(f"--{k} must be at least 1 (and below 2**31), got {s[k]}")
    if s["eval_examples"] > 10**6:  # generated and scored at every evaluation
        raise ConfigError(f"--eval_examples must be at most 1,000,000, got {s['eval_examples']}")
    if not 0 <= s["seed"] < 2**31:  # (2**31 and up seed the held-out data: random_streams.VAL_SEED)
        raise ConfigError(f"--seed must be in [0, 2**31), got {s['seed']}")
    for k in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):  # (NaN fails every comparison)
        if not 0 <= s[k] <= 1e9:  # beyond, AdamW's float32 arithmetic overflows
            raise ConfigError(f"--{k} must be a number in [0, 1e9], got {s[k]}")
    if s["learning_rate"] == 0 or not (0 <= s["beta1"] < 1 and 0 <= s["beta2"] < 1) or s["seed"] < 0 or \
            not 0 <= s["warmup_iters"] < 2**31 or not -1 <= s["lr_decay_iters"] < 2**31:
        raise ConfigError(f"need --learning_rate > 0, --beta1 and --beta2 in [0, 1), --seed >= 0 and --warmup_iters "
                          f">= 0 (got {s['learning_rate']}, {s['beta1']}, {s['beta2']}, {s['seed']}, "
                          f"{s['warmup_iters']})")


def check_memory(model_config, tokens, device):
    """ConfigError unless the device has the memory that training the model of model_config (a
    GPTConfig) on `tokens` tokens per micro-step needs at the very least: float32 weights, gradients
    and AdamW's two moments (16 bytes a parameter), the RoPE tables, and the logits with their
    gradient. A floor, not an estimate: what passes may still run out, what fails cannot run."""
    import torch  # (not at the top: see exit_on_ctrl_c)
    import dataclasses
    from model import GPT
    try:
        with torch.device("meta"):  # sizes without memory; two layers' worth, so n_layer costs nothing
            one, two = (GPT(dataclasses.replace(model_config, n_layer=n)) for n in (1, 2))
    except (RuntimeError, OverflowError) as e:  # a size past what torch can count
        raise ConfigError(f"this model is too large to build ({str(e).splitlines()[0][:60]}); lower --n_embd, "
                          f"--n_layer or --block_size") from None
    per_layer = two.num_params(False) - one.num_params(False)
    n_params = one.num_params(False) + (model_config.n_layer - 1) * per_layer
    need = 16 * n_params + 4 * sum(b.numel() for b in one.buffers()) + 8 * tokens * model_config.vocab_size
    kind = torch.device(device).type
    if kind == "cuda":
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    elif kind == "cpu" and hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:  # mps shares the machine's memory; nothing to read it from portably
        return
    if need > total:
        raise ConfigError(f"this model ({n_params / 1e6:,.1f}M parameters) and batch need at least {need / 2**30:,.1f} "
                          f"GB on {device}, which has {total / 2**30:,.1f} GB; lower --n_embd, --n_layer, "
                          f"--block_size or --batch_size")


def die(msg, code=1):
    """The one way out on bad input: `error: msg`, one line on stderr, and exit code (1: raised as
    SystemExit("error: msg"), which Python prints at exit and a caller or a test can catch). Under
    torchrun every rank fails alike, so rank 0 says it, and the others wait a moment first:
    torchrun stops every rank as soon as one has exited."""
    if int(os.environ.get("RANK", 0)) != 0:
        time.sleep(5)
        sys.exit(code)
    if code == 1:
        raise SystemExit(f"error: {msg}")
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def exit_on_ctrl_c(what, at_once=False):
    """From now on Ctrl-C ends the script with one line, `error: interrupted; what`, and exit code
    130. The exit unwinds like an exception, so a file half-written at that moment is removed (see
    atomic_files.write_atomically) and what was there before is left as it was. at_once: exit on the
    spot instead (os._exit), for a script that has written nothing yet: scripts call it so before
    they import torch (this module does not), as an exception raised inside a C extension's import
    can be swallowed there, and the script would go on."""
    def stop(signum, frame):
        if not at_once:
            die(f"interrupted; {what}", 130)
        print(f"error: interrupted; {what}", file=sys.stderr, flush=True)
        os._exit(130)
    signal.signal(signal.SIGINT, stop)


def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt again (Python's default), for code that handles it itself."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def work_done():
    """Ctrl-C ignored from now on: the work is written, and a Ctrl-C during Python's exit (a second
    or so with torch loaded) would only turn a success into a silent exit code 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def pick_device(name):
    """The device a script runs on: 'auto' picks cuda, then mps, then cpu; an explicit one must
    exist here. ConfigError (one line) otherwise."""
    import torch  # (not at the top: see exit_on_ctrl_c)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        kind = torch.device(name).type
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if kind not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name!r}: nanoMEAP runs on cpu, cuda or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}, but CUDA is not available here; use --device cpu")
    if kind == "cuda" and (torch.device(name).index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name}, but MPS is not available here; use --device cpu")
    return name


def precision(device, dtype):
    """How a script computes on a device: the device (checked, 'auto' resolved), its type, the dtype
    ('auto': bfloat16 on CUDA, float16 on GPUs without bf16, float32 elsewhere), the autocast
    context for the forward pass (none in float32), and a gradient scaler, active only in float16
    (bf16 and fp32 have fp32's range). ConfigError (one line) on a bad device or dtype."""
    import torch  # (not at the top: see exit_on_ctrl_c)
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ConfigError(f"--dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")
    device = pick_device(device)
    device_type = torch.device(device).type
    if dtype == "auto":
        dtype = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device_type == "cuda" else "float32"
    ptdtype = getattr(torch, dtype)
    torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls and convolutions where a GPU has them
    torch.backends.cudnn.allow_tf32 = True
    return SimpleNamespace(
        device=device, device_type=device_type, dtype=dtype, ptdtype=ptdtype,
        autocast=nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype),
        scaler=torch.amp.GradScaler(device_type, enabled=ptdtype == torch.float16))


def to_device(device, *tensors):
    """The tensors on device; on CUDA copied from pinned memory without waiting, so that the copy
    overlaps with the computation already queued."""
    import torch  # (not at the top: see exit_on_ctrl_c)
    if torch.device(device).type == "cuda":
        return [t.pin_memory().to(device, non_blocking=True) for t in tensors]
    return [t.to(device) for t in tensors]


def defaults_of(script_globals):
    """A script's settings: its globals of type int, float, bool or str not starting with '_'."""
    return {k: v for k, v in script_globals.items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str))}


def apply(argv, script_globals):
    """Update a script's settings (see defaults_of) from argv; print help and exit on --help; exit with a one-line error on bad input.
    Returns the dict of settings that argv changed."""
    defaults = defaults_of(script_globals)
    if "-h" in argv or "--help" in argv:
        print(help_text(script_globals["__file__"], defaults))
        sys.exit(0)
    try:
        changed = parse(argv, defaults)
    except ConfigError as e:
        die(e)
    script_globals.update(changed)
    return changed


def read_settings(script_path):
    """A script's default settings, read from its source without running it: the literal
    assignments at the top level before its configurator.apply line."""
    with open(script_path) as f:
        tree = ast.parse(f.read())
    settings = {}
    for node in tree.body:
        if "configurator.apply" in ast.unparse(node):
            break
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                settings[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass  # not a literal: not a setting
    return settings
