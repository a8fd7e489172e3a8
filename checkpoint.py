"""
Checkpoints and the folders runs live in, kept safe for the user (train.py, sample.py, export.py,
the prepare scripts and the experiments all go through here):

- save_checkpoint(ckpt, path): atomic (a kill leaves the old file or the new one, never half of
  one), and never non-finite weights (ValueError); a failed write (a full disk, a read-only
  folder) removes its partial file and raises OSError saying what happened and where.
- load_checkpoint(path): a train.py checkpoint (a ckpt.pt, or the folder holding one), or
  ValueError with one line saying what is wrong (is_hf_export: a Hugging Face folder instead).
- load_model(path): the model of a checkpoint, in eval mode, with its settings (settings(ckpt):
  each of its type) and its step; model_of(ckpt) builds it from a checkpoint already loaded, every
  weight checked against its model_args; check_whole(ckpt) also checks the weights are finite and
  the tokenizer's meta and [MASK] id fit.
- write_atomically(path, write): any file (or folder), through a temporary one of this process's
  own and a rename (write_all_atomically: several files, replaced together);
  clear_stale_temps(folder) removes the temporaries that killed processes left.
- truncate_log(path, before): a resumed run's metrics.jsonl, cut back to its checkpoint.
- check_writable(folder): fail before the work, not after it.
- claim(folder), or claim_or_die(folder, flag) in a script: one run per folder. Creates the
  folder, locks it for this process (released at exit; a second run is refused while the first
  lives, and a lock left by a killed run is taken over with a note), and removes the temporaries
  that killed processes left in it.
The lock is an fcntl lock on folder/.nanomeap-lock (Linux, macOS), which holds the owner's pid:
the kernel drops the lock when its process dies, however it dies, so a lock file is stale exactly
when nobody holds it, and a clean exit removes the file. Without fcntl (Windows) folders are not
locked. reserved(path) refuses the names of the lock and of temporaries for a user's folder.
"""

import atexit
import json
import os
import re
import shlex
import shutil
import tempfile

import torch

from configurator import die
from model import GPT, GPTConfig

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


# Temporary files and folders are named `.NAME.PID.RANDOM.nanomeap-tmp` beside NAME: created
# exclusively (mkstemp, mkdtemp), so never a file a user already has; removed only by the process
# that made them, or, once that process (PID) is dead, by the next write to NAME or claim of the folder.
# No run, export or dataset may itself be given such a name (reserved()).
TMP_SUFFIX = ".nanomeap-tmp"
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d{1,10})\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX) + "$")
_NAME_MAX = 180  # of NAME in a temporary's name: room for the rest within a file system's 255


def is_temp(name):
    """Whether a file name is one of our temporaries (see TMP_SUFFIX)."""
    return bool(_TMP.match(os.path.basename(name)))


def reserved(path):
    """ValueError if path names one of our temporaries or the lock: names no run, export or
    dataset may take, since a later write or claim could remove them."""
    base = os.path.basename(os.path.normpath(path))
    if is_temp(base) or base == LOCK:
        raise ValueError(f"{path}: names like {base!r} are nanoMEAP's own (temporary files, the lock); "
                         f"choose another name")


def _alive(pid):
    if os.name == "nt":  # os.kill(pid, 0) would end the process on Windows: never call a temp stale there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # it exists and is someone else's; or no pid at all: keep it
        return True
    return True


def clear_stale_temps(folder, name=None):
    """Remove the temporaries (ours only, see TMP_SUFFIX) that killed processes left in folder,
    those for NAME alone when name is given. Returns how many were removed; never raises."""
    removed = 0
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return 0
    for entry in entries:
        m = _TMP.match(entry)
        if not m or (name is not None and m["name"] != name[:_NAME_MAX]) or _alive(int(m["pid"])):
            continue
        path = os.path.join(folder, entry)
        try:
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
            removed += 1
        except OSError:
            pass
    return removed


