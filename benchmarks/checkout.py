"""The checkout the benchmarks run from: its root (ds_configs/, and the PYTHONPATH of relaunched ranks), put on
sys.path so that momo_ds imports without installing."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
