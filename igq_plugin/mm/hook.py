"""``IGQCalibrationHook``: quantize, calibrate (or load) the model before evaluation."""
from __future__ import annotations

import os.path as osp

import torch
from mmengine.dist import all_gather_object, broadcast_object_list, get_dist_info
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..calibration import check_quantized
from ..export import EXPORTABLE_METHODS
from ..nn import QuantState, import_state, set_quant_state
from ..quant import QuantMode, set_mode
from ..search import DEFAULT_SENSITIVITY, check_sensitivity
from .calibration import calibrate_mm_model, log_report
from .calibration_data import (SOURCES, build_calibration_source, check_draw, check_num_images,
                               draw_calibration_batches, train_images_dataloader)
from .convert import fit_float_checkpoint, mm_settings, quantize_mm_model
from .predictors import check_predictable, check_search_rois
from .quantized_model import (SUFFIX, expect_quantized_file, export_mm_model,
                              load_into_runner_model, quantized_file_of)
from .state_io import buffers_fingerprint, fingerprinted_state, load_state, weights_fingerprint

# hook arguments that became keys of model.backbone.quant (one place for what is quantized)
MOVED_ARGUMENTS = {'quantize_neck': 'neck', 'quantize_roi_head': 'roi_head'}


@HOOKS.register_module()
class IGQCalibrationHook(Hook):
    """Quantize the model, calibrate it and allocate group sizes once, before the first
    evaluation.

    The model's backbone must be built by ``IGQBackbone``: its ``quant`` entry holds
    every setting of what is quantized (README, "Methods and options"). Before the
    checkpoint is loaded the hook converts the model (:func:`~.convert.quantize_mm_model`);
    after it is loaded the hook checks that the checkpoint holds exactly the model's
    float tensors; before evaluating it draws ``num_images`` calibration images (train
    images by default, :mod:`.calibration_data`), calibrates, runs the group-size
    allocation for ``method='igq'``, logs a per-layer table, saves the state to the work
    dir, and checks that evaluation runs quantized.
    When the checkpoint is a quantized-model file (``tools/test.py CONFIG
    model.igq.safetensors``, :mod:`.quantized_model`), the hook loads it instead: no
    float checkpoint and no calibration.
    Under distributed launch rank 0 calibrates and broadcasts the state, so every rank
    holds identical parameters.

    Args:
        num_images: calibration images; ``None`` (default): as many as hold the
            pixels of the paper's one ~800x1216 COCO image (1 image at COCO size, 27
            at 192x192; :func:`~.calibration_data.images_for_pixels`).
        dataloader: where calibration images come from: ``'train'`` (default: the
            train dataset read with the evaluation pipeline, so that no evaluated
            image calibrates), ``'test'`` / ``'val'`` (that loop's dataloader), or a
            dataloader config dict.
        draw: which images: the first ``num_images`` of a permutation of the source
            dataset seeded with ``draw`` (draws 0, 1, ... are independent samples).
        state_file: load this calibrated state instead of calibrating.
        save_state: write ``igq_state.pth`` to the work dir after calibrating.
        export: also write the deployable ``model.igq.safetensors`` to the work dir
            after calibrating (:func:`~.quantized_model.export_mm_model`).
        search_rois: RoIs per calibration image in the allocation's sensitivity
            search (``method='igq'``, two-stage detectors): the float model's
            best-scored proposals. ``None`` (default): all of them, the definition
            in docs/method.md, section 5; a smaller count makes the search faster.
        sensitivity: estimator of the allocation's sensitivity tables
            (``method='igq'``): ``'fisher'`` (default; a diagonal-Fisher estimate
            from one forward and ``fisher_samples`` backward passes per calibration
            image), ``'exact'`` (one partial forward per layer and candidate G, the
            method's definition) or ``'fisher-full'`` (the same passes, the sampled
            full Fisher); see
            :func:`igq_plugin.calibrate_model`.
        fisher_samples: labels drawn per item for the Fisher estimators; ``None``:
            the estimator's default (4 for ``'fisher'``, 16 for ``'fisher-full'``).
    """

    priority = 'VERY_HIGH'

    def __init__(self, num_images: int | None = None, dataloader: str | dict = 'train',
                 draw: int = 0, state_file: str | None = None, save_state: bool = True,
                 export: bool = False,
                 search_rois: int | None = None, sensitivity: str = DEFAULT_SENSITIVITY,
                 fisher_samples: int | None = None,
                 **moved):
        for key in moved:
            if key not in MOVED_ARGUMENTS:
                raise TypeError(f'IGQCalibrationHook got an unexpected argument {key!r}')
            raise ValueError(f'IGQCalibrationHook: {key} is now the key '
                             f'model.backbone.quant.{MOVED_ARGUMENTS[key]} (what is quantized '
                             f'is set in one place); remove it from the hook')
        try:
            check_num_images(num_images)
            check_draw(draw)
        except ValueError as error:
            raise ValueError(f'IGQCalibrationHook: {error}') from None
        if not isinstance(dataloader, dict) and dataloader not in SOURCES:
            raise ValueError(f'IGQCalibrationHook: dataloader={dataloader!r}; allowed are '
                             f'{SOURCES} or a dataloader config dict')
        self.search_rois = check_search_rois(search_rois)
        try:
            self.sensitivity, self.fisher_samples = check_sensitivity(sensitivity,
                                                                      fisher_samples)
        except ValueError as error:
            raise ValueError(f'IGQCalibrationHook: {error}') from None
        self.num_images = num_images
        self.dataloader = dataloader
        self.draw = draw
        self.state_file = state_file
        self.save_state = save_state
        self.export = export
        self.report = None
        self.loaded_file = None  # the *.igq.safetensors loaded as the checkpoint
        self._done = False

    @staticmethod
    def _model(runner):
        model = runner.model
        return model.module if is_model_wrapper(model) else model

    def before_run(self, runner) -> None:
        """Check the model and settings, and convert the model (cheap, early)."""
        model = self._model(runner)
        settings = mm_settings(model)
        if settings is None:
            raise TypeError(f'IGQCalibrationHook needs model.backbone built by IGQBackbone; '
                            f'got {type(getattr(model, "backbone", None)).__name__}. Set '
                            f"model.backbone.type='IGQBackbone' and wrapped_type")
        if self.state_file is not None and not osp.isfile(self.state_file):
            raise FileNotFoundError(f'IGQCalibrationHook: state_file={self.state_file!r} '
                                    f'does not exist')
        if self.export and settings.config.method not in EXPORTABLE_METHODS:
            raise ValueError(f'IGQCalibrationHook: export=True, but method='
                             f'{settings.config.method!r} cannot be exported: exportable are '
                             f'{EXPORTABLE_METHODS}')
        if settings.config.allocates and self.state_file is None:
            check_predictable(model, self.search_rois)
        loads_file = str(runner.cfg.get('load_from') or '').endswith(SUFFIX)
        if self.dataloader == 'train' and self.state_file is None and not loads_file:
            self._check_train_source(runner.cfg)
        record = quantize_mm_model(model)
        expect_quantized_file()
        print_log(f'IGQ: {settings.as_dict()}; quantized {len(record.layers)} layers of '
                  f'{", ".join(settings.parts(model))}', logger='current')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Refuse a checkpoint that does not fit the float model; report in one line.

        The converted model's quantizer buffers are not in a float checkpoint (they are
        calibrated next); they are filled in from the model so that the loader lists
        only real mismatches.
        """
        quantized = quantized_file_of(checkpoint)
        if quantized is None:
            print_log(fit_float_checkpoint(self._model(runner), checkpoint), logger='current')
            return
        if self.state_file is not None:
            raise ValueError(f'IGQCalibrationHook: the checkpoint {quantized.path} is a '
                             f'quantized model; state_file={self.state_file!r} would replace '
                             f'its parameters: remove one of them')
        print_log(load_into_runner_model(self._model(runner), checkpoint, runner.cfg.model),
                  logger='current')
        self.loaded_file = quantized.path

    def before_val(self, runner) -> None:
        self._prepare(runner, 'val')

    def before_test(self, runner) -> None:
        self._prepare(runner, 'test')

    def _dataloader(self, runner, evaluating: str):
        source = self.dataloader
        if isinstance(source, dict):
            return build_calibration_source(source)
        if source == 'train':
            cfg = runner.cfg
            self._check_train_source(cfg)
            evaluated = cfg.test_dataloader if evaluating == 'test' else cfg.val_dataloader
            return build_calibration_source(train_images_dataloader(cfg.train_dataloader,
                                                                    evaluated))
        return (runner.test_loop if source == 'test' else runner.val_loop).dataloader

    @staticmethod
    def _check_train_source(cfg) -> None:
        if cfg.get('train_dataloader') is None:
            raise ValueError("IGQCalibrationHook: dataloader='train' but the config has no "
                             "train_dataloader; set custom_hooks' dataloader to 'test', 'val' "
                             "or a dataloader config dict")

    def _prepare(self, runner, evaluating: str) -> None:
        model = self._model(runner)
        if not self._done:
            if self.loaded_file is None:
                self._calibrate_or_load(runner, model, evaluating)
            self._check_ranks_agree(model)
            self._done = True
        count = check_quantized(model)
        print_log(f'IGQ: evaluating the quantized model ({count} activation quantizers '
                  f'active)', logger='current')

    def _calibrate_or_load(self, runner, model, evaluating: str) -> None:
        settings = mm_settings(model).as_dict()
        weights_hash = weights_fingerprint(model)
        if self.state_file is not None:
            state = load_state(model, self.state_file, settings, runner.cfg.model,
                               weights_hash)
            self._activate(model)
            print_log(f'IGQ: loaded calibrated state {self.state_file} '
                      f'(allocation: {state["meta"].get("allocation") is not None})',
                      logger='current')
            return
        rank, world_size = get_dist_info()
        state = [None]
        if rank == 0:
            batches = draw_calibration_batches(self._dataloader(runner, evaluating),
                                               self.num_images, model, self.draw)
            self.report = calibrate_mm_model(model, batches, search_rois=self.search_rois,
                                             sensitivity=self.sensitivity,
                                             fisher_samples=self.fisher_samples)
            log_report(self.report)
            state = [fingerprinted_state(model, settings, runner.cfg.model, weights_hash,
                                         allocation=self.report.allocation)]
            if self.save_state:
                path = osp.join(runner.work_dir, 'igq_state.pth')
                torch.save(state[0], path)
                print_log(f'IGQ: saved calibrated state to {path}', logger='current')
            if self.export:
                path = export_mm_model(model, osp.join(runner.work_dir, 'model' + SUFFIX),
                                       runner.cfg.model, weights_hash,
                                       runner.cfg.get('default_scope'))
                print_log(f'IGQ: exported the quantized model to {path}', logger='current')
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
        set_quant_state(model, QuantState.READY)
