"""A tiny pure-torch ViT-style classifier for core tests (no mm libraries)."""
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # [B, N, C]
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = self.softmax(q @ k.transpose(-2, -1))
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.fc1, self.fc2 = nn.Linear(dim, dim * 2), nn.Linear(dim * 2, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """Patch embedding conv, two blocks, mean pooling, linear classifier."""

    def __init__(self, dim=32, num_heads=2, depth=2, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(*[Block(dim, num_heads) for _ in range(depth)])
        self.head = nn.Linear(dim, classes)

    def forward(self, images):  # [B, 3, H, W] -> [B, classes]
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        return self.head(self.blocks(x).mean(1))


def toy_images(count, seed=0, size=16):
    """Images whose per-image contrast and offset vary, like real photographs."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(count, 3, size, size, generator=gen)
    gain = torch.exp(torch.randn(count, 3, 1, 1, generator=gen))
    return base * gain + torch.randn(count, 3, 1, 1, generator=gen)
