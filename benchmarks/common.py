"""What the benchmarks share, importable from one place (``from common import ...``); each part lives in its own
module:

- :mod:`checkout`: the repository root, put on sys.path so that momo_ds imports without installing (first, so
  that every import below finds momo_ds)
- :mod:`measure`: device and dtype choice, CPU threads, interleaved timing (warm-up, repeats, median), device
  peaks, parameter counts
- :mod:`synthetic`: synthetic batches, masked by the loader's own momo_ds.data.collate
- :mod:`report`: machine and version info, rich tables, JSON reports
- :mod:`multirank`: the torchrun relaunch of the multi-rank benchmarks, the process group (each rank's device is
  the trainer's ``momo_ds.distributed.local_device``)
- :mod:`ds_step`: the trainer's DeepSpeed step (ds_configs resolved against a recipe, the CMGA engine)

The analytic FLOP counter is the library's (:mod:`momo_ds.model.flops`).
"""
from __future__ import annotations

from checkout import ROOT
from ds_step import build_cmga, ds_config_for, quiet_deepspeed
from measure import (GPU_PEAK_BF16_TFLOPS, Timing, count_params, cpu_matmul_peak, device_peak, gpu_peak_tflops,
                     pick_device, set_threads, sync, time_interleaved, train_dtype)
from momo_ds.distributed import local_device
from multirank import (check_ranks, init_distributed, relaunch_script, relaunch_under_torchrun,
                       under_torchrun)
from report import DATE_FORMAT, fmt, machine_info, make_console, make_report, print_table, versions, write_json
from synthetic import synthetic_batch, synthetic_texts

__all__ = [
    "ROOT",
    "build_cmga", "ds_config_for", "quiet_deepspeed",
    "GPU_PEAK_BF16_TFLOPS", "Timing", "count_params", "cpu_matmul_peak", "device_peak", "gpu_peak_tflops",
    "pick_device", "set_threads", "sync", "time_interleaved", "train_dtype",
    "check_ranks", "init_distributed", "local_device", "relaunch_script", "relaunch_under_torchrun",
    "under_torchrun",
    "DATE_FORMAT", "fmt", "machine_info", "make_console", "make_report", "print_table", "versions", "write_json",
    "synthetic_batch", "synthetic_texts",
]
