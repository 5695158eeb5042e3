"""tools/weight_columns.py on a variant made by the pretrained-like rescaling."""
import pytest
import torch
from torch import nn

from igq_demo.pretrained_like import OutlierProfile, add_channel_outliers
from tests.tool_loader import load_tool


class Attention(nn.Module):
    """An attention branch as the rescaling recognises it (its input projection only)."""

    def __init__(self, channels: int):
        super().__init__()
        self.qkv = nn.Linear(channels, 3 * channels)


class Block(nn.Module):
    """One LayerNorm -> Linear pair, named as in a Swin / ViT block."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.attn = Attention(channels)


def checkpoints(tmp_path, profile: OutlierProfile) -> tuple[str, str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = Block()
    plain = tmp_path / 'plain.pth'
    torch.save({'state_dict': model.state_dict()}, plain)
    (factors,) = add_channel_outliers(model, profile).values()
    variant = tmp_path / 'variant.pth'
    torch.save({'state_dict': model.state_dict()}, variant)
    return str(plain), str(variant), factors


def test_outlier_columns_are_erased_by_4_bit_rows(tmp_path, capsys):
    tool = load_tool('weight_columns')
    profile = OutlierProfile(fraction=0.1, low=20.0, high=40.0, sigma=0.0)
    plain, variant, factors = checkpoints(tmp_path, profile)
    found = tool.rescaled_linears(tool.load_state(plain), tool.load_state(variant))
    assert list(found) == ['backbone.attn.qkv.weight']
    torch.testing.assert_close(found['backbone.attn.qkv.weight'], factors, rtol=1e-5, atol=0)
    rows = {(r['checkpoint'], r['columns']): r
            for r in tool.summarize(tool.load_state(plain), tool.load_state(variant), 4, 10.0)}
    assert rows['variant', 'outlier']['count'] == round(0.1 * 64)
    # a column 20-40x smaller than its row is below half a 4-bit step: every code is 0
    assert rows['variant', 'outlier']['zero_codes'] == 1.0
    assert rows['variant', 'outlier']['column_error'] == pytest.approx(1.0)
    # the plain model's same columns keep their values to about a step's error
    assert rows['plain', 'outlier']['zero_codes'] < 0.3
    assert rows['plain', 'outlier']['column_error'] < 0.2
    assert tool.main([plain, variant]) == 0
    assert '| variant | outlier (f >= 10) | 6 | 100.0% |' in capsys.readouterr().out


def test_a_checkpoint_that_is_not_a_variant_is_refused(tmp_path, capsys):
    tool = load_tool('weight_columns')
    plain, _, _ = checkpoints(tmp_path, OutlierProfile())
    assert tool.main([plain, plain]) == 2
    assert 'no Linear of the second checkpoint has rescaled columns' in capsys.readouterr().err


def test_a_missing_checkpoint_is_named(tmp_path, capsys):
    tool = load_tool('weight_columns')
    plain, _, _ = checkpoints(tmp_path, OutlierProfile())
    missing = str(tmp_path / 'nowhere.pth')
    assert tool.main([plain, missing]) == 2
    assert f'checkpoint {missing!r} does not exist' in capsys.readouterr().err
