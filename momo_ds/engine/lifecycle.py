"""The main job's process life: what a rank cleans up when it starts and when it ends, and its exit status.

    lifecycle.run_main(main)   # tools/pretrain.py: start(), main(), finish(its status); never returns

**Exit status.** :func:`finish` ends the process with ``os._exit`` once the process group is down and the output
flushed. At a plain interpreter exit the process group is still up and its C++ objects (gloo's threads and
connections, the TCP store rank 0 serves) are torn down by destructors while the peer ranks exit at their own pace;
nothing that runs then can change the status of a run that has finished any more. A finished run exits 0;
``main``'s own codes pass through unchanged (2 a reported config or data error, 75 stopped by a signal with a
checkpoint); an uncaught exception prints its traceback and exits 1 (``KeyboardInterrupt`` 130); ``SystemExit``
keeps its meaning (a message is printed, then 1), as in plain Python.

**DeepSpeed's shared-memory all-reduce.** On CPU, when all ranks run on one host (the deepspeed launcher sets
``LOCAL_SIZE`` = ``WORLD_SIZE``), DeepSpeed's process-group start makes each rank create
``/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>`` (about 66 MB) right after the
rendezvous, map every peer's buffer by name and never unlink its own. The name is needed only until every peer
has mapped the buffer: :func:`finish` unlinks it (:func:`teardown`), the memory stays mapped and is freed when
the last rank exits.

Buffers left by runs that were killed are removed at the next start by :func:`clean_stale_shm`, under a rule that
never takes a buffer from a job that still needs it: the name carries this user's id, the file is this user's,
no process holds it open or mapped (read from ``/proc``: the rank that creates a buffer keeps it open for its
whole life), and it has not been written for :data:`STALE_AFTER_S` seconds. Unlinking a name that every rank of a
job has mapped does that job no harm; the age guard covers processes that cannot be inspected from here (another
PID namespace sharing ``/dev/shm``, a process whose ``/proc`` entries are closed to this one): their jobs need the
names only in the seconds after their rendezvous.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, NoReturn, Optional

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "deepspeed_allreduce_buffer_"
SHM_NAME = re.compile(rf"^{SHM_PREFIX}(?P<uid>\d+)_(?P<addr>.*)_(?P<port>\d*)_(?P<rank>\d+)$")
STALE_AFTER_S = 120.0  # a buffer untouched this long and held by no process is left over
FAILING_GRACE_S = 20.0  # how long a failed rank waits for its peers to reach their teardown
FAILING_KEY = "momo_ds/lifecycle/failing"  # rendezvous-store counter of ranks in a failed teardown


# ------------------------------------------------------------------------------------------------ entry points
def run_main(main: Callable[[], Optional[int]]) -> NoReturn:
    """``start``, then ``main()``, then ``finish`` with its exit status (see the module docstring)."""
    start()
    try:
        code = main()
    except SystemExit as e:
        code = _system_exit_code(e)
    except BaseException as e:  # noqa: BLE001 - any other escape is a failed run: its traceback, then 1 (130: ^C)
        _print_traceback()
        code = 130 if isinstance(e, KeyboardInterrupt) else 1
    finish(code)


def start() -> None:
    """Before the job's own work: remove stale shared-memory buffers (local rank 0 of each host; the others would
    only find the same files)."""
    if os.environ.get("LOCAL_RANK", "0") == "0":
        try:
            clean_stale_shm()
        except Exception as e:  # noqa: BLE001 - housekeeping never stops a run
            _warn(f"stale shared-memory buffers not cleaned: {e}")


def finish(code: Optional[int]) -> NoReturn:
    """End this rank with ``code``: flush its output, :func:`teardown`, exit without running interpreter-exit
    destructors. A teardown that fails turns a 0 into 1 and leaves any other code as it was."""
    code = 0 if code is None else int(code)
    try:
        # The deepspeed launcher answers one rank's failure with SIGTERM to the others (SIGKILL 30 s later): a
        # rank already tearing down finishes that instead of dying half-way.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _flush()
        stop_children()
        teardown(succeeded=code == 0)
    except BaseException as e:  # noqa: BLE001 - a failed teardown must not hide the run's status
        _warn(f"teardown: {type(e).__name__}: {e}")
        code = code or 1
    finally:
        _flush()
        os._exit(code if 0 <= code <= 255 else 1)


def stop_children(timeout_s: float = 5.0) -> None:
    """What multiprocessing's exit handler would do, which ``os._exit`` skips: stop this process's live children
    (DataLoader workers a failed run left running; a finished run has closed its loaders)."""
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return
    children = mp.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))


def teardown(succeeded: bool) -> None:
    """Unlink the job's buffer names and destroy torch.distributed's process groups (DeepSpeed's backend holds
    torch's). A run that succeeded waits for every rank first (a barrier: no rank leaves while another is still in
    a collective) and each rank unlinks its own name. A failed one gives its peers a bounded moment to get here
    too (:func:`await_failing_peers`: they may never come, stuck in a collective or killed by the launcher) and
    unlinks the names of every rank of the job: DeepSpeed maps all of them while the process group starts, so by
    now no rank needs a name any more."""
    dist = sys.modules.get("torch.distributed")  # never imported: no process group (and no torch import now)
    up = dist is not None and dist.is_available() and dist.is_initialized()
    if up and dist.get_world_size() > 1:
        if succeeded:
            dist.barrier()
        else:
            await_failing_peers(dist)
    release_shm(every_rank=not succeeded)
    if up:
        dist.destroy_process_group()


def await_failing_peers(dist, timeout_s: float = FAILING_GRACE_S) -> bool:
    """A failed rank waits (at most ``timeout_s``) until every rank of the job has reached its own teardown, over
    the rendezvous store (no collective: a peer may be inside one). Ranks that meet the same error (a config or
    data error, an injected fault) get there together, and none is killed by the launcher - which stops every
    rank as soon as one has exited - before it has printed its error line (rank 0 prints what all ranks met).
    A peer that stays in a collective costs the wait, then this rank's exit breaks that collective. Returns
    whether every rank came."""
    world, deadline = dist.get_world_size(), time.monotonic() + timeout_s
    try:
        store = dist.distributed_c10d._get_default_store()
        arrived = store.add(FAILING_KEY, 1)
        while arrived < world and time.monotonic() < deadline:
            time.sleep(0.05)
            arrived = store.add(FAILING_KEY, 0)
    except Exception:  # noqa: BLE001 - the store's host (rank 0) is gone: nobody left to wait for
        return False
    return arrived >= world


# --------------------------------------------------------------------------------------- shared-memory buffers
def shm_names(env: Optional[dict] = None, uid: Optional[int] = None, every_rank: bool = False) -> list[str]:
    """The buffer name DeepSpeed creates for this rank (``every_rank``: for each rank of the job); none when it
    creates none (not every rank on this host, or outside a launch)."""
    env = os.environ if env is None else env
    if "RANK" not in env or env.get("LOCAL_SIZE") is None or env.get("LOCAL_SIZE") != env.get("WORLD_SIZE"):
        return []
    uid = os.getuid() if uid is None else uid
    prefix = f"{SHM_PREFIX}{uid}_{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}_"
    ranks = range(int(env["WORLD_SIZE"])) if every_rank else [int(env["RANK"])]
    return [f"{prefix}{r}" for r in ranks]


def release_shm(every_rank: bool = False, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Unlink this rank's buffer name (``every_rank``: every rank's), this user's files only; what is mapped stays
    mapped until its last process exits. Call it once every rank has mapped every buffer: after DeepSpeed's
    process-group start and a barrier, or at the end of the run. Returns what was removed."""
    removed = []
    for p in (shm_dir / n for n in shm_names(every_rank=every_rank)):
        try:
            if p.stat().st_uid == os.getuid():
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # none made (the op unavailable), or a peer was first
            pass
    return removed


