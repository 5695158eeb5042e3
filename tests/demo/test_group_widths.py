"""tools/group_widths.py on a state written by the core API."""
import torch

from igq_plugin import QuantConfig, calibrate_model, quantize_model
from igq_plugin.nn import export_state

from tests.tool_loader import load_tool

from ..nn.test_reparam import Net, forward


def test_group_widths_of_a_calibrated_state(tmp_path, capsys):
    tool = load_tool('group_widths')
    model = Net()
    quantize_model(model, QuantConfig(method='igq-fixed', groups=4))
    calibrate_model(model, [torch.randn(2, 24, 6, generator=torch.Generator().manual_seed(1))],
                    forward)
    path = tmp_path / 'igq_state.pth'
    torch.save(export_state(model), path)
    found = tool.group_widths(torch.load(path, weights_only=False)['buffers'])
    post_norm = [name for name in found if 'mlp.fc1' in name or 'qkv.input' in name]
    assert post_norm and all(g == 4 and w.shape == (4,) and bool((w >= 0).all())
                             for g, w, _ in found.values())
    for _, _, lost in found.values():  # the share of a range widened to contain 0
        assert bool((lost >= 0).all()) and bool((lost < 1).all())
    assert tool.main([f'toy={path}', '--post-norm', r'(qkv|fc1|reduction)\.input_quantizer\.$',
                      '--wide', '3']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith('| toy | post-LayerNorm inputs | 5 | 4.0 |')
    assert lines[3].startswith('| toy | other channel inputs |')


def test_codes_lost_to_zero_of_one_sided_groups():
    tool = load_tool('group_widths')
    buffers = {'q.candidate_groups': torch.tensor([2]), 'q.groups': torch.tensor(2),
               'q.group_lower': torch.tensor([[-1.0, 5.0]]),
               'q.group_upper': torch.tensor([[1.0, 50.0]])}
    ((groups, width, lost),) = tool.group_widths(buffers).values()
    assert groups == 2
    torch.testing.assert_close(width, torch.tensor([2.0, 45.0]))
    torch.testing.assert_close(lost, torch.tensor([0.0, 0.1]))  # [5, 50] coded as [0, 50]
