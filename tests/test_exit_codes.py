"""The main job's exit status tells the truth, and a run leaves nothing behind (momo_ds/engine/lifecycle.py).

Through the deepspeed launcher with 2 CPU ranks: finished runs exit 0, every one of them; a run that fails exits
non-zero (1 for an uncaught error or an injected fault, 2 for a config error); DeepSpeed's shared-memory buffers
(``/dev/shm/deepspeed_allreduce_buffer_*``) of these runs are gone when they end, and stale buffers and synthetic
data build directories of killed runs are removed at the next start while those a live process holds stay.
The launches are 1-step stage-1 runs of a one-block tiny model; the clean-up rules have fast tests of their own.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from momo_ds.data import synthetic
from momo_ds.distributed import free_port
from momo_ds.engine import lifecycle
from tests.multirank import ROOT

pytestmark = pytest.mark.timeout(1200)
RUNS = 3  # finished 2-rank launches in a row, each must exit 0
SETS = ["data.synthetic_num=256", "train.log_every=1", "model.depth=1", "train.warmup_steps=1"]
UID = os.getuid()
HAS_SHM = lifecycle.SHM_DIR.is_dir()


class Launch:
    """One deepspeed-launcher run of tools/pretrain.py: exit status, output, and the shm buffer names it used."""

    def __init__(self, out: Path, *extra: str, env=None, workers: int = 0, steps: int = 1, timeout: int = 600):
        self.port = free_port()
        launcher = Path(sys.executable).with_name("deepspeed")  # the venv's launcher, activated or not
        cmd = [str(launcher) if launcher.exists() else "deepspeed", "--num_gpus", "2", f"--master_port={self.port}",
               "tools/pretrain.py", "--ds_config", "ds_configs/zero2.json", "--stage", "1", "--out", str(out),
               "--max_steps", str(steps), "--no_eval", "--set", *SETS, f"data.num_workers={workers}", *extra]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        self.names = {f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_{self.port}_{r}" for r in range(2)}
        self.seen: set[str] = set()
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        watcher = threading.Thread(target=self._watch_shm, args=(proc,), daemon=True)
        watcher.start()
        try:
            self.output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            self.output = proc.communicate()[0] + f"\n[test] killed after {timeout} s"
        watcher.join()
        self.code, self.wall_s = proc.returncode, time.monotonic() - started

    def _watch_shm(self, proc: subprocess.Popen) -> None:
        """Which of this run's buffer names existed while it ran (shows that the shm all-reduce was in play)."""
        while proc.poll() is None and HAS_SHM:
            self.seen |= {n for n in self.names if (lifecycle.SHM_DIR / n).exists()}
            time.sleep(0.1)

    def left(self) -> set[str]:
        return {n for n in self.names if (lifecycle.SHM_DIR / n).exists()}

    def tail(self, n: int = 4000) -> str:
        return f"exit status {self.code} after {self.wall_s:.0f} s\n{self.output[-n:]}"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _planted_shm(port: int, age_s: float) -> Path:
    path = lifecycle.SHM_DIR / f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_{port}_0"
    path.write_bytes(b"\0" * 4096)
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """RUNS finished launches into one output directory (the synthetic data made once, by the first), the first
    one started with stale leftovers planted: buffers and data build directories, some stale, some held."""
    out = tmp_path_factory.mktemp("exit") / "run"
    data = out / "data"
    data.mkdir(parents=True)
    host, dead = socket.gethostname(), _dead_pid()
    builds = {"build_dead": data / f".tmp-{dead}-0badc0de-{host}", "build_legacy": data / f".tmp-{dead}",
              "build_live": data / f".tmp-{os.getpid()}-0badc0de-{host}",
              "build_other_host": data / f".tmp-{dead}-0badc0de-x.y"}
    for d in builds.values():
        (d / "image").mkdir(parents=True)
        (d / "image" / "train-000000.tar").write_bytes(b"partial")
    shm, held = {}, None
    if HAS_SHM:
        # (a young buffer, which the age guard keeps, is left to test_clean_stale_shm_rule: a start delayed by a
        # busy machine would age it here)
        shm = {"shm_stale": _planted_shm(free_port(), 3600), "shm_held": _planted_shm(free_port(), 3600)}
        held = shm["shm_held"].open("rb")  # a live process (this one) holds it: it must stay
    runs = []
    try:
        for i in range(RUNS):
            runs.append(Launch(out, workers=i % 2))  # with and without loader workers
            if i == 0:
                after = {k: p.exists() for k, p in {**shm, **builds}.items()}
            assert (out / "stage1" / "DONE.json").is_file(), runs[-1].tail()
            subprocess.run(["rm", "-rf", str(out / "stage1")], check=True)
    finally:
        if held is not None:
            held.close()
        for p in shm.values():
            p.unlink(missing_ok=True)
    return runs, after


def test_every_finished_run_exits_zero(finished_runs):
    runs, _ = finished_runs
    codes = [r.code for r in runs]
    assert codes == [0] * RUNS, "\n\n".join(r.tail() for r in runs if r.code)
    assert all("Traceback" not in r.output and "terminate called" not in r.output for r in runs), \
        "\n\n".join(r.tail() for r in runs)


def test_finished_runs_leave_no_shm_buffers(finished_runs):
    runs, _ = finished_runs
    if not HAS_SHM or not any(r.seen for r in runs):
        pytest.skip("DeepSpeed's shared-memory all-reduce was not used here (no /dev/shm or no compiled op)")
    assert all(r.seen == r.names for r in runs if r.seen), [sorted(r.seen) for r in runs]
    assert [sorted(r.left()) for r in runs] == [[]] * RUNS


