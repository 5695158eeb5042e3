"""tools/executor_check.py's count of group choices near a tie, on a tiny detector."""
import pytest
import torch

pytest.importorskip('mmdet')
from mmengine.registry import MODELS, init_default_scope  # noqa: E402

from igq_plugin.grouping import assign_covering  # noqa: E402
from igq_plugin.mm import calibrate_mm_model, quantize_mm_model  # noqa: E402

from tests.mm.tiny_models import tiny_batches, tiny_model_cfg  # noqa: E402
from tests.tool_loader import load_tool  # noqa: E402

FC2 = 'backbone.stages.0.blocks.0.ffn.layers.1'


def test_near_ties_counts_the_choices_a_rounding_can_flip():
    tool = load_tool('executor_check')
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(quant=dict(method='igq-fixed', w_bits=4, a_bits=4,
                                                   groups=4, candidates=(1, 4)))).eval()
    quantize_mm_model(model)
    batches = tiny_batches(model, 2)
    calibrate_mm_model(model, batches[:1], progress=None)
    def ties():  # the layers' inputs captured anew: changed bounds move later layers
        return tool.near_ties(model, tool.layer_inputs(model, batches[1:]))

    counts = ties()
    assert set(counts) <= {kind for kind, _ in tool._LAYER_KINDS}
    assert all(items > 0 and 0 <= near <= items for items, near in counts.values())
    # put the lower bound of an item's group exactly on the item's minimum, where a wider
    # group also covers it: that choice is then a tie
    layer = model.get_submodule(FC2)
    quantizer = layer.input_quantizer
    seen = []
    handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        model(**batches[1], mode='predict')
    handle.remove()
    lower, upper = (r.reshape(-1) for r in quantizer.item_ranges(seen[0]))
    group_lower, group_upper = quantizer.active_ranges()
    choice = assign_covering(lower, upper, group_lower, group_upper)
    widest = int(torch.argmax(group_upper - group_lower))
    tie = ((choice != widest) & (group_lower[widest] < lower)
           & (upper <= group_upper[widest])).nonzero()
    assert len(tie), 'no item to put on a tie'
    item = int(tie[0])
    row = quantizer.candidates.index(int(quantizer.groups))
    before = ties()['MLP fc2 (after GELU)'][1]
    quantizer.group_lower[row, int(choice[item])] = lower[item]
    after = ties()['MLP fc2 (after GELU)'][1]
    assert after > before
