"""
The plumbing of the flat scripts (train.py, sample.py, bench.py): their settings, their errors,
their device, and the folder a run lives in. Nothing here is machine learning.

Settings. The scripts' settings are plain globals; apply() overrides them from the command line:

    python train.py config/NAME.py --mask_ratio 0.15 --compile=false

Arguments apply left to right. A path ending in .py is a config file: Python that assigns some of
the settings. `--key value` and `--key=value` set one setting, converted to the type of its
default: an int is accepted where a float is expected, booleans take true/false/1/0/yes/no, and a
bare `--flag` sets a boolean to true. An unknown key or a value of the wrong type raises
ConfigError with one line naming the fix; `--help` prints every setting with its comment.

Run folders, kept safe for the user:
- load_checkpoint(path): a train.py checkpoint, or ValueError with one line saying what is wrong.
- save_checkpoint(ckpt, path): atomic (a kill leaves the old file or the new one, never half of
  one), and never non-finite weights (ValueError); a failed write (a full disk, a read-only
  folder) removes its partial file and raises OSError saying what happened and where.
- truncate_log(path, before): a resumed run's metrics.jsonl, cut back to its checkpoint.
- check_writable(folder): fail before the work, not after it.
- claim(folder): one run per folder. Creates the folder, locks it for this process (released at
  exit; a second run is refused while the first lives, and a lock left by a killed run is taken
  over with a note), and removes half-written *.tmp files that a killed run left behind.
The lock is an fcntl lock on folder/lock (Linux, macOS), which holds the owner's pid: the kernel
drops the lock when its process dies, however it dies, so a lock file is stale exactly when nobody
holds it, and a clean exit removes the file. Without fcntl (Windows) folders are not locked.
"""

import ast
import atexit
import difflib
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

import torch

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


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


def die(msg, code=1):
    """The scripts' way out on bad input: one line, `error: msg`, on stderr, and exit code. Under
    torchrun every rank fails alike, so rank 0 says it, and the others wait a moment first:
    torchrun stops every rank as soon as one has exited."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"error: {msg}", file=sys.stderr, flush=True)
    else:
        time.sleep(5)
    sys.exit(code)


def pick_device(name):
    """The device a script runs on: 'auto' picks cuda, then mps, then cpu; an explicit one must
    exist here. ConfigError (one line) otherwise."""
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


# -----------------------------------------------------------------------------
# run folders: checkpoints, the metrics log, one run per folder

def load_checkpoint(path):
    """The checkpoint dict train.py saved at path; ValueError (one line) if it is missing or unreadable."""
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated by a full disk or a copy cut short, not a torch file, ...
        raise ValueError(f"cannot read {path} as a train.py checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:80] if str(e) else 'no details'}); it may be truncated") from None
    if not isinstance(ckpt, dict) or not {"model", "model_args", "config"} <= ckpt.keys():
        raise ValueError(f"{path} is not a train.py checkpoint (it lacks model, model_args or config)")
    return ckpt


def truncate_log(path, before):
    """Keep the rows of the JSON-lines log at path (train.py's metrics.jsonl) whose "iter" is below
    before, and drop the rest: a resumed run writes them again. Returns how many half-written lines
    (a run killed mid-write) were dropped."""
    kept, torn = [], 0
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    if json.loads(line)["iter"] < before:
                        kept.append(line)
                except ValueError:
                    torn += 1
    with open(path, "w") as f:
        f.writelines(kept)
    return torn


def all_finite(state_dict):
    return all(torch.isfinite(t).all() for t in state_dict.values() if torch.is_floating_point(t))


def save_checkpoint(ckpt, path):
    """Write ckpt (a dict with the model's state_dict under "model") to path, atomically."""
    if not all_finite(ckpt["model"]):
        raise ValueError(f"refusing to save non-finite weights to {path}")
    tmp = path + ".tmp"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)  # atomic: a reader sees the old checkpoint or the new one
    except BaseException as e:  # a failed write, or Ctrl-C half-way: leave no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        if not isinstance(e, (OSError, RuntimeError)):  # torch.save reports a full disk as a RuntimeError
            raise
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        reason = "the disk is full" if free < 2**20 else getattr(e, "strerror", None) or "the write failed"
        raise OSError(f"could not write {path}: {reason} ({free / 2**20:.1f} MB free there)") from None


def check_writable(folder):
    """Create folder if needed; OSError (one line) unless a file can be written in it. For scripts
    that write their results at the end: check before the work, not after it."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OSError(f"{folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OSError(f"cannot write to {folder} ({e.strerror})") from None


_held = {}  # folder -> the open lock file of a folder this process has claimed


def claim(folder):
    """Create folder if needed and lock it for this process until it exits. Returns a note (str)
    when a killed run's lock was taken over, else None. ValueError if another live run holds the
    folder; OSError (one line) if the folder cannot be created or written."""
    folder = os.path.abspath(folder)
    if folder in _held:
        return None
    check_writable(folder)
    lock_path = os.path.join(folder, "lock")
    while True:
        try:
            f = open(lock_path, "a+")
        except OSError as e:
            raise OSError(f"cannot write to {folder} ({e.strerror})") from None
        if fcntl is None:
            break
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            owner = f.read().strip()
            f.close()
            raise ValueError(f"{folder} is in use by another run (pid {owner or '?'}); wait for it to end, "
                             f"or use another folder") from None
        try:  # the owner may have released (and removed) the file between our open and our lock
            if os.fstat(f.fileno()).st_ino == os.stat(lock_path).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    owner = f.read().strip()
    note = None
    if owner and fcntl is not None:  # nobody holds the lock, yet a pid is written: its run was killed
        note = f"{lock_path}: the run of pid {owner} ended without releasing it (killed?); taking it over"
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _held[folder] = f
    for tmp in glob.glob(os.path.join(folder, "*.tmp")):  # half-written by a killed run: never read
        os.remove(tmp)
    atexit.register(release, folder)
    return note


def release(folder=None):
    """Unlock a folder claimed by this process (None: all of them). claim registers it for exit."""
    for held in [os.path.abspath(folder)] if folder else list(_held):
        f = _held.pop(held, None)
        if f is not None:
            try:
                os.remove(os.path.join(held, "lock"))  # while still locked: no one else's file
            except OSError:
                pass  # the folder was removed under us: nothing left to release
            f.close()
