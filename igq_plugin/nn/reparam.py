"""RepQ-ViT's scale reparameterisation (docs/method.md, section 8).

The input of a Linear that follows a LayerNorm has a few channels with much wider
ranges than the rest. RepQ-ViT calibrates a per-channel quantizer for it (scales
``s_c``, zero points ``z_c``), then folds the per-channel scales into the LayerNorm's
affine and the Linear's weights, so that one per-tensor quantizer with
``s~ = mean(s_c)``, ``z~ = mean(z_c)`` serves the input (``r_c = s_c / s~``,
``b_c = s~ (z~ - z_c)``)::

    LayerNorm:  gamma' = gamma / r,  beta' = beta / r - b
    Linear:     W'[:, c] = r_c W[:, c],  bias' = bias + W' b

which leaves the float function unchanged (:meth:`RepQQuantizer.fold
<igq_plugin.quantizers.RepQQuantizer.fold>`). The weights are then quantized per output
channel as usual.

Which Linear follows which LayerNorm is read off the module structure of the blocks
this package supports [choice: no graph tracing; an mm or timm block names its parts]:
a transformer block's ``norm1`` / ``ln1`` feeds its attention's ``qkv`` Linear and
``norm2`` / ``ln2`` the first Linear of its MLP (``ffn`` / ``mlp``); a patch merging's
``norm`` feeds its ``reduction``. A LayerNorm output that is zero-padded before the
Linear (Swin's windows on a feature map that the window size does not divide) would
make the fold inexact: a padded token is 0 after the fold, which is ``r * b`` before
it. The folded Linear therefore reads an all-zero token as the padding it is and
replaces it with ``-b``, the fold of 0 [choice: RepQ-ViT's published code leaves
this mismatch; on the demo detector it moved the float neck outputs by a relative
squared error of 0.023].

The fold is recorded only in the quantizer's buffers (and the state file): loading a
state refolds the float weights from them (:func:`apply_folds`), and a new calibration
first restores the float weights (:func:`restore_folds`). A quantized-model file holds
the folded parameters themselves; loading it only marks the folds applied
(:func:`add_fold_biases`, :func:`mark_folds_applied`).
"""
from __future__ import annotations

import torch
from torch import nn

from .lifecycle import quantization_record, require_record

# (norm child, branch children, what in the branch takes the norm's output)
_BLOCK_PATTERNS = (
    (('norm1', 'ln1'), ('attn',), 'qkv'),
    (('norm2', 'ln2'), ('ffn', 'mlp'), 'first'),
    (('norm',), ('reduction',), 'self'),
)
# Branch classes whose structure the patterns assume (any class in the MRO): mmcv's FFN,
# timm's Mlp, the Swin / ViT attention modules of mmdet, mmseg and timm.
_KNOWN_BRANCHES = {'FFN', 'Mlp', 'ShiftWindowMSA', 'WindowMSA', 'WindowAttention',
                   'Attention', 'MultiheadAttention', 'Linear'}


def _class_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def _target(branch_name: str, branch: nn.Module, rule: str) -> str | None:
    """Name (relative to the block) of the projection that takes the norm's output:
    a Linear, or an ``nn.MultiheadAttention`` (its fused ``in_proj``)."""
    if not _class_names(branch) & _KNOWN_BRANCHES:
        return None
    if rule == 'self':
        return branch_name if isinstance(branch, nn.Linear) else None
    for name, module in branch.named_modules():
        if rule == 'qkv' and isinstance(module, nn.MultiheadAttention):
            return f'{branch_name}.{name}' if name else branch_name
        if isinstance(module, nn.Linear) and (rule == 'first' or name.rpartition('.')[2] == 'qkv'):
            return f'{branch_name}.{name}'
    return None


def _projection(module: nn.Module) -> tuple[nn.Module, str, str]:
    """``(input quantizer, weight attribute, bias attribute)`` of a folded projection."""
    if isinstance(module, nn.MultiheadAttention):
        return module.in_proj_input_quantizer, 'in_proj_weight', 'in_proj_bias'
    return module.input_quantizer, 'weight', 'bias'


def post_norm_linears(model: nn.Module) -> dict[str, str]:
    """``{projection name: layernorm name}`` of every Linear (or fused attention input
    projection) fed by a LayerNorm's output.

    Only LayerNorms with an affine (``gamma``, ``beta``) can take the fold.

    Example:
        >>> import timm
        >>> vit = timm.create_model('vit_tiny_patch16_224', depth=1)  # doctest: +SKIP
        >>> post_norm_linears(vit)  # doctest: +SKIP
        {'blocks.0.attn.qkv': 'blocks.0.norm1', 'blocks.0.mlp.fc1': 'blocks.0.norm2'}
    """
    pairs = {}
    for block_name, block in model.named_modules():
        children = dict(block.named_children())
        prefix = f'{block_name}.' if block_name else ''
        for norm_keys, branch_keys, rule in _BLOCK_PATTERNS:
            norm_key = next((k for k in norm_keys if k in children), None)
            norm = children.get(norm_key)
            if not isinstance(norm, nn.LayerNorm) or norm.weight is None or norm.bias is None:
                continue
            for branch_key in branch_keys:
                if branch_key in children:
                    target = _target(branch_key, children[branch_key], rule)
                    if target is not None:
                        pairs[prefix + target] = prefix + norm_key
                    break
    return pairs