def _default_mode(folder):
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def _new_temp(path, folder):
    """A new, empty temporary file (or folder) of this process's own beside path; its name."""
    where, name = os.path.split(path)
    clear_stale_temps(where, name)
    prefix = f".{name[:_NAME_MAX]}.{os.getpid()}."
    if folder:
        return tempfile.mkdtemp(prefix=prefix, suffix=TMP_SUFFIX, dir=where)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TMP_SUFFIX, dir=where)
    os.close(fd)
    return tmp


def _discard(tmp):
    try:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
    except OSError:  # (a read-only folder: nothing could be written there either)
        pass


def write_atomically(path, write, folder=False):
    """Call write(tmp) to fill a new temporary file (or, with folder=True, an empty folder) beside
    path, then rename it to path: a reader, or a run killed half-way, sees the old one or the new
    one, never half of one. The temporary is this process's own (see TMP_SUFFIX): it is removed if
    the write fails, and nothing else is ever removed. A folder is never put over an existing path
    (FileExistsError); a file replaces the one at path. The result has the usual permissions."""
    write_all_atomically({path: write}, folder)


def write_all_atomically(writes, folder=False):
    """write_atomically for several paths at once ({path: write}): every one is written to its
    temporary first, and only then renamed into place; if a rename fails, those already done are
    undone from a hard link (a copy where links are not supported) of the old file kept beside it.
    So a failure or Ctrl-C leaves all of them as they were, and a kill leaves each one old or new,
    none missing: a dataset's files are never half old and half new but for a kill in that instant."""
    temps, backups, done, path = {}, {}, [], None
    try:
        for path, write in writes.items():
            path = os.path.abspath(path)
            temps[path] = tmp = _new_temp(path, folder)
            write(tmp)
            os.chmod(tmp, _default_mode(folder))  # mkstemp and mkdtemp make them private
            for d, _, files in os.walk(tmp) if folder else ():  # (safetensors, too, writes its files private)
                for f in files:
                    os.chmod(os.path.join(d, f), _default_mode(False))
        for path, tmp in temps.items():
            if folder and os.path.lexists(path):  # (os.replace would put a folder over an empty one)
                raise FileExistsError(17, "File exists", path)
            if len(temps) > 1 and os.path.lexists(path) and not os.path.isdir(path):  # to undo this rename with
                backups[path] = backup = _new_temp(path, False)
                os.remove(backup)
                try:
                    os.link(path, backup, follow_symlinks=False)  # the old file (or link) itself
                except OSError:
                    os.symlink(os.readlink(path), backup) if os.path.islink(path) else shutil.copy2(path, backup)
            os.replace(tmp, path)
            done.append(path)
    except BaseException as e:
        for old in done:  # undo
            try:
                os.replace(backups[old], old) if old in backups else os.remove(old)
            except OSError:
                pass
        for tmp in list(temps.values()) + list(backups.values()):
            _discard(tmp)
        if isinstance(e, OSError) and path:
            e.filename = path  # the file that failed, not its temporary (for the message)
        raise
    for backup in backups.values():
        _discard(backup)


def all_finite(state_dict):
    return all(torch.isfinite(t).all() for t in state_dict.values() if torch.is_floating_point(t))


def write_failed(path, e):
    """The one line for a write to path that failed with e: a full disk named as one, with the space left."""
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path)) or ".").free
    except OSError:
        return f"could not write {path} ({getattr(e, 'strerror', None) or type(e).__name__})"
    full = free < 2**20 or "No space left" in str(e) or getattr(e, "errno", None) == 28
    reason = "the disk is full" if full else getattr(e, "strerror", None) or \
        f"{type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else 'no details'}"
    return f"could not write {path}: {reason} ({free / 2**20:.1f} MB free there)"


