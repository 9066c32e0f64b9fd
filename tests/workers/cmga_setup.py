"""What the CMGA worker and its single-process reference share: model, batches, optimizer, DeepSpeed config."""
import torch

from momo_ds.config import StreamConfig
from momo_ds.engine.optim import param_groups
from tests.workers.fake_batches import image_batch, pair_batch, slice_batch, text_batch

GLOBAL_B = 8
VOCAB, MAX_LEN = 512, 12
STREAMS = [
    StreamConfig(name="image", kind="image", objectives={"mim": 1.0}, batch_size=GLOBAL_B // 2),
    StreamConfig(name="text", kind="text", objectives={"mlm": 0.5}, batch_size=GLOBAL_B // 2),
    StreamConfig(name="pair", kind="pair", objectives={"cmm": 1.0, "itc": 0.7}, batch_size=GLOBAL_B // 2),
]
LR, WD, CLIP = 1e-3, 0.05, 1.0


def build():
    from momo_ds.model import build_model

    torch.manual_seed(0)
    return build_model("tiny", depth=2, decoder_depth=1, decoders=["mim", "mlm", "cmm"])


def global_batches():
    g = torch.Generator().manual_seed(1)
    return {"image": image_batch(g, GLOBAL_B, 32, 4, 0.75),
            "text": text_batch(g, GLOBAL_B, VOCAB, MAX_LEN, 0.15),
            "pair": pair_batch(g, GLOBAL_B, 32, 4, VOCAB, MAX_LEN)}


def local_batches(rank: int, world: int):
    n = GLOBAL_B // world
    return {k: slice_batch(b, rank * n, (rank + 1) * n) for k, b in global_batches().items()}


def make_optimizer(model):
    # eps=1e-3 keeps Adam's first step Lipschitz in the gradient: with eps=1e-8 an entry whose true gradient is 0
    # (e.g. the key bias of attention, which softmax ignores) carries ~1e-9 of float noise that Adam turns into a
    # ~lr-sized update of arbitrary sign, so two correct summation orders would differ by 6e-5 after one step.
    return torch.optim.AdamW(param_groups(model, WD), lr=LR, betas=(0.9, 0.95), eps=1e-3)


def ds_config(zero: int, world: int) -> dict:
    micro = sum(s.batch_size for s in STREAMS)
    return {"train_micro_batch_size_per_gpu": micro, "train_batch_size": micro * world,
            "gradient_accumulation_steps": 1, "gradient_clipping": CLIP, "zero_optimization": {"stage": zero},
            "steps_per_print": 10 ** 9}
