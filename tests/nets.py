"""Reference nets: small versions of the architectures LOPInfer must split exactly.

Each factory returns ``(model, example_input)`` with random weights, in eval mode, and
small enough that a test runs in well under a second per tiling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _bn_stats(model: nn.Module) -> nn.Module:
    # non-trivial running statistics, so batch norm is not an identity
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


class VGG(nn.Module):
    """Conv-BN-ReLU stacks, max pooling, adaptive pooling, a linear classifier."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        cfg = [width, width, "M", 2 * width, 2 * width, "M", 4 * width, "M"]
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(nn.Linear(c * 9, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, c_mid: int, stride: int) -> None:
        super().__init__()
        c_out = 4 * c_mid
        self.conv1 = nn.Conv2d(c_in, c_mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_mid)
        self.conv2 = nn.Conv2d(c_mid, c_mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_mid)
        self.conv3 = nn.Conv2d(c_mid, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                      nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max pool with padding, bottlenecks with residual adds."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, 2, 3, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(Bottleneck(8, 4, 1), Bottleneck(16, 4, 1),
                                    Bottleneck(16, 8, 2), Bottleneck(32, 8, 1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, 2 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(2 * growth), nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(feats, 1)
        return self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))


class DenseNet(nn.Module):
    """Dense blocks (concat of every earlier feature map), transitions with avg pooling."""

    def __init__(self, classes: int = 10, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.ModuleList([DenseLayer(8 + i * growth, growth) for i in range(3)])
        c = 8 + 3 * growth
        self.trans = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False),
                                   nn.AvgPool2d(2, 2))
        c //= 2
        self.block2 = nn.ModuleList([DenseLayer(c + i * growth, growth) for i in range(2)])
        self.norm = nn.BatchNorm2d(c + 2 * growth)
        self.fc = nn.Linear(c + 2 * growth, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for layer in self.block1:
            feats.append(layer(feats))
        feats = [self.trans(torch.cat(feats, 1))]
        for layer in self.block2:
            feats.append(layer(feats))
        y = F.relu(self.norm(torch.cat(feats, 1)))
        return self.fc(F.adaptive_avg_pool2d(y, (1, 1)).flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, max(c // 4, 4), 1), nn.Conv2d(max(c // 4, 4), c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_exp: int, c_out: int, k: int, stride: int, se: bool) -> None:
        super().__init__()
        self.use_res = stride == 1 and c_in == c_out
        self.expand = nn.Sequential(nn.Conv2d(c_in, c_exp, 1, bias=False), nn.BatchNorm2d(c_exp),
                                    nn.Hardswish())
        self.dw = nn.Sequential(nn.Conv2d(c_exp, c_exp, k, stride, k // 2, groups=c_exp, bias=False),
                                nn.BatchNorm2d(c_exp), nn.Hardswish())
        self.se = SqueezeExcite(c_exp) if se else nn.Identity()
        self.project = nn.Sequential(nn.Conv2d(c_exp, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.use_res else y


class MobileNetV3(nn.Module):
    """Depthwise separable blocks, hardswish, squeeze-excitation (a global barrier)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.Hardswish())
        self.blocks = nn.Sequential(
            InvertedResidual(8, 16, 8, 3, 1, False),
            InvertedResidual(8, 24, 12, 5, 2, True),
            InvertedResidual(12, 36, 12, 5, 1, True),
            InvertedResidual(12, 48, 16, 3, 2, False),
        )
        self.head = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(y, 1).flatten(1))


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c, eps=1e-6)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Patchify stem, 7x7 depthwise convs, permute + layer norm + linear, downsampling."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), LayerNorm2d(16, eps=1e-6))
        self.stage1 = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.down = nn.Sequential(LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 32, 2, 2))
        self.stage2 = ConvNeXtBlock(32)
        self.head = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(y.mean((-2, -1)))


class UNet(nn.Module):
    """Encoder-decoder: transposed conv and bilinear upsampling, skip concatenations."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()

        def block(ci: int, co: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(ci, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU(),
                                 nn.Conv2d(co, co, 3, padding=1), nn.ReLU())

        self.enc1, self.enc2, self.enc3 = block(3, 8), block(8, 16), block(16, 32)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.dec2 = block(32, 16)
        self.dec1 = block(16 + 8, 8)
        self.out = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(e3), e2], 1))
        up = F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=True)
        d1 = self.dec1(torch.cat([up, e1], 1))
        return self.out(d1)


class Conv3DNet(nn.Module):
    """3D convolutions, 3D pooling and trilinear upsampling (tiled along depth)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.c1 = nn.Conv3d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm3d(6)
        self.c2 = nn.Conv3d(6, 8, (3, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1), dilation=(1, 1, 1))
        self.up = nn.Upsample(scale_factor=(2, 1, 1), mode="trilinear", align_corners=False)
        self.c3 = nn.Conv3d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.c1(x)))
        y = F.max_pool3d(y, (2, 2, 2), stride=(1, 2, 2), padding=(1, 0, 0))
        y = F.relu(self.c2(y))
        y = F.avg_pool3d(y, 3, stride=1, padding=1, count_include_pad=False)
        return self.c3(self.up(y))


def vgg() -> tuple[nn.Module, torch.Tensor]:
    return _bn_stats(VGG()), torch.randn(1, 3, 32, 32)


def resnet() -> tuple[nn.Module, torch.Tensor]:
    return _bn_stats(ResNet()), torch.randn(1, 3, 45, 41)


def densenet() -> tuple[nn.Module, torch.Tensor]:
    return _bn_stats(DenseNet()), torch.randn(1, 3, 23, 20)


def mobilenet_v3() -> tuple[nn.Module, torch.Tensor]:
    return _bn_stats(MobileNetV3()), torch.randn(1, 3, 40, 37)


def convnext() -> tuple[nn.Module, torch.Tensor]:
    return _bn_stats(ConvNeXt()), torch.randn(1, 3, 40, 36)


def unet() -> tuple[nn.Module, torch.Tensor]:
    return _bn_stats(UNet()), torch.randn(1, 3, 28, 36)


def conv3d() -> tuple[nn.Module, torch.Tensor]:
    return _bn_stats(Conv3DNet()), torch.randn(1, 2, 11, 9, 10)


REFERENCE_NETS = {
    "vgg": vgg,
    "resnet": resnet,
    "densenet": densenet,
    "mobilenet_v3": mobilenet_v3,
    "convnext": convnext,
    "unet": unet,
    "conv3d": conv3d,
}


# -- 3D encoder-decoders with GroupNorm / InstanceNorm (medical-imaging U-Nets) -------------
class _NormBlock3d(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1)
        self.norm = (nn.GroupNorm(2, cout) if norm == "group"
                     else nn.InstanceNorm3d(cout, affine=True))
        with torch.no_grad():  # non-trivial affine parameters
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), 0.01)


class UNet3D(nn.Module):
    """Two-level 3D U-Net: strided-conv encoder, norm after every conv (global over the
    volume), transposed-conv and trilinear decoders with skip concatenations."""

    def __init__(self, norm: str, width: int = 8, classes: int = 3, up: str = "tconv") -> None:
        super().__init__()
        w = width
        self.e1 = _NormBlock3d(2, w, norm)
        self.e2 = _NormBlock3d(w, 2 * w, norm, stride=2)
        self.mid = _NormBlock3d(2 * w, 2 * w, norm)
        self.up = (nn.ConvTranspose3d(2 * w, w, 2, stride=2) if up == "tconv"
                   else nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear"),
                                      nn.Conv3d(2 * w, w, 1)))
        self.d1 = _NormBlock3d(2 * w, w, norm)
        self.head = nn.Conv3d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.e1(x)
        y = self.mid(self.e2(s))
        y = self.up(y)
        y = self.d1(torch.cat([y, s], 1))
        return self.head(y)


NORM3D_NETS = {
    "unet3d_group": lambda: (UNet3D("group").eval(), torch.randn(1, 2, 16, 18, 14)),
    "unet3d_instance": lambda: (UNet3D("instance").eval(), torch.randn(1, 2, 16, 12, 18)),
    "unet3d_group_trilinear": lambda: (UNet3D("group", up="trilinear").eval(),
                                       torch.randn(1, 2, 12, 14, 16)),
}


# -- a small ViT: patch embedding, class token, global attention, per-token MLPs ---------
class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.n1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class ViT(nn.Module):
    def __init__(self, patch: int = 4, dim: int = 32, depth: int = 2, heads: int = 4,
                 grid: tuple[int, int] = (6, 5), classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, grid[0] * grid[1] + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ViT().eval(), torch.randn(1, 3, 24, 20)
