#!/usr/bin/env python
"""mmdet's (or mmseg's) ``tools/test.py`` under ``torchrun`` on machines without a GPU.

mmengine 0.10.7's ``--launcher pytorch`` calls ``torch.cuda.set_device`` before it
initialises the process group, which fails on a CPU-only machine. This wrapper
initialises the process group itself (``gloo``, from torchrun's environment) and
runs the stock ``tools/test.py`` unchanged with ``--launcher none``; mmengine then
shards the data and gathers the metrics through the initialised group, and the IGQ
calibration hook broadcasts its state to every rank as under ``--launcher pytorch``.

    torchrun --nproc_per_node 2 tools/dist_test.py CONFIG CHECKPOINT [test.py args]

The script is mmseg's when the config's ``default_scope`` is ``mmseg``, else mmdet's.
"""
import os.path as osp
import runpy
import sys

import mmdet
import mmseg
import torch.distributed as dist
from mmengine.config import Config


def main() -> None:
    if '--launcher' in sys.argv[1:]:
        sys.exit('error: tools/dist_test.py sets up the process group itself; drop --launcher')
    if len(sys.argv) < 2:
        sys.exit('usage: tools/dist_test.py CONFIG CHECKPOINT [test.py args]')
    library = mmseg if Config.fromfile(sys.argv[1]).get('default_scope') == 'mmseg' else mmdet
    dist.init_process_group('gloo')
    test_py = osp.join(osp.dirname(library.__file__), '.mim', 'tools', 'test.py')
    sys.argv = [test_py] + sys.argv[1:]
    try:
        runpy.run_path(test_py, run_name='__main__')
    finally:
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
