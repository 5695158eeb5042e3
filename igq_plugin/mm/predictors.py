"""Class distributions the sensitivity search compares (docs/method.md, section 5).

For two-stage detectors the KL is taken per RoI over the RoI head's class scores,
with the float model's proposals (and, for Cascade R-CNN, the float model's refined
RoIs of every stage, the scores averaged over stages as Cascade's own inference
does). For segmentors, per pixel over the decode head's class scores.

Each predictor is prepared once in float mode on the calibration images and then
called for every (layer, G) of the search; only the feature extractor and the
RoI classification branch (or the decode head) run, never the RPN. Both implement
:class:`~igq_plugin.search.SensitivityPredictor`: ``predict(layer)`` recomputes only
what the named layer can change: for a backbone layer the whole feature extractor,
for a neck layer the neck (on the cached float backbone outputs), for a head layer
the head (on the cached float neck outputs). Both also implement
:class:`~igq_plugin.search.FisherPredictor`: ``log_probs()``
gives the same distributions' log-probabilities from a full differentiable forward
(the ``'fisher'`` estimator).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..quant import QuantMode, quant_mode
from .roi_matrix import FixedRoIExtractor, supports


class FloatFeatures:
    """Neck outputs of the calibration images when only one layer may differ from float.

    Built in float mode. With ``reuse`` the float outputs of the backbone and of the
    neck are cached: a neck layer reruns the neck on the cached backbone outputs, a
    head layer (``head_prefix``) gets the cached neck outputs; a backbone layer runs
    the whole feature extractor.

    Args:
        model: an mm detector or segmentor (``backbone``, optional ``neck``).
        images: one preprocessed ``[1, 3, H, W]`` image per calibration image.
        reuse: cache float outputs; ``False``: every call is a full forward.
        head_prefix: name prefix of the head that consumes the neck outputs.
    """

    def __init__(self, model: nn.Module, images: Sequence[torch.Tensor], reuse: bool,
                 head_prefix: str):
        self.model, self.images, self.reuse = model, list(images), reuse
        self.head_prefix = head_prefix
        with torch.no_grad(), quant_mode(model, QuantMode.FLOAT):
            self.backbone_outputs = [tuple(model.backbone(image)) for image in self.images]
            self.floats = [self._neck(outputs) for outputs in self.backbone_outputs]

    def _neck(self, backbone_outputs) -> tuple[torch.Tensor, ...]:
        model = self.model
        return tuple(model.neck(backbone_outputs)) if model.with_neck else tuple(backbone_outputs)

    def __call__(self, index: int, layer: str | None) -> tuple[torch.Tensor, ...]:
        """Neck outputs of calibration image ``index`` when only ``layer`` may differ
        from float (``None``: anything may; full forward)."""
        if self.reuse and layer is not None:
            if layer.startswith('neck.'):
                return self._neck(self.backbone_outputs[index])
            if layer.startswith(self.head_prefix):
                return self.floats[index]
        return tuple(self.model.extract_feat(self.images[index]))


class RoIClassPredictor:
    """Per-RoI class probabilities of a two-stage detector on fixed float RoIs.

    Args:
        model: an mmdet ``TwoStageDetector`` (``extract_feat``, ``rpn_head``,
            ``roi_head``) with ``StandardRoIHead`` or ``CascadeRoIHead``.
        batches: preprocessed calibration batches, one image each:
            ``dict(inputs=[1, 3, H, W] tensor, data_samples=[DetDataSample])``.
        reuse_prefix: let :meth:`predict` reuse cached float outputs (see
            :class:`FloatFeatures`), and pool the fixed RoIs with precomputed RoIAlign
            matrices (see :mod:`.roi_matrix`; same values up to float summation order).
            ``False``: every call is a full forward with mmcv's RoIAlign, the naive
            search.
        search_rois: keep only the float model's ``search_rois`` best-scored proposals
            per image (the RPN returns them in descending score order); ``None`` keeps all
            of them (``test_cfg.rpn.max_per_img``, 1000 in mmdet's configs), the method
            definition. Fewer RoIs make every evaluation cheaper; the KL is then
            averaged over those RoIs only.
    """

    def __init__(self, model: nn.Module, batches: Sequence[dict], reuse_prefix: bool = True,
                 search_rois: int | None = None):
        from mmdet.structures.bbox import bbox2roi
        self.model = model
        self.batches = batches
        self.reuse_prefix = reuse_prefix
        self.search_rois = check_search_rois(search_rois)
        self.stage_rois: list[list[torch.Tensor]] = []
        self.features = FloatFeatures(model, [b['inputs'] for b in batches], reuse_prefix,
                                      'roi_head.')
        # per image, per RoI stage: the stage's RoI pooling on its fixed float RoIs
        self.fixed_extractors: list[list[FixedRoIExtractor]] | None = None
        with torch.no_grad(), quant_mode(model, QuantMode.FLOAT):
            for batch, feats in zip(batches, self.features.floats):
                proposals = model.rpn_head.predict(feats, batch['data_samples'], rescale=False)
                rois = bbox2roi([p.bboxes[:search_rois] for p in proposals])
                self.stage_rois.append(self._float_stage_rois(feats, rois, batch['data_samples']))
            if reuse_prefix and self._linear_pooling():
                self.fixed_extractors = [
                    [self._fixed_extractor(stage, rois, feats)
                     for stage, rois in enumerate(stage_rois)]
                    for feats, stage_rois in zip(self.features.floats, self.stage_rois)]

    @property
    def cascade(self) -> bool:
        return hasattr(self.model.roi_head, 'num_stages')

    def _float_stage_rois(self, feats, rois, data_samples) -> list[torch.Tensor]:
        """RoIs of every stage as the float model refines them: ``[[R, 5], ...]``."""
        if not self.cascade:
            return [rois]
        from mmdet.structures.bbox import get_box_tensor
        head = self.model.roi_head
        all_rois = [rois]
        for stage in range(head.num_stages - 1):
            scores, deltas = self._bbox_outputs(stage, feats, rois)
            bbox_head = head.bbox_head[stage]
            if bbox_head.custom_activation:
                scores = bbox_head.loss_cls.get_activation(scores)
            labels = scores[:, :-1].argmax(dim=1)
            boxes = bbox_head.regress_by_class(rois[:, 1:], labels, deltas,
                                               data_samples[0].metainfo)
            rois = torch.cat([rois[:, :1], get_box_tensor(boxes)], dim=1)
            all_rois.append(rois)
        return all_rois

    def _stage_parts(self, stage: int) -> tuple[nn.Module, nn.Module]:
        """``(bbox_roi_extractor, bbox_head)`` of RoI stage ``stage``."""
        head = self.model.roi_head
        if not self.cascade:
            return head.bbox_roi_extractor, head.bbox_head
        return head.bbox_roi_extractor[stage], head.bbox_head[stage]

    def _bbox_outputs(self, stage: int, feats, rois) -> tuple[torch.Tensor, torch.Tensor]:
        """``(class scores [R, K + 1], box deltas)`` of RoI stage ``stage``, pooled by
        mmcv's RoIAlign: the stage's RoI extractor, the shared head if any, then its
        box head (what mmdet's RoI heads run at test time)."""
        extractor, bbox_head = self._stage_parts(stage)
        pooled = extractor(feats[:extractor.num_inputs], rois)
        if getattr(self.model.roi_head, 'with_shared_head', False):
            pooled = self.model.roi_head.shared_head(pooled)
        return bbox_head(pooled)[:2]

    def _linear_pooling(self) -> bool:
        """Whether every stage pools with average RoIAlign straight into its box head."""
        head = self.model.roi_head
        if getattr(head, 'with_shared_head', False):
            return False
        stages = head.num_stages if self.cascade else 1
        return all(supports(self._stage_parts(stage)[0]) for stage in range(stages))

    def _fixed_extractor(self, stage: int, rois: torch.Tensor, feats) -> FixedRoIExtractor:
        extractor = self._stage_parts(stage)[0]
        shapes = [tuple(f.shape[-2:]) for f in feats[:extractor.num_inputs]]
        return FixedRoIExtractor(extractor, rois, shapes)

    def _stage_scores(self, index: int, stage: int, feats, rois,
                      mmcv_pooling: bool = False) -> torch.Tensor:
        """Class scores ``[R, K + 1]`` of RoI stage ``stage`` on image ``index``."""
        if self.fixed_extractors is None or mmcv_pooling:
            return self._bbox_outputs(stage, feats, rois)[0]
        extractor, bbox_head = self._stage_parts(stage)
        pooled = self.fixed_extractors[index][stage](feats[:extractor.num_inputs])
        return bbox_head(pooled)[0]

    def _scores(self, index: int, feats, mmcv_pooling: bool = False) -> torch.Tensor:
        """Class scores of image ``index``, averaged over the stages (Cascade)."""
        scores = [self._stage_scores(index, stage, feats, rois, mmcv_pooling)
                  for stage, rois in enumerate(self.stage_rois[index])]
        return scores[0] if len(scores) == 1 else sum(scores) / len(scores)

    def log_probs(self) -> Iterator[torch.Tensor]:
        """Per calibration image, differentiable ``[R_i, num_classes + 1]``
        log-probabilities of :meth:`predict` ``(None)``'s distributions: a full
        feature forward, then the class scores on the fixed float RoIs of every stage
        (averaged over Cascade's stages); gradients reach every activation of the
        backbone, neck and box heads through the pooling (the precomputed RoIAlign
        matrices, or mmcv's RoIAlign)."""
        for index, image in enumerate(self.features.images):
            scores = self._scores(index, tuple(self.model.extract_feat(image)))
            yield F.log_softmax(scores.float(), dim=-1)

    def predict(self, layer: str | None) -> list[torch.Tensor]:
        """One ``[R_i, num_classes + 1]`` probability tensor per calibration image when
        only ``layer`` (a module name relative to the model; ``None``: any layer) may
        differ from float."""
        outputs = []
        with torch.no_grad():
            # a quantized box-head layer sees the pooled features themselves: pooled by
            # mmcv, as in the naive search, a last-bit difference cannot move a value
            # across a rounding boundary (a mask-head layer does not change the scores:
            # pooled as the reference, its KL is exactly 0)
            mmcv_pooling = layer is not None and layer.startswith('roi_head.bbox_head')
            for index in range(len(self.stage_rois)):
                feats = self.features(index, layer)
                scores = self._scores(index, feats, mmcv_pooling)
                outputs.append(F.softmax(scores.float(), dim=-1))
        return outputs


class PixelClassPredictor:
    """Per-pixel class probabilities of an mmseg ``EncoderDecoder``.

    The KL is taken at the resolution of the decode head's logits (``[K, H/4, W/4]``
    for UperNet), not of the image: the head computes every class score there, and the
    bilinear upsampling that ``encode_decode`` adds is a fixed smoothing of those scores
    that only multiplies the pixels (16x for UperNet) without adding information.

    Args:
        model: an mmseg ``EncoderDecoder`` (``extract_feat``, ``decode_head``).
        batches: preprocessed calibration batches, one image each.
        reuse_prefix: reuse cached float activations (see :class:`FloatFeatures`).
    """

    def __init__(self, model: nn.Module, batches: Sequence[dict], reuse_prefix: bool = True):
        self.model = model
        self.features = FloatFeatures(model, [b['inputs'] for b in batches], reuse_prefix,
                                      'decode_head.')

    def log_probs(self) -> Iterator[torch.Tensor]:
        """Per calibration image, differentiable ``[h * w, num_classes]``
        log-probabilities of :meth:`predict` ``(None)``'s distributions (a full
        forward of the backbone, neck and decode head)."""
        for image in self.features.images:
            logits = self.model.decode_head(list(self.model.extract_feat(image)))  # [1, K, h, w]
            yield F.log_softmax(logits.float(), dim=1).flatten(2)[0].T

    def predict(self, layer: str | None) -> list[torch.Tensor]:
        """One ``[h * w, num_classes]`` probability tensor per calibration image when only
        ``layer`` may differ from float (``None``: any layer)."""
        outputs = []
        with torch.no_grad():
            for index in range(len(self.features.images)):
                logits = self.model.decode_head(list(self.features(index, layer)))  # [1, K, h, w]
                outputs.append(F.softmax(logits.float(), dim=1).flatten(2)[0].T)
        return outputs


def check_search_rois(search_rois: int | None) -> int | None:
    """Validate the RoI count of the sensitivity search (``None`` or a positive int)."""
    if search_rois is not None and (isinstance(search_rois, bool)
                                    or not isinstance(search_rois, int) or search_rois < 1):
        raise ValueError(f'search_rois={search_rois!r}: allowed are None (every proposal of '
                         f'the float model) or a positive integer')
    return search_rois


def check_predictable(model: nn.Module, search_rois: int | None = None) -> None:
    """Raise before any long work unless the search can measure ``model``.

    Raises:
        TypeError: a model without a RoI head or a decode head, or ``search_rois``
            given for a segmentor.
    """
    if hasattr(model, 'roi_head') and hasattr(model, 'rpn_head'):
        return
    if hasattr(model, 'encode_decode'):
        if check_search_rois(search_rois) is not None:
            raise TypeError(f'search_rois={search_rois!r} applies to two-stage detectors; '
                            f'{type(model).__name__} is a segmentor (per-pixel KL): '
                            f'leave it None')
        return
    raise TypeError(f'group-size allocation needs a two-stage detector (RoI class scores) '
                    f'or a segmentor; got {type(model).__name__}. Use method="igq-fixed".')


def build_predictor(model: nn.Module, batches: Sequence[dict], reuse_prefix: bool = True,
                    search_rois: int | None = None):
    """The predictor matching the model family (``reuse_prefix``, ``search_rois``: see
    :class:`RoIClassPredictor`).

    Raises:
        TypeError: see :func:`check_predictable`.
    """
    check_predictable(model, search_rois)
    if hasattr(model, 'roi_head'):
        return RoIClassPredictor(model, batches, reuse_prefix, search_rois)
    return PixelClassPredictor(model, batches, reuse_prefix)