def save_checkpoint(ckpt, path):
    """Write ckpt (a dict with the model's state_dict under "model") to path, atomically."""
    if not all_finite(ckpt["model"]):
        raise ValueError(f"refusing to save non-finite weights to {path}")
    try:
        write_atomically(path, lambda tmp: torch.save(ckpt, tmp))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        raise OSError(write_failed(path, e)) from None


def load_checkpoint(path):
    """The checkpoint dict train.py saved at path (a ckpt.pt, or the folder holding it); ValueError
    (one line) if it is missing or unreadable."""
    if not str(path).strip():
        raise ValueError("no checkpoint path given (it is empty)")
    if os.path.isdir(path):
        hint = hf_export_hint(path, "the folder")
        if hint:
            raise ValueError(hint)
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


def is_hf_export(folder):
    """Whether folder holds a Hugging Face model (export.py's, or any), not a train.py run."""
    return os.path.isfile(os.path.join(folder, "config.json")) and not os.path.exists(os.path.join(folder, "ckpt.pt"))


def hf_export_hint(folder, flag):
    """The one line for a flag that names a Hugging Face folder (export.py's) where a train.py run
    is expected, or None if folder is not one."""
    if not is_hf_export(folder):
        return None
    return (f"{flag} {folder} is a Hugging Face folder, not a train.py run: bring it back first with python export.py "
            f"--from {shlex.quote(folder)} --to NEW_FOLDER, then give NEW_FOLDER")


def model_of(ckpt, device="cpu"):
    """The GPT of a loaded checkpoint, in eval mode on device; ValueError (one line) if its weights
    do not fit this model.py or its own model_args. A field of GPTConfig that the checkpoint
    predates takes its default."""
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"its model_args do not describe a model this model.py builds ({e})") from None
    sd, want = ckpt["model"], model.state_dict()
    if not isinstance(sd, dict):
        raise ValueError("its weights are not a state_dict")
    missing, extra = [k for k in want if k not in sd], [k for k in sd if k not in want]
    shapes = [k for k in want if k in sd and (not torch.is_tensor(sd[k]) or sd[k].shape != want[k].shape)]
    if missing or extra or shapes:
        cfg = model.config
        parts = [f"{len(v)} {what} ({', '.join(v[:2])}{', ...' if len(v) > 2 else ''})"
                 for what, v in (("missing", missing), ("not in the model", extra), ("of another shape", shapes)) if v]
        raise ValueError(f"its weights do not fit its model_args ({cfg.n_layer} layers, n_embd {cfg.n_embd}, "
                         f"vocab_size {cfg.vocab_size}): {'; '.join(parts)}")
    model.load_state_dict(sd)
    return model.eval().to(device)


def check_whole(ckpt, where):
    """ValueError (one line, naming where) unless ckpt, a loaded checkpoint, is whole: the model its
    model_args describe with every weight in its shape (model_of), all finite, settings of their
    types, the tokenizer's meta, and a [MASK] id inside the vocabulary, right after the tokenizer's
    ids. Returns the model.
    What export.py and sample.py check before they use a checkpoint."""
    for key in ("meta", "mask_token_id"):
        if key not in ckpt:
            raise ValueError(f"{where} lacks {key!r}: not a whole train.py checkpoint")
    try:
        model = model_of(ckpt)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not all_finite(ckpt["model"]):
        raise ValueError(f"{where} holds non-finite weights (a diverged run?)")
    meta, mask_id, vocab = ckpt["meta"], ckpt["mask_token_id"], model.config.vocab_size
    try:
        settings(ckpt)  # each setting of its type
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    ranks = meta.get("bpe_ranks", {}) if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or "kind" not in meta or not isinstance(ranks, dict) or not all(
            isinstance(t, bytes) and t and type(r) is int for t, r in ranks.items()):
        raise ValueError(f"{where}: its meta (the tokenizer) is not train.py's: {str(meta)[:60]}")
    if isinstance(mask_id, bool) or not isinstance(mask_id, int) or not 0 <= mask_id < vocab:
        raise ValueError(f"{where}: its [MASK] id {mask_id!r} is not inside its vocabulary of {vocab} ids")
    if "vocab_size" in meta and meta["vocab_size"] != mask_id:
        raise ValueError(f"{where}: its [MASK] id {mask_id} is not the id after its tokenizer's "
                         f"{meta['vocab_size']} ids")
    return model


