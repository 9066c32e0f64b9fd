"""2 CPU ranks (gloo): the skip counts of the log row, summed over ranks, are a column per stream and per stream x
reason from the first row of metrics.csv, and equal the naive sum of the ranks' counters although the ranks have
different reasons non-zero, and one stream has skips only on rank 1 and only after the first log step.

This file is also the worker the test launches:  torchrun --nproc_per_node 2 tests/test_metrics_multirank.py OUT
"""
from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import pytest
import torch

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from momo_ds import distributed as mdist  # noqa: E402
from momo_ds.data import SkipStats  # noqa: E402
from momo_ds.engine.metrics import MetricsWriter  # noqa: E402
from momo_ds.engine.stage import StageRunner  # noqa: E402
from momo_ds.engine.telemetry import Window  # noqa: E402
from tests.multirank import launch, tail  # noqa: E402

STREAMS = ("img", "txt", "pair")
LOGS, WORLD, TABLES = 3, 2, 4


def rank_skips(rank: int, log: int) -> dict[str, dict[str, int]]:
    """Cumulative skips of ``rank`` at log step ``log`` as the loader reports them (every stream, non-zero reasons):
    img skips on both ranks under different reasons, txt only on rank 1 from the second log step, pair never."""
    img = {SkipStats.CORRUPT_IMAGE: 1 + log} if rank == 0 else {SkipStats.EMPTY_MEMBER: 2 * log}
    txt = {SkipStats.BAD_UTF8: 3 * log, SkipStats.EMPTY_TEXT: log - 1} if rank == 1 and log else {}
    return {"img": SkipStats(img).as_dict(), "txt": SkipStats(txt).as_dict(), "pair": {}}


def random_table(rank: int, i: int) -> dict[str, dict[str, int]]:
    """A sparse counter table (streams and reasons left out at random), with counts beyond float64's exact range."""
    g = random.Random(1000 * i + rank)
    return {s: {r: g.randrange(1, 2**61) for r in SkipStats.REASONS if g.random() < 0.3}
            for s in STREAMS if g.random() < 0.7}


def naive_sum(tables: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    return {s: {r: sum(t.get(s, {}).get(r, 0) for t in tables) for r in SkipStats.REASONS} for s in STREAMS}


class _Engine:
    def get_lr(self):
        return [1e-3]

    def get_global_grad_norm(self):
        return None


class _Loader:
    def __init__(self, counts: dict[str, dict[str, int]]):
        self.counts = counts

    def skip_counts(self) -> dict[str, dict[str, int]]:
        return self.counts


def main(out: Path) -> None:
    torch.distributed.init_process_group("gloo")
    rank = mdist.get_rank()
    runner = StageRunner.__new__(StageRunner)  # _log_window needs only these
    runner.engine, runner.world, runner.device, runner.peak = _Engine(), mdist.get_world_size(), torch.device("cpu"), None
    runner.counters = {"samples": 0, "tokens": 0, "elapsed_s": 0.0}
    writer = MetricsWriter(out, enabled=rank == 0, tensorboard=False)
    rows = []
    for log in range(LOGS):
        runner.loader = _Loader(rank_skips(rank, log))
        window = Window()
        window.running, window.counts, window.samples, window.tokens = {"img/loss": torch.tensor(1.0)}, {
            "img/loss": 1}, {"img": 4}, {"img": 40}
        row = runner._log_window(window, {"wall_s": 1.0, "data_s": 0.1 * (rank + 1), "fwd_bwd_s": 0.5,
                                          "optim_s": 0.1})
        writer.write(10 * (log + 1), row)
        rows.append(row)
    tables = [mdist.sum_count_table(random_table(rank, i), STREAMS, SkipStats.REASONS) for i in range(TABLES)]
    (out / f"rank{rank}.json").write_text(json.dumps({"rows": rows, "tables": tables}))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("metrics_multirank")
    proc = launch("tests/test_metrics_multirank.py", [str(out)], nproc=WORLD, timeout=300)
    results = [out / f"rank{r}.json" for r in range(WORLD)]
    assert all(f.is_file() for f in results), tail(proc)
    return out, [json.loads(f.read_text()) for f in results]


def test_log_row_skip_counts_equal_naive_sum_on_every_rank(ranks_out):
    _, ranks = ranks_out
    for log in range(LOGS):
        want = naive_sum([rank_skips(r, log) for r in range(WORLD)])
        for rank in ranks:
            row = rank["rows"][log]
            for s in STREAMS:
                assert row[f"{s}/skipped"] == sum(want[s].values())
                assert {r: row[f"{s}/skipped/{r}"] for r in SkipStats.REASONS} == want[s]
    last = ranks[0]["rows"][-1]
    assert last["txt/skipped/bad_utf8"] == 3 * (LOGS - 1) and last["txt/skipped/empty_text"] == LOGS - 2


def test_data_wait_and_memory_are_the_largest_rank_s_on_every_rank(ranks_out):
    """Rank r waited 0.1 * (r + 1) s of a 1 s window: every rank logs the slowest loader's share, and the same
    (largest) peak memory."""
    _, ranks = ranks_out
    for log in range(LOGS):
        rows = [rank["rows"][log] for rank in ranks]
        assert all(row["data_wait_pct"] == pytest.approx(10.0 * WORLD) for row in rows)
        assert len({row["memory_gib"] for row in rows}) == 1 and rows[0]["memory_gib"] > 0


def test_every_skip_column_is_in_metrics_csv_from_the_first_row(ranks_out):
    out, ranks = ranks_out
    with (out / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    assert fields == ["step", *ranks[0]["rows"][0]]
    for s in STREAMS:
        assert f"{s}/skipped" in fields and all(f"{s}/skipped/{r}" in fields for r in SkipStats.REASONS)
    assert len(rows) == LOGS and all(v != "" for row in rows for v in row.values()), "no blank cell: no late column"
    assert rows[0]["txt/skipped"] == "0.0" and rows[0]["pair/skipped"] == "0.0"
    assert float(rows[-1]["txt/skipped"]) == 3 * (LOGS - 1) + LOGS - 2


def test_sum_count_table_equals_naive_sum_whatever_cells_each_rank_filled(ranks_out):
    _, ranks = ranks_out
    for i in range(TABLES):
        want = naive_sum([random_table(r, i) for r in range(WORLD)])
        assert all(rank["tables"][i] == want for rank in ranks), i


if __name__ == "__main__":
    main(Path(sys.argv[1]))
