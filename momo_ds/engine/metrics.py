"""Rank-0 console (rich progress bar on a terminal, plain progress lines elsewhere; end-of-stage table) and metric
files (CSV, TensorBoard)."""
from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from momo_ds.engine.checkpoint import atomic_write_text


class MetricsWriter:
    """Appends one row per log step to ``metrics.csv`` and to TensorBoard.

    The header is the first row's keys (or, on resume, the existing file's). A later row with a key that is not a
    column rewrites the file with the union of columns, earlier rows blank there, instead of dropping the value.
    """

    def __init__(self, stage_dir: Path, enabled: bool, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(stage_dir) / "metrics.csv"
        self._fields: Optional[list[str]] = None
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(stage_dir) / "tensorboard"))
            except Exception as e:  # tensorboard missing or broken: CSV still works
                Console(stderr=True).print(f"[yellow]TensorBoard disabled: {e}[/]")

    def write(self, step: int, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **row}
        if self._fields is None:
            self._fields = self._existing_header()
        new = [k for k in row if k not in self._fields]
        if new:
            self._rewrite(self._fields + new)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._fields).writerow(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, step)

    def _existing_header(self) -> list[str]:
        """The columns of a resumed stage's metrics.csv; none for a new (or empty) file."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return []
        with self.path.open(newline="") as f:
            return next(csv.reader(f), [])

    def _rewrite(self, fields: list[str]) -> None:
        """Write the file anew under ``fields`` (earlier rows kept, blank in new columns), atomically: a run
        killed mid-rewrite leaves the old file, never a half-written one."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        if self._fields:  # columns known: the file exists
            with self.path.open(newline="") as f:
                writer.writerows(csv.DictReader(f))
        atomic_write_text(self.path, out.getvalue())
        self._fields = fields

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class StageConsole:
    """Rank 0's view of a stage. On a terminal: a rich progress bar with the latest losses, LR and throughput.
    Anywhere else (a log file, a pipe, a batch job's output): one plain line per log step, see :func:`progress_line`
    (a bar redraws in place, so a file would see nothing until the stage ends)."""

    def __init__(self, stage: int, total_steps: int, start_step: int, enabled: bool, plain: Optional[bool] = None):
        self.enabled = enabled
        self.stage, self.total, self.start_step = stage, total_steps, start_step
        self.console = Console()
        self.plain = (not sys.stdout.isatty()) if plain is None else plain
        self.start_time = time.perf_counter()
        self.progress = None
        if enabled and not self.plain:
            self.progress = Progress(
                TextColumn(f"[bold cyan]stage {stage}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False, refresh_per_second=4)
            self.progress.start()
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, info="")

    def update(self, step: int, row: dict[str, float]) -> None:
        """A log step: ``row`` is the metrics row just written."""
        if not self.enabled:
            return
        if self.plain:
            done = step - self.start_step
            eta = (time.perf_counter() - self.start_time) / done * (self.total - step) if done > 0 else None
            print(progress_line(self.stage, step, self.total, row, eta), flush=True)
        else:
            text = "  ".join(_fmt(k, v) for k, v in _short(row).items())
            self.progress.update(self.task, completed=step, info=text)
        held_out = heldout_line(self.stage, step, row)
        if held_out:
            (print(held_out, flush=True) if self.plain else self.console.print(held_out, markup=False))

    def advance_to(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def print_summary(self, title: str, rows: dict[str, float]) -> None:
        if not self.enabled:
            return
        table = Table(title=title)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in rows.items():
            table.add_row(k, _fmt_value(v))
        self.console.print(table)


def progress_line(stage: int, step: int, total: int, row: dict[str, float], eta_s: Optional[float]) -> str:
    """``[momo_ds] stage 3 step 40/286 | pair/itc 2.31 pair/itm 0.66 text/mlm 5.12 | lr 1.0e-04 | 51.2 samples/s
    | MFU 3.1 % | data 2.0 % | mem 1.3 GiB | ETA 4m05s``: the per-objective losses (each stream's total left
    out), then what is known of LR, throughput, MFU, data wait, memory and skipped samples."""
    losses = " ".join(f"{k.replace('_loss', '')} {v:.4g}" for k, v in row.items()
                      if k.endswith("_loss") and not k.startswith("eval/"))
    parts = [f"[momo_ds] stage {stage} step {step}/{total}", losses]
    if "lr" in row:
        parts.append(f"lr {row['lr']:.2e}")
    if "samples_per_s" in row:
        parts.append(f"{row['samples_per_s']:.1f} samples/s")
    if "mfu" in row:
        parts.append(f"MFU {100 * row['mfu']:.1f} %")
    if "data_wait_pct" in row:
        parts.append(f"data {row['data_wait_pct']:.1f} %")
    if "memory_gib" in row:
        parts.append(f"mem {row['memory_gib']:.2f} GiB")
    skipped = sum(v for k, v in row.items() if k.endswith("/skipped"))
    if skipped:
        parts.append(f"skipped {skipped:.0f}")
    if eta_s is not None:
        parts.append(f"ETA {_clock(eta_s)}")
    return " | ".join(p for p in parts if p)


def heldout_line(stage: int, step: int, row: dict[str, float]) -> str:
    """``[momo_ds] stage 3 step 143 held-out | pair/itc 3.9 text/mlm 4.8 | pair R@1 tr/ir 7.8/6.2 R@10 41.0/43.1 % |
    (chance R@1 1.6) | pair ITM random/hard 88.1/55.0 %`` (retrieval both ways; ITM balanced accuracy against random /
    hard negatives), or "" when the row has no held-out columns."""
    held = {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}
    if not held:
        return ""
    parts = [f"[momo_ds] stage {stage} step {step} held-out",
             " ".join(f"{k.replace('_loss', '')} {v:.4g}" for k, v in held.items() if k.endswith("_loss"))]
    for stream in sorted({k.split("/")[0] for k in held if k.endswith("tr@1_pct")}):
        g = {k.split("/", 1)[1]: v for k, v in held.items() if k.startswith(f"{stream}/")}
        parts.append(f"{stream} R@1 tr/ir {g['tr@1_pct']:.1f}/{g['ir@1_pct']:.1f} R@10 {g['tr@10_pct']:.1f}/"
                     f"{g['ir@10_pct']:.1f} % (chance R@1 {g['chance_r1_pct']:.1f})")
        if "itm_random_bacc_pct" in g:
            parts.append(f"{stream} ITM random/hard {g['itm_random_bacc_pct']:.1f}/{g['itm_hard_bacc_pct']:.1f} %")
    return " | ".join(p for p in parts if p)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _short(row: dict[str, float]) -> dict[str, float]:
    """What fits on the progress bar: per-objective losses, LR, throughput, MFU, skipped samples."""
    out = {}
    for k, v in row.items():
        if k.startswith("eval/"):
            continue
        if k.endswith("_loss") or k in ("lr", "samples_per_s", "tokens_per_s", "mfu") or k.endswith("/skipped"):
            out[k.replace("_loss", "").replace("samples_per_s", "smp/s").replace("tokens_per_s", "tok/s")] = v
    return out


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def _fmt(k: str, v) -> str:
    return f"{k}={_fmt_value(v)}"
