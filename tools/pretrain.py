#!/usr/bin/env python
"""MoMo pretraining, the main job.

    deepspeed tools/pretrain.py --ds_config ds_configs/zero2.json            # tiny preset, 3 stages, synthetic data
    deepspeed --hostfile hosts tools/pretrain.py --ds_config ds_configs/zero2.json --config large \
        --set 'data.streams.image.shards=[/data/in1k/train-{000000..001281}.tar]' \
              'data.streams.text.shards=[/data/wiki_books/train-{000000..006599}.tar]' \
              'data.streams.pair.shards=[/data/pmd/train-{000000..026599}.tar]'

Quote every ``--set`` value that holds a brace pattern: unquoted, the shell expands it into one override per
shard (an error). Streams are addressed by name (image, text, pair) so one command serves all three stages.

Also runs under ``torchrun`` or plain ``python`` (one process). See ``momo_ds/engine/run.py`` for every option.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from momo_ds.engine import lifecycle  # noqa: E402
from momo_ds.engine.run import main  # noqa: E402

if __name__ == "__main__":
    # Exit status: 0 finished, 2 a config or data error, 75 stopped by a signal with a checkpoint, 1 an uncaught
    # error (after its traceback). lifecycle also removes DeepSpeed's shared-memory buffers: stale ones at the
    # start, this run's at the end.
    lifecycle.run_main(main)
