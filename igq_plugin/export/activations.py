"""The activation side of a quantized-model file: each quantizer's run-time tables.

No existing format holds IGQ's activations whole: their groups are assigned per
instance at run time. Every activation quantizer ``Q`` (by module name) is written
as a few small documented tensors plus a JSON record of how to use them:

==================  ==============================  ===================================
quantizer           tensors (``Q.<name>``)          record
==================  ==============================  ===================================
``igq``             ``group_lower``, ``group_upper``  ``groups`` G, ``assignment``
                    ``[G]`` float32: the groups'      (``'cover'``: the narrowest group
                    quantization ranges;              whose range contains the item's
                    ``group_scale`` ``[G]`` float32,  range on this instance, else the
                    ``group_zero_point`` ``[G]``      one that clips least; ``'nearest'``:
                    int32; ``nearest``: also          the nearest centre by
                    ``centre_lower/upper`` ``[G]``    ``distance``), ``kind``
                                                      (``'channel'``/``'softmax'``),
                                                      ``channel_dim``
``per-tensor``      ``lower``, ``upper``, ``scale``,  --
                    ``zero_point``: ``[1]``
``static-group``,   ``lower``, ``upper``, ``scale``,  ``channel_dim``
``fixed-range``     ``zero_point``: ``[C]`` (one
                    quantizer per channel)
==================  ==============================  ===================================

An ``igq`` quantizer of ``method='igq-reparam'`` on a post-LayerNorm input also has
``fold_ratio`` and ``fold_shift`` ``[C]`` float32 (its fold ``x' = x / r - b``) and
``fold: true`` in its record. The fold itself is already in the file's LayerNorm and
projection parameters, so a consumer quantizes the input it receives as any ``igq``
input; the two tensors let a reloaded model be re-calibrated or compared.

Every record also has ``type``, ``bits`` and ``channels``. Scales and zero points are
redundant with the bounds (``qparams_from_bounds``) and written for consumers that do
not re-derive them; the loader checks that they agree, which catches a file edited or
corrupted in one place.
"""
from __future__ import annotations

from typing import Any

import torch

from ..quant.primitives import qparams_from_bounds
from ..quantizers import (ActivationQuantizer, FixedRangeQuantizer, IGQQuantizer,
                          PerTensorQuantizer, StaticGroupQuantizer)

FOLD_TENSORS = ('fold_ratio', 'fold_shift')
# quantizer class -> the ``type`` of its record (``igq`` covers ``igq-fixed`` and
# ``igq-reparam`` too)
EXPORTABLE = {IGQQuantizer: 'igq', PerTensorQuantizer: 'per-tensor',
              StaticGroupQuantizer: 'static-group', FixedRangeQuantizer: 'fixed-range'}


def exportable_type(quantizer: ActivationQuantizer, name: str) -> str:
    """The record type of ``quantizer``; refuses a quantizer the file cannot hold."""
    for cls, kind in EXPORTABLE.items():
        if type(quantizer) is cls:
            return kind
    raise ValueError(f'{name}: {type(quantizer).__name__} (method {quantizer.method!r}) cannot '
                     f'be exported: exportable are the methods igq, igq-reparam, igq-fixed, '
                     f'per-tensor and static-group (and the fixed pixel range of the first '
                     f'layer)')


def _with_qparams(lower: torch.Tensor, upper: torch.Tensor, bits: int,
                  prefix: str = '') -> dict[str, torch.Tensor]:
    lower, upper = (bound.detach().float().cpu().reshape(-1) for bound in (lower, upper))
    scale, zero = qparams_from_bounds(lower, upper, bits)
    return {f'{prefix}lower': lower.clone(), f'{prefix}upper': upper.clone(),
            f'{prefix}scale': scale, f'{prefix}zero_point': zero.to(torch.int32)}


