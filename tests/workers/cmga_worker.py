"""2-rank worker: one CMGA step through the DeepSpeed engine for each ZeRO stage (fp32); rank 0 writes the full
fp32 parameters and the global grad norm so the test can compare with a single-process PyTorch step.

    torchrun --nproc_per_node 2 tests/workers/cmga_worker.py OUT_DIR 1,2,3
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import deepspeed  # noqa: E402
import torch  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_grad  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from momo_ds import distributed as mdist  # noqa: E402
from momo_ds.engine.cmga import CMGAStep  # noqa: E402
from momo_ds.objectives.task import PretrainTask  # noqa: E402
from tests.workers.cmga_setup import STREAMS, build, ds_config, local_batches, make_optimizer  # noqa: E402


def main(out: Path, zeros: list[int]) -> None:
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    rank, world = mdist.get_rank(), mdist.get_world_size()
    for zero in zeros:
        model = build()
        task = PretrainTask(model, mdist.TorchDist.current(), touch_unused=True)
        engine, *_ = deepspeed.initialize(model=task, optimizer=make_optimizer(model), config=ds_config(zero, world))
        step = CMGAStep(engine, STREAMS, torch.float32, torch.device("cpu"), rank=rank)
        result = step.backward(local_batches(rank, world))
        grads = {n: safe_get_full_grad(p) for n, p in model.named_parameters()}  # at the boundary
        engine.step()
        params = {n: safe_get_full_fp32_param(p).detach().clone() for n, p in model.named_parameters()}
        norm = float(engine.get_global_grad_norm())
        terms = {k: float(v) for k, v in result.terms.items()}
        if rank == 0:
            save_file({k: v.contiguous() for k, v in params.items()}, str(out / f"zero{zero}_params.safetensors"))
            save_file({k: v.float().contiguous() for k, v in grads.items() if v is not None},
                      str(out / f"zero{zero}_grads.safetensors"))
        (out / f"zero{zero}_rank{rank}.json").write_text(json.dumps({"grad_norm": norm, "terms": terms}))
        engine.destroy()
        mdist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), [int(z) for z in sys.argv[2].split(",")])