def test_stale_leftovers_go_at_the_next_start_and_live_ones_stay(finished_runs):
    _, after = finished_runs
    assert not after["build_dead"] and not after["build_legacy"], "data build directories of dead processes"
    assert after["build_live"] and after["build_other_host"], "a live process's build, another host's build"
    if HAS_SHM:
        assert not after["shm_stale"], "an old buffer no process holds"
        assert after["shm_held"], "an old buffer a live process holds"


def test_failed_runs_exit_non_zero_and_leave_no_shm_buffers(tmp_path):
    fault = Launch(tmp_path / "fault", steps=2, env={"MOMO_FAULT_AT_STEP": "1"})
    assert fault.code == 1, fault.tail()
    assert "fault injected after step 1" in fault.output, fault.tail()
    assert not (tmp_path / "fault" / "stage1" / "DONE.json").exists()
    bad = Launch(tmp_path / "bad", "train.lr=fast")
    assert bad.code == 2, bad.tail()
    assert "error:" in bad.output and "Traceback" not in bad.output, bad.tail()
    assert sorted(fault.left() | bad.left()) == []


# ------------------------------------------------------------------------------- the rules, without a launch
def _main_exit_status(body: str) -> tuple[int, str]:
    code = ("from momo_ds.engine import lifecycle\n"
            "def main():\n"
            "    print('working', end='')\n"  # unflushed: finish flushes before os._exit
            f"    {body}\n"
            "lifecycle.run_main(main)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout == "working", p.stdout + p.stderr
    return p.returncode, p.stderr


@pytest.mark.parametrize("body, expected", [
    ("return 0", 0), ("return None", 0), ("return 2", 2), ("return 75", 75), ("raise SystemExit(3)", 3),
    ("raise SystemExit('stopped: why')", 1), ("raise RuntimeError('boom')", 1), ("raise KeyboardInterrupt", 130),
])
def test_run_main_exit_status(body, expected):
    code, err = _main_exit_status(body)
    assert code == expected, err
    if "Error" in body or "Interrupt" in body:
        assert "Traceback" in err and body.split("raise ")[1].split("(")[0] in err
    if "why" in body:
        assert "stopped: why" in err


def test_clean_stale_shm_rule(tmp_path):
    now = time.time()

    def make(name, age=3600.0):
        p = tmp_path / name
        p.write_bytes(b"x")
        os.utime(p, (now - age, now - age))
        return p

    stale = make(f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_1234_0")
    no_port = make(f"deepspeed_allreduce_buffer_{UID}_node_1__1")  # MASTER_PORT unset: an empty field
    young = make(f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_1234_1", age=5)
    other_user = make(f"deepspeed_allreduce_buffer_{UID + 1}_127.0.0.1_1234_0")
    unrelated = make("some_other_segment")
    held, mapped = make(f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_99_0"), make(
        f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_99_1")
    import mmap

    with held.open("rb"), mapped.open("r+b") as f:
        m = mmap.mmap(f.fileno(), 1)  # stays mapped after the file is closed
        f.close()
        removed = lifecycle.clean_stale_shm(tmp_path)
        m.close()
    assert sorted(removed) == sorted([stale, no_port])
    assert all(p.exists() for p in (young, other_user, unrelated, held, mapped))


def test_release_shm_names_this_job_only(tmp_path, monkeypatch):
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "4242"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    mine = [tmp_path / f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_4242_{r}" for r in range(2)]
    other_job = tmp_path / f"deepspeed_allreduce_buffer_{UID}_127.0.0.1_4243_0"
    for p in (*mine, other_job):
        p.write_bytes(b"x")
    assert lifecycle.release_shm(shm_dir=tmp_path) == [mine[1]]
    assert lifecycle.release_shm(every_rank=True, shm_dir=tmp_path) == [mine[0]]
    assert other_job.exists()
    monkeypatch.setenv("LOCAL_SIZE", "1")  # ranks on several hosts: DeepSpeed makes no buffers
    assert lifecycle.shm_names() == []


def test_clean_stale_builds_rule(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dirs = {"dead": f".tmp-{dead}-0123abcd-{host}", "legacy": f".tmp-{dead}",
                "reused_pid": f".tmp-{sleeper.pid}-0123abcd-{host}", "own": f".tmp-{os.getpid()}-0123abcd-{host}",
                "other_host": f".tmp-{dead}-0123abcd-elsewhere", "not_a_build": ".tmp-notes"}
        for name in dirs.values():
            (tmp_path / name).mkdir()
        # a live pid whose process started after the directory last changed did not write it (a reused pid)
        old = time.time() - 3600
        os.utime(tmp_path / dirs["reused_pid"], (old, old))
        removed = {p.name for p in synthetic.clean_stale_builds(tmp_path)}
    finally:
        sleeper.kill()
        sleeper.wait()
    assert removed == {dirs["dead"], dirs["legacy"], dirs["reused_pid"]}, removed
    assert (tmp_path / dirs["own"]).exists(), "this process's own build directory"
    assert (tmp_path / dirs["other_host"]).exists() and (tmp_path / dirs["not_a_build"]).exists()


def test_clean_stale_builds_keeps_a_live_writer(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        d = tmp_path / f".tmp-{sleeper.pid}-0123abcd-{socket.gethostname()}"
        d.mkdir()
        assert synthetic.clean_stale_builds(tmp_path) == [] and d.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