def settings(ckpt):
    """The train.py settings a loaded checkpoint was trained with, each of its default's type (the
    default where the checkpoint predates a setting); ValueError (one line) if one is not (an edited
    checkpoint)."""
    from configurator import ConfigError, convert, read_settings
    defaults = read_settings(os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py"))
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        raise ValueError("its settings (config) are not a dict: not a train.py checkpoint")
    try:
        return {**defaults, **{k: convert(k, v, defaults[k]) if k in defaults else v for k, v in saved.items()}}
    except ConfigError as e:
        raise ValueError(f"its saved setting {e} (an edited checkpoint?)") from None


def load_model(path, device="cpu"):
    """(model, settings, step) of a checkpoint (a ckpt.pt or its folder): the model in eval mode,
    the train.py settings it was trained with (settings()), and its iteration. ValueError (one
    line) if not."""
    ckpt = load_checkpoint(path)
    try:
        return model_of(ckpt, device), settings(ckpt), int(ckpt.get("iter_num", 0))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


def truncate_log(path, before):
    """Keep the rows of the JSON-lines log at path (train.py's metrics.jsonl) whose "iter" is below
    before, and drop the rest: a resumed run writes them again. Returns how many half-written last
    lines (a run killed mid-write) were dropped. ValueError (one line) if path holds anything but
    train.py's rows: it is then someone else's file, and left as it is."""
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, not train.py's log; move it away, or use another --out_dir")
    kept, torn = [], 0
    if os.path.exists(path):
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").splitlines(keepends=True)
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
            except ValueError:
                if i == len(lines) - 1 and not line.endswith("\n"):  # cut short by a kill: ours, half-written
                    torn += 1
                    continue
                row = None
            if not isinstance(row, dict) or type(row.get("iter")) is not int:
                raise ValueError(f"{path} holds lines that are not train.py's (line {i + 1}); move it away, "
                                 f"or use another --out_dir")
            if row["iter"] < before:
                kept.append(line)
    def write(tmp):
        with open(tmp, "w") as f:
            f.writelines(kept)
    write_atomically(path, write)
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


LOCK = ".nanomeap-lock"  # the lock file's name in a claimed folder (a name no user file has)
_held = {}  # folder -> the open lock file of a folder this process has claimed


def claim(folder):
    """Create folder if needed and lock it for this process until it exits. Returns a note (str)
    when a killed run's lock was taken over, else None. ValueError if another live run holds the
    folder; OSError (one line) if the folder cannot be created or written."""
    folder = os.path.abspath(folder)
    if folder in _held:
        return None
    reserved(folder)
    check_writable(folder)
    lock_path = os.path.join(folder, LOCK)
    while True:
        try:  # never through a symbolic link: the lock is this folder's own file
            f = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644), "r+")
        except OSError as e:
            if os.path.islink(lock_path):
                raise ValueError(f"{lock_path} is a symbolic link, not a nanoMEAP lock; move it away") from None
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
    if owner and not owner.isdigit():
        f.close()
        raise ValueError(f"{lock_path} is not a nanoMEAP lock (it holds other text); move it away")
    note = None
    if owner and fcntl is not None:  # nobody holds the lock, yet a pid is written: its run was killed
        note = f"{lock_path}: the run of pid {owner} ended without releasing it (killed?); taking it over"
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _held[folder] = f
    atexit.register(release, folder)
    clear_stale_temps(folder)  # half-written by a killed run or export: never read (and it never raises)
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
                os.remove(os.path.join(held, LOCK))  # while still locked: no one else's file
            except OSError:
                pass  # the folder was removed under us: nothing left to release
            f.close()
