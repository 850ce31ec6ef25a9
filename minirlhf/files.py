"""Writing files so that a kill, a crash or a full disk never leaves a damaged one: the one place that writes.

- `atomic_write(path, write)`: the content goes to a temporary file in the same folder, is flushed to disk,
  and is renamed over `path` (a rename is atomic): a reader sees the old file or the new one, never half.
  If the write fails (a full disk: ENOSPC) the temporary file is removed and the error says so plainly.
  A process killed mid-write cannot remove its own temporary file; the next write to the same path removes
  the ones whose writer is no longer alive, so kills do not slowly fill the disk.
- `open_append(path)`: for files written a line at a time (preference labels, log.jsonl). A kill can leave a
  last line without its newline; it is dropped before appending, so the file stays valid JSONL.
- `describe(text)`: a value shown in an error message, cut to a readable length (a prompt can be megabytes).
"""

import errno
import glob
import os


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path):
    """Remove `path`.tmpPID files left by writers that were killed (PID no longer running)."""
    for tmp in glob.glob(glob.escape(path) + ".tmp*"):
        pid = tmp.rsplit(".tmp", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass


def atomic_write(path, write, mode="wb"):
    """Call write(f) on a temporary file, fsync it, rename it over `path`. Nothing is left behind on failure."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    remove_stale_temps(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        if _is_disk_full(e):
            raise OSError(errno.ENOSPC, f"{path}: no space left on device; nothing was written (the previous "
                                        f"file, if any, is intact). Free some space and run again.") from None
        raise


def _is_disk_full(e):
    # torch.save reports a full disk as a RuntimeError from its zip writer, not as OSError(ENOSPC)
    return (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        (isinstance(e, RuntimeError) and ("unexpected pos" in str(e) or "No space left" in str(e)))


def open_append(path):
    """Open a line-per-record file for appending, first dropping a torn last line (one without its newline)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as f:
            data = f.read()
            if not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)  # everything up to the last complete line
    return open(path, "a", encoding="utf-8")


def truncate_lines(path, keep):
    """Keep the lines for which keep(line) is true up to the first that is not; drop the rest (atomically)."""
    if not os.path.exists(path):
        return 0
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n") or not keep(line):
                break
            kept.append(line)
    atomic_write(path, lambda f: f.writelines(kept), mode="w")
    return len(kept)


def describe(text, limit=80):
    """repr of a string, cut to `limit` characters with the full length given: error messages stay readable."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"
