"""2-rank worker: gradient of the global contrastive loss through the all-gather, and ITM hard-negative draws
from the gathered similarity matrix. Each rank writes what it computed; the test compares.

    torchrun --nproc_per_node 2 tests/workers/gather_worker.py OUT_DIR
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from momo_ds import distributed as mdist  # noqa: E402
from momo_ds.objectives.contrastive import contrastive_loss  # noqa: E402
from momo_ds.objectives.itm import sample_hard_negatives  # noqa: E402

B_LOCAL, DIM = 4, 8


def global_embeddings():
    g = torch.Generator().manual_seed(7)
    img = torch.nn.functional.normalize(torch.randn(2 * B_LOCAL, DIM, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.5 * torch.randn(2 * B_LOCAL, DIM, generator=g), dim=1)
    return img, txt, torch.tensor([2.0])


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    ctx = mdist.TorchDist.current()
    r, w = ctx.rank, ctx.world_size
    img, txt, scale = global_embeddings()
    sl = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
    img_l = img[sl].clone().requires_grad_(True)
    txt_l = txt[sl].clone().requires_grad_(True)
    scale_l = scale.clone().requires_grad_(True)
    loss = contrastive_loss(img_l, txt_l, scale_l, dist=ctx)["itc_loss"]
    loss.backward()
    # data parallel averages gradients over ranks (as DeepSpeed does for parameters)
    scale_grad = scale_l.grad.clone()
    dist.all_reduce(scale_grad)
    save_file({"img_grad": img_l.grad / w, "txt_grad": txt_l.grad / w, "scale_grad": scale_grad / w,
               "loss": loss.detach().reshape(1)}, str(out / f"itc_rank{r}.safetensors"))

    # ITM: local rows vs gathered columns; 2000 draws per row
    img_all, txt_all = ctx.gather(img[sl]), ctx.gather(txt[sl])
    sim_i2t = 10.0 * img[sl] @ txt_all.T
    sim_t2i = 10.0 * txt[sl] @ img_all.T
    gen = torch.Generator().manual_seed(100 + r)
    neg_t, neg_i = zip(*(sample_hard_negatives(sim_i2t, sim_t2i, r, gen) for _ in range(2000)))
    (out / f"itm_rank{r}.json").write_text(json.dumps({"neg_text": torch.stack(neg_t).tolist(),
                                                       "neg_image": torch.stack(neg_i).tolist()}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