def clean_stale_shm(shm_dir: Path = SHM_DIR, stale_after_s: float = STALE_AFTER_S,
                    proc: Path = Path("/proc")) -> list[Path]:
    """Remove DeepSpeed buffers no job uses any more (the rule is in the module docstring). Returns what went."""
    uid = os.getuid()
    candidates = []
    now = time.time()
    try:
        entries = list(os.scandir(shm_dir))
    except OSError:
        return []
    for entry in entries:
        m = SHM_NAME.match(entry.name)
        if m is None or int(m["uid"]) != uid:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if entry.is_file(follow_symlinks=False) and st.st_uid == uid and now - st.st_mtime >= stale_after_s:
            candidates.append(Path(entry.path))
    if not candidates:
        return []
    in_use = shm_in_use({str(p) for p in candidates}, proc)
    removed = []
    for p in candidates:
        if str(p) in in_use:
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:  # another cleaner was first
            pass
    return removed


def shm_in_use(paths: set[str], proc: Path = Path("/proc")) -> set[str]:
    """Which of ``paths`` some live process holds open or mapped. What matters is the open descriptor: the rank
    that creates a buffer keeps one open for its whole life, and only while it lives may a peer still have to open
    the name; a mapping alone (a peer of a dead creator) is counted too, which only keeps a file a while longer.
    A process whose descriptors cannot be read is skipped (the age guard of :func:`clean_stale_shm` covers it),
    one whose maps cannot be read is judged by its descriptors."""
    used: set[str] = set()
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            used.update(_held(Path(entry.path), paths))
        except (FileNotFoundError, ProcessLookupError, PermissionError):  # exited meanwhile, or not readable
            continue
    return used


def _held(pid_dir: Path, paths: set[str]) -> set[str]:
    found = set()
    for fd in os.scandir(pid_dir / "fd"):
        try:
            target = os.readlink(fd.path)
        except OSError:
            continue
        if target in paths:
            found.add(target)
    try:
        with open(pid_dir / "maps", errors="replace") as f:
            for line in f:
                if SHM_PREFIX in line:
                    path = line.rstrip("\n").split(maxsplit=5)[-1]
                    if path in paths:
                        found.add(path)
    except PermissionError:
        pass
    return found


# ------------------------------------------------------------------------------------------------------ helpers
def _system_exit_code(e: SystemExit) -> int:
    """What Python itself makes of ``SystemExit``: None -> 0, an int as is, anything else printed, then 1."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    try:
        print(e.code, file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass
    return 1


def _print_traceback() -> None:
    """Through ``sys.excepthook``: torch.distributed's prefixes every line with ``[rankN]:``."""
    try:
        sys.excepthook(*sys.exc_info())
    except Exception:  # noqa: BLE001
        traceback.print_exc()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe: nothing more to write anyway
            pass


def _warn(message: str) -> None:
    try:
        print(f"[momo_ds] warning: {message}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001
        pass
