#!/usr/bin/env python
"""MoMo pretraining, the main job.

    deepspeed tools/pretrain.py --ds_config ds_configs/zero2.json            # tiny preset, 3 stages, synthetic data
    deepspeed --hostfile hosts tools/pretrain.py --ds_config ds_configs/zero2.json \
        --config large --set data.streams.0.shards=[/data/in1k/train-{000000..001023}.tar]

Also runs under ``torchrun`` or plain ``python`` (one process). See ``momo_ds/engine/run.py`` for every option.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from momo_ds.engine.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
