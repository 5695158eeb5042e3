"""Statistics merged across processes give every rank the single-process parameters."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from igq_plugin.nn import QuantConfig, finalize_calibration, quantize_modules, quantizer_buffers
from igq_plugin.quant import METHODS, quant_mode
from tests.toy_models import TinyViT, toy_images


def calibrated_buffers(method, images):
    model = TinyViT().eval()
    quantize_modules(model, QuantConfig(method, 4, 4, 4), first_layers=['patch_embed'])
    with torch.no_grad(), quant_mode(model, 'calibrate'):
        for image in images.split(1):
            model(image)
    finalize_calibration(model)
    return {k: v.clone() for k, v in quantizer_buffers(model).items()}


def _worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    images = toy_images(4)
    mine = images[rank * 2:(rank + 1) * 2]  # each rank sees different images
    result = {m: calibrated_buffers(m, mine) for m in METHODS}
    torch.save(result, os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    mp.spawn(_worker, args=(2, 29617, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f'rank{r}.pt') for r in range(2)]
    single = {m: calibrated_buffers(m, toy_images(4)) for m in METHODS}
    for method in METHODS:
        for key, value in single[method].items():
            assert torch.equal(ranks[0][method][key], ranks[1][method][key]), (method, key)
            assert torch.allclose(ranks[0][method][key].float(), value.float(),
                                  atol=1e-5), (method, key)
