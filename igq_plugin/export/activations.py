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

# quantizer class -> the ``type`` of its record (``igq`` covers ``igq-fixed`` too)
EXPORTABLE = {IGQQuantizer: 'igq', PerTensorQuantizer: 'per-tensor',
              StaticGroupQuantizer: 'static-group', FixedRangeQuantizer: 'fixed-range'}


def exportable_type(quantizer: ActivationQuantizer, name: str) -> str:
    """The record type of ``quantizer``; refuses a quantizer the file cannot hold."""
    for cls, kind in EXPORTABLE.items():
        if type(quantizer) is cls:
            return kind
    raise ValueError(f'{name}: {type(quantizer).__name__} (method {quantizer.method!r}) cannot '
                     f'be exported: exportable are the methods igq, igq-fixed, per-tensor and '
                     f'static-group (and the fixed pixel range of the first layer)')


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
    if set(tensors) != expected:
        raise ValueError(f'{name}: the file has tensors {sorted(tensors)}; a {kind} '
                         f'quantizer needs {sorted(expected)}')
    wrong = {k: tuple(t.shape) for k, t in tensors.items() if tuple(t.shape) != (size,)}
    if wrong:
        raise ValueError(f'{name}: tensors {wrong} should each have shape ({size},)')
    _check_qparams(tensors, name, record['bits'], prefix)


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
        quantizer.calibrated.fill_(True)
