"""
Atomic file writes, and the names nanoMEAP keeps for itself (a leaf: imports nothing of the project,
nor torch, so that a data prepare script writes its files safely without loading a model):

- write_atomically(path, write): any file (or folder), through a temporary of this process's own
  and a rename; write_all_atomically: several files, replaced together.
- clear_stale_temps(folder): removes the temporaries that killed processes left.
- reserved(path): refuses the names of temporaries and of a run folder's lock for a user's path.
- write_failed(path, e): the one line for a failed write (a full disk named as one).
- check_writable(folder): fail before the work, not after it.
"""

import os
import re
import shutil
import tempfile

LOCK = ".nanomeap-lock"  # the lock file's name in a run folder that checkpoint.claim() holds

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