def activation_entry(quantizer: ActivationQuantizer, name: str
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, record)`` of one calibrated quantizer; tensor names are relative."""
    kind = exportable_type(quantizer, name)
    if not bool(quantizer.calibrated):
        raise ValueError(f'{name}: the quantizer is not calibrated; calibrate the model '
                         f'(or load a calibrated state) before exporting it')
    record = dict(type=kind, bits=quantizer.bits, channels=quantizer.channels,
                  kind=quantizer.kind, channel_dim=quantizer.channel_dim)
    if kind == 'igq':
        lower, upper = quantizer.active_ranges()
        tensors = _with_qparams(lower, upper, quantizer.bits, prefix='group_')
        record.update(groups=int(quantizer.groups), assignment=quantizer.assignment,
                      distance=quantizer.distance)
        if quantizer.assignment == 'nearest':
            centre_lower, centre_upper = quantizer.active_centres()
            tensors.update(centre_lower=centre_lower.detach().float().cpu().clone(),
                           centre_upper=centre_upper.detach().float().cpu().clone())
        if quantizer.post_norm:
            if not bool(quantizer.folded):
                raise ValueError(f'{name}: its LayerNorm fold is not applied to the weights; '
                                 f'calibrate the model (or load its state) before exporting')
            ratio, shift = quantizer.fold_factors()
            tensors.update(fold_ratio=ratio.detach().float().cpu().clone(),
                           fold_shift=shift.detach().float().cpu().clone())
            record.update(fold=True)
        return tensors, record
    if kind == 'per-tensor':
        return _with_qparams(quantizer.lower, quantizer.upper, quantizer.bits), record
    if kind == 'static-group':
        record.update(groups=quantizer.groups)
        return _with_qparams(quantizer.channel_lower, quantizer.channel_upper,
                             quantizer.bits), record
    return _with_qparams(quantizer.lower, quantizer.upper, quantizer.bits), record


def _check_record(quantizer: ActivationQuantizer, name: str, record: dict) -> None:
    kind = exportable_type(quantizer, name)
    own = dict(type=kind, bits=quantizer.bits, channels=quantizer.channels,
               kind=quantizer.kind, channel_dim=quantizer.channel_dim)
    if kind == 'igq':
        own.update(assignment=quantizer.assignment, distance=quantizer.distance)
    differ = {k: (record.get(k), v) for k, v in own.items() if record.get(k) != v}
    if kind == 'igq' and record.get('fold', False) != quantizer.post_norm:
        differ['fold'] = (record.get('fold', False), quantizer.post_norm)
    if differ:
        raise ValueError(f'{name}: the file quantizes it differently from this model '
                         f'(file, model): {differ}')
    if kind == 'igq' and record['groups'] not in quantizer.candidates:
        raise ValueError(f'{name}: the file has G={record["groups"]}; this model\'s '
                         f'quantizer allows {quantizer.candidates}')


def _check_qparams(tensors: dict[str, torch.Tensor], name: str, bits: int,
                   prefix: str = '') -> None:
    scale, zero = qparams_from_bounds(tensors[f'{prefix}lower'], tensors[f'{prefix}upper'], bits)
    if not (torch.equal(scale, tensors[f'{prefix}scale'].float())
            and torch.equal(zero, tensors[f'{prefix}zero_point'].float())):
        raise ValueError(f'{name}: the stored scales / zero points do not match the stored '
                         f'ranges; the file is corrupt or was edited')


def check_activation_entry(quantizer: ActivationQuantizer, name: str,
                           tensors: dict[str, torch.Tensor], record: dict) -> None:
    """Check one quantizer's entry against the model's quantizer (nothing is changed).

    Raises:
        ValueError: another quantizer type, bit-width, channel count or rule, a G the
            quantizer was not built for, tensors of the wrong shape, or scales that do
            not follow from the ranges.
    """
    _check_record(quantizer, name, record)
    kind = record['type']
    if kind == 'igq':
        size, prefix = record['groups'], 'group_'
        expected = {f'group_{k}' for k in ('lower', 'upper', 'scale', 'zero_point')}
        if record['assignment'] == 'nearest':
            expected |= {'centre_lower', 'centre_upper'}
    else:
        # per-tensor: one range; static-group / fixed-range: one per channel (a static
        # group over softmax rows is one range too)
        size = {'per-tensor': 1, 'static-group': getattr(quantizer, 'channel_lower', None),
                'fixed-range': getattr(quantizer, 'lower', None)}[kind]
        size, prefix = (size if isinstance(size, int) else size.numel()), ''
        expected = {'lower', 'upper', 'scale', 'zero_point'}
    fold = set(FOLD_TENSORS) if record.get('fold') else set()
    if set(tensors) != expected | fold:
        raise ValueError(f'{name}: the file has tensors {sorted(tensors)}; a {kind} '
                         f'quantizer needs {sorted(expected | fold)}')
    wrong = {k: tuple(t.shape) for k, t in tensors.items()
             if k in expected and tuple(t.shape) != (size,)}
    if wrong:
        raise ValueError(f'{name}: tensors {wrong} should each have shape ({size},)')
    _check_qparams(tensors, name, record['bits'], prefix)
    if fold:
        _check_fold(tensors, name, quantizer.channels)


def _check_fold(tensors: dict[str, torch.Tensor], name: str, channels: int) -> None:
    ratio, shift = (tensors[k] for k in FOLD_TENSORS)
    if tuple(ratio.shape) != (channels,) or tuple(shift.shape) != (channels,):
        raise ValueError(f'{name}: fold_ratio {tuple(ratio.shape)} and fold_shift '
                         f'{tuple(shift.shape)} should each have shape ({channels},)')
    if not (bool(torch.isfinite(ratio).all()) and bool((ratio > 0).all())
            and bool(torch.isfinite(shift).all())):
        raise ValueError(f'{name}: fold_ratio must be finite and positive, fold_shift finite')


def restore_activation_entry(quantizer: ActivationQuantizer, tensors: dict[str, torch.Tensor],
                             record: dict) -> None:
    """Set a quantizer's parameters from a checked entry (:func:`check_activation_entry`)."""
    kind = record['type']
    with torch.no_grad():
        if kind == 'igq':
            quantizer.set_groups(record['groups'])
            row, groups = quantizer.candidates.index(record['groups']), record['groups']
            pairs = [('group_lower', 'group_lower'), ('group_upper', 'group_upper')]
            if record['assignment'] == 'nearest':
                pairs += [('centre_lower', 'centre_lower'), ('centre_upper', 'centre_upper')]
            else:  # not used by the 'cover' rule; the bounds keep re-export identical
                pairs += [('centre_lower', 'group_lower'), ('centre_upper', 'group_upper')]
            for buffer, key in pairs:
                getattr(quantizer, buffer)[row].zero_()
                getattr(quantizer, buffer)[row, :groups] = tensors[key]
        elif kind == 'per-tensor':
            quantizer.lower.copy_(tensors['lower'].reshape(()))
            quantizer.upper.copy_(tensors['upper'].reshape(()))
        elif kind == 'static-group':
            quantizer.channel_lower.copy_(tensors['lower'])
            quantizer.channel_upper.copy_(tensors['upper'])
        else:
            quantizer.set_range(tensors['lower'], tensors['upper'])
        if record.get('fold'):  # marked applied by nn.mark_folds_applied (the caller)
            quantizer.fold_ratio.copy_(tensors['fold_ratio'])
            quantizer.fold_shift.copy_(tensors['fold_shift'])
        quantizer.calibrated.fill_(True)