def _set_padding_token(linear: nn.Module, shift: torch.Tensor, config) -> None:
    """Let a folded ``QuantLinear`` read an all-zero token as the fold of 0 (see the
    module doc), unless the study switch ``repq_published`` asks for the published
    behaviour."""
    if hasattr(linear, 'fold_padding') and 'padding' not in config.repq_published:
        linear.fold_padding = -shift


def fold_bias_names(model: nn.Module) -> dict[str, str]:
    """``{bias parameter name: weight parameter name}`` of every folded projection
    (``L.bias: L.weight``, ``M.in_proj_bias: M.in_proj_weight``)."""
    names = {}
    for name in require_record(model).folds:
        _, weight_attr, bias_attr = _projection(model.get_submodule(name))
        names[f'{name}.{bias_attr}'] = f'{name}.{weight_attr}'
    return names


def restore_folds(model: nn.Module) -> None:
    """Put back the float LayerNorm / Linear parameters of every applied fold, and mark
    the folding quantizers unfolded."""
    record = quantization_record(model)
    if record is None:
        return
    for linear_name in record.folds:  # the float weights: no quantizer is folded
        quantizer = _projection(model.get_submodule(linear_name))[0]
        if hasattr(quantizer, 'folded'):
            quantizer.folded.fill_(False)
    if not record.fold_originals:
        return
    for linear_name in record.folds:
        linear = model.get_submodule(linear_name)
        if getattr(linear, 'fold_padding', None) is not None:
            linear.fold_padding = None
    with torch.no_grad():
        for name, original in record.fold_originals.items():
            module_name, _, attr = name.rpartition('.')
            module = model.get_submodule(module_name)
            if original is None:  # a bias the fold created
                setattr(module, attr, None)
                if name in record.fold_biases:
                    record.fold_biases.remove(name)
            else:
                getattr(module, attr).copy_(original)
    record.fold_originals.clear()


def apply_folds(model: nn.Module) -> int:
    """Fold every calibrated post-LayerNorm quantizer of ``model`` into its weights.

    Every calibrated folding quantizer (``repq``, ``igq-reparam``) is folded from its
    buffers (``fold()``), whether just calibrated or loaded from a state. A model is
    folded at most once: earlier folds are restored first.

    Returns:
        The number of folds applied.
    """
    record = quantization_record(model)
    if record is None or not record.folds:
        return 0
    restore_folds(model)
    originals = record.fold_originals
    applied = 0
    with torch.no_grad():
        for linear_name, norm_name in record.folds.items():
            linear, norm = model.get_submodule(linear_name), model.get_submodule(norm_name)
            quantizer, weight_attr, bias_attr = _projection(linear)
            if not bool(quantizer.calibrated):
                continue
            ratio, shift = quantizer.fold()  # from the calibrated (or loaded) buffers
            for module_name, module, attr in ((norm_name, norm, 'weight'),
                                              (norm_name, norm, 'bias'),
                                              (linear_name, linear, weight_attr),
                                              (linear_name, linear, bias_attr)):
                value = getattr(module, attr)
                originals[f'{module_name}.{attr}'] = None if value is None else value.detach().clone()
            ratio = ratio.to(norm.weight)
            shift = shift.to(norm.weight)
            norm.weight.div_(ratio)
            norm.bias.div_(ratio).sub_(shift)
            weight = getattr(linear, weight_attr)  # [out, C]
            weight.mul_(ratio)
            compensation = weight @ shift
            _set_padding_token(linear, shift, record.config)
            if getattr(linear, bias_attr) is None:
                setattr(linear, bias_attr, nn.Parameter(compensation))
                record.fold_biases.append(f'{linear_name}.{bias_attr}')
            else:
                getattr(linear, bias_attr).add_(compensation)
            applied += 1
    return applied


def add_fold_biases(model: nn.Module, names: list[str]) -> None:
    """Give each folded projection in ``names`` (bias parameter names, from
    :func:`fold_bias_names`) the bias a fold adds where the float model has none, as
    zeros, so that a loaded file's values can be copied into it.

    Raises:
        ValueError: a name that is not the bias of a folded projection (nothing changed).
    """
    record, weights = require_record(model), fold_bias_names(model)
    unknown = [name for name in names if name not in weights]
    if unknown:
        raise ValueError(f'{unknown[:3]} are not biases of folded projections; this model '
                         f'has {sorted(weights)[:3]}...')
    for name in names:
        module_name, _, bias_attr = name.rpartition('.')
        projection = model.get_submodule(module_name)
        if getattr(projection, bias_attr) is None:
            weight = model.get_parameter(weights[name])
            setattr(projection, bias_attr, nn.Parameter(weight.new_zeros(weight.shape[0])))
        if name not in record.fold_biases:
            record.fold_biases.append(name)


def mark_folds_applied(model: nn.Module) -> int:
    """Mark the folds of a model whose parameters already hold them (a loaded
    quantized-model file) as applied: every calibrated folding quantizer is marked
    folded and its projection gets the padding token of its fold. No parameter changes,
    and no float parameter is kept (:func:`restore_folds` has nothing to restore).

    Returns:
        The number of folds marked.
    """
    record = quantization_record(model)
    if record is None:
        return 0
    marked = 0
    for linear_name in record.folds:
        linear = model.get_submodule(linear_name)
        quantizer = _projection(linear)[0]
        if not bool(quantizer.calibrated):
            continue
        _, shift = quantizer.fold()
        _set_padding_token(linear, shift, record.config)
        marked += 1
    return marked
