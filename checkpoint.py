"""
Checkpoints and the folders runs live in, kept safe for the user (train.py, sample.py, bench.py
and the experiments all go through here):

- save_checkpoint(ckpt, path): atomic (a kill leaves the old file or the new one, never half of
  one), and never non-finite weights (ValueError); a failed write (a full disk, a read-only
  folder) removes its partial file and raises OSError saying what happened and where.
- load_checkpoint(path): a train.py checkpoint (a ckpt.pt, or the folder holding one), or
  ValueError with one line saying what is wrong.
- load_model(path): the model of a checkpoint, in eval mode, with its settings and its step;
  model_of(ckpt) builds it from a checkpoint already loaded.
- write_atomically(path, write): any file, through a temporary one and a rename.
- truncate_log(path, before): a resumed run's metrics.jsonl, cut back to its checkpoint.
- check_writable(folder): fail before the work, not after it.
- claim(folder), or claim_or_die(folder, flag) in a script: one run per folder. Creates the folder, locks it for this process (released at
  exit; a second run is refused while the first lives, and a lock left by a killed run is taken
  over with a note), and removes half-written *.tmp files that a killed run left behind.
The lock is an fcntl lock on folder/lock (Linux, macOS), which holds the owner's pid: the kernel
drops the lock when its process dies, however it dies, so a lock file is stale exactly when nobody
holds it, and a clean exit removes the file. Without fcntl (Windows) folders are not locked.
"""

import atexit
import glob
import json
import os
import shutil
import tempfile

import torch

from configurator import die
from model import GPT, GPTConfig

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


def write_atomically(path, write):
    """Call write(tmp) to write the file (or folder) at tmp, then rename tmp to path: a reader (or a
    run killed half-way) sees the old one or the new one, never half of one. A failed write leaves
    no tmp."""
    tmp = os.path.normpath(path) + ".tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        elif os.path.exists(tmp):
            os.remove(tmp)
        raise


def all_finite(state_dict):
    return all(torch.isfinite(t).all() for t in state_dict.values() if torch.is_floating_point(t))


def save_checkpoint(ckpt, path):
    """Write ckpt (a dict with the model's state_dict under "model") to path, atomically."""
    if not all_finite(ckpt["model"]):
        raise ValueError(f"refusing to save non-finite weights to {path}")
    try:
        write_atomically(path, lambda tmp: torch.save(ckpt, tmp))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        reason = "the disk is full" if free < 2**20 else getattr(e, "strerror", None) or "the write failed"
        raise OSError(f"could not write {path}: {reason} ({free / 2**20:.1f} MB free there)") from None


def load_checkpoint(path):
    """The checkpoint dict train.py saved at path (a ckpt.pt, or the folder holding it); ValueError
    (one line) if it is missing or unreadable."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint at {path}")
    try:
        # weights_only: a checkpoint holds tensors, numbers, strings and dicts, nothing to execute
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated by a full disk or a copy cut short, not a torch file, ...
        raise ValueError(f"cannot read {path} as a train.py checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:80] if str(e) else 'no details'}); it may be truncated") from None
    if not isinstance(ckpt, dict) or not {"model", "model_args", "config"} <= ckpt.keys():
        raise ValueError(f"{path} is not a train.py checkpoint (it lacks model, model_args or config)")
    return ckpt


def model_of(ckpt, device="cpu"):
    """The GPT of a loaded checkpoint, in eval mode on device; ValueError (one line) if its weights
    do not fit this model.py. A field of GPTConfig that the checkpoint predates takes its default."""
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"the checkpoint does not fit this model.py ({str(e).splitlines()[0]})") from None
    return model.eval().to(device)


def load_model(path, device="cpu"):
    """(model, settings, step) of a checkpoint (a ckpt.pt or its folder): the model in eval mode,
    the train.py settings it was trained with, and its iteration. ValueError (one line) if not."""
    ckpt = load_checkpoint(path)
    return model_of(ckpt, device), ckpt["config"], ckpt["iter_num"]


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


def claim_or_die(folder, flag):
    """claim(folder) for a script: its note printed, and a one-line exit naming the flag that chose
    the folder when it cannot be claimed."""
    try:
        note = claim(folder)
    except (ValueError, OSError) as e:
        die(f"--{flag}: {e}")
    if note:
        print(note)


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
