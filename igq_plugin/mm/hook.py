"""``IGQCalibrationHook``: calibrate (or load) the quantized model before evaluation."""
from __future__ import annotations

import os.path as osp

import torch
from mmengine.dist import all_gather_object, broadcast_object_list, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..nn import import_state
from ..quant import QuantMode, set_mode
from .backbone import QuantState, is_quantized_backbone, set_quant_state
from .calibration import (calibrate_model, check_quantized, log_report,
                          quantize_detector_parts, take_calibration_batches)
from .predictors import check_search_rois
from .state_io import (buffers_fingerprint, config_fingerprint, fingerprinted_state,
                       load_state, weights_fingerprint)

DATALOADERS = ('test', 'val', 'train')


@HOOKS.register_module()
class IGQCalibrationHook(Hook):
    """Calibrate quantizers and allocate group sizes once, before the first evaluation.

    The model's backbone must be built by ``IGQBackbone`` (it carries the
    quantization config). The hook also quantizes the neck (and, optionally, the RoI
    heads) with the same config, takes ``num_images`` images from a dataloader,
    calibrates, runs the group-size allocation for ``method='igq'``, logs a per-layer
    table, saves the state to the work dir, and checks that evaluation runs
    quantized. Under distributed launch rank 0 calibrates and broadcasts the state,
    so every rank holds identical parameters.

    Args:
        num_images: calibration images (the paper's protocol: 1).
        dataloader: where calibration images come from: ``None`` (the dataloader of
            the loop about to evaluate), ``'test'``, ``'val'``, ``'train'`` (the
            runner's config of that dataloader), or a dataloader config dict.
        quantize_neck: quantize the neck's convolutions (FPN).
        quantize_roi_head: also quantize the RoI heads' Linear/Conv layers.
        state_file: load this calibrated state instead of calibrating.
        save_state: write ``igq_state.pth`` to the work dir after calibrating.
        search_rois: RoIs per calibration image in the allocation's sensitivity
            search (``method='igq'``, two-stage detectors): the float model's
            best-scored proposals. ``None`` (default): all of them, the method doc's
            definition; a smaller count makes the search faster.
    """

    priority = 'VERY_HIGH'

    def __init__(self, num_images: int = 1, dataloader: str | dict | None = None,
                 quantize_neck: bool = True, quantize_roi_head: bool = False,
                 state_file: str | None = None, save_state: bool = True,
                 search_rois: int | None = None):
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f'IGQCalibrationHook: num_images={num_images!r}; calibration '
                             f'needs at least 1 image')
        if dataloader is not None and not isinstance(dataloader, dict) and \
                dataloader not in DATALOADERS:
            raise ValueError(f'IGQCalibrationHook: dataloader={dataloader!r}; allowed are '
                             f'{DATALOADERS} or a dataloader config dict')
        self.search_rois = check_search_rois(search_rois)
        self.num_images = num_images
        self.dataloader = dataloader
        self.quantize_neck = quantize_neck
        self.quantize_roi_head = quantize_roi_head
        self.state_file = state_file
        self.save_state = save_state
        self.report = None
        self._done = False

    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_run(self, runner) -> None:
        """Check the model and settings, and quantize the neck/heads (cheap, early)."""
        model = self._model(runner)
        backbone = getattr(model, 'backbone', None)
        if not is_quantized_backbone(backbone):
            raise TypeError(f'IGQCalibrationHook needs model.backbone built by IGQBackbone; '
                            f'got {type(backbone).__name__}. Set '
                            f"model.backbone.type='IGQBackbone' and wrapped_type")
        if self.state_file is not None and not osp.isfile(self.state_file):
            raise FileNotFoundError(f'IGQCalibrationHook: state_file={self.state_file!r} '
                                    f'does not exist')
        config = backbone.igq_config
        if config.method == 'igq' and self.state_file is None and not (
                hasattr(model, 'roi_head') or hasattr(model, 'encode_decode')):
            raise TypeError(f"method='igq' allocates groups from RoI class scores; "
                            f'{type(model).__name__} has no RoI head. Use igq-fixed.')
        converted = quantize_detector_parts(model, config, self.quantize_neck,
                                            self.quantize_roi_head)
        print_log(f'IGQ: {config}; quantized {len(converted)} neck/head layers',
                  logger='current')

    def before_val(self, runner) -> None:
        self._prepare(runner, 'val')

    def before_test(self, runner) -> None:
        self._prepare(runner, 'test')

    def _dataloader(self, runner, evaluating: str):
        source = self.dataloader or evaluating
        if isinstance(source, dict):
            return runner.build_dataloader(source)
        if source == 'train':
            return runner.build_dataloader(runner.cfg.train_dataloader)
        return (runner.test_loop if source == 'test' else runner.val_loop).dataloader

    def _prepare(self, runner, evaluating: str) -> None:
        model = self._model(runner)
        if not self._done:
            self._calibrate_or_load(runner, model, evaluating)
            self._check_ranks_agree(model)
            self._done = True
        count = check_quantized(model)
        print_log(f'IGQ: evaluating the quantized model ({count} activation quantizers '
                  f'active)', logger='current')

    def _calibrate_or_load(self, runner, model, evaluating: str) -> None:
        config_hash = config_fingerprint(runner.cfg.model)
        weights_hash = weights_fingerprint(model)
        if self.state_file is not None:
            state = load_state(model, self.state_file, config_hash, weights_hash)
            self._activate(model)
            print_log(f'IGQ: loaded calibrated state {self.state_file} '
                      f'(allocation: {state["meta"].get("allocation") is not None})',
                      logger='current')
            return
        rank, world_size = get_dist_info()
        state = [None]
        if rank == 0:
            batches = take_calibration_batches(self._dataloader(runner, evaluating),
                                               self.num_images, model)
            self.report = calibrate_model(model, batches, model.backbone.igq_config,
                                          search_rois=self.search_rois)
            log_report(self.report)
            state = [fingerprinted_state(model, config_hash, weights_hash,
                                         allocation=self.report.allocation)]
            if self.save_state:
                path = osp.join(runner.work_dir, 'igq_state.pth')
                torch.save(state[0], path)
                print_log(f'IGQ: saved calibrated state to {path}', logger='current')
        if world_size > 1:
            broadcast_object_list(state, src=0)
            if rank != 0:
                import_state(model, state[0])
                self._activate(model)

    @staticmethod
    def _check_ranks_agree(model) -> None:
        """Every rank must hold the same quantizer parameters; log their fingerprint."""
        _, world_size = get_dist_info()
        fingerprints = [buffers_fingerprint(model)]
        if world_size > 1:
            fingerprints = all_gather_object(fingerprints[0])
            if len(set(fingerprints)) != 1:
                raise RuntimeError(f'IGQ: quantizer buffers differ across ranks: {fingerprints}')
        print_log(f'IGQ: quantizer buffers fingerprint {fingerprints[0]} '
                  f'(identical on {world_size} rank(s))', logger='current')

    @staticmethod
    def _activate(model) -> None:
        set_mode(model, QuantMode.QUANTIZED)
        set_quant_state(model.backbone, QuantState.READY)
