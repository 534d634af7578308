"""The networks: a small 3D U-Net for segmentation and the dual-branch anomaly autoencoder.
Both are fully convolutional (any input size that is a multiple of 2**levels) and export to
ONNX with dynamic spatial axes."""
import math

import torch
from torch import nn

# The anomaly model's sigma lies in 0.15-2 SUV: the log-variance of the normalised SUV (SUV / 10).
LOGVAR_MIN, LOGVAR_MAX = 2 * math.log(0.015), 2 * math.log(0.2)


def norm_layer(norm, channels):
    """Instance normalisation sees each patch's own statistics, so a net with it must be served on
    the patch it was trained on; batch normalisation is fixed at inference (export folds it into
    the convolutions), so such a net is one function of its input and can be served on larger
    windows, which cuts the overlap's repeated work."""
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"unknown normalisation {norm!r}")


def block(cin, cout, norm="instance"):
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        norm_layer(norm, cout),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        norm_layer(norm, cout),
        nn.LeakyReLU(0.01, inplace=True),
    )


class Encoder(nn.Module):
    def __init__(self, cin, widths, norm="instance"):
        super().__init__()
        self.blocks = nn.ModuleList()
        self.down = nn.ModuleList()
        for i, w in enumerate(widths):
            self.blocks.append(block(cin if i == 0 else widths[i - 1], w, norm))
            if i < len(widths) - 1:
                self.down.append(nn.Conv3d(w, w, 2, stride=2))

    def forward(self, x):
        skips = []
        for i, b in enumerate(self.blocks):
            x = b(x)
            skips.append(x)
            if i < len(self.down):
                x = self.down[i](x)
        return skips


class Decoder(nn.Module):
    def __init__(self, widths, cout, norm="instance"):
        super().__init__()
        self.up = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i in range(len(widths) - 1, 0, -1):
            self.up.append(nn.ConvTranspose3d(widths[i], widths[i - 1], 2, stride=2))
            self.blocks.append(block(2 * widths[i - 1], widths[i - 1], norm))
        self.head = nn.Conv3d(widths[0], cout, 1)

    def forward(self, skips):
        x = skips[-1]
        for up, b, skip in zip(self.up, self.blocks, reversed(skips[:-1])):
            x = b(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class UNet(nn.Module):
    """Early fusion: every input channel enters the first block."""

    def __init__(self, cin, cout=1, base=8, levels=4, norm="instance"):
        super().__init__()
        widths = [base * 2**i for i in range(levels)]
        self.encoder = Encoder(cin, widths, norm)
        self.decoder = Decoder(widths, cout, norm)

    def forward(self, x):
        return self.decoder(self.encoder(x))


class DualBranchAE(nn.Module):
    """PET branch (masked SUV and its mask) and CT branch, fused at every scale into one
    decoder that predicts the mean and log-variance of the (normalised) SUV."""

    def __init__(self, base=8, levels=4, norm="instance"):
        super().__init__()
        widths = [base * 2**i for i in range(levels)]
        self.pet = Encoder(2, widths, norm)
        self.ct = Encoder(2, widths, norm)
        # 1x1x1 fusion of the branches at every scale keeps the decoder at single width.
        self.fuse = nn.ModuleList(nn.Conv3d(2 * w, w, 1) for w in widths)
        self.decoder = Decoder(widths, 2, norm)
        # Start at a plausible body: mean 1 SUV, sigma about 0.8 SUV. From sigma 10 SUV Adam's
        # lr-sized steps need thousands of steps to bring the variance down.
        # The second bias is the sigmoid's inverse at logvar -5 (see forward).
        with torch.no_grad():
            self.decoder.head.bias.copy_(torch.tensor([0.1, math.log((-5.0 - LOGVAR_MIN) / (LOGVAR_MAX + 5.0))]))

    def forward(self, x):
        # x: [N, 4, D, H, W] = suv_masked, suv_mask, ct_hu, ct_soft (data.ANOMALY_CHANNELS).
        pet = self.pet(x[:, 0:2])
        ct = self.ct(x[:, 2:4])
        out = self.decoder([f(torch.cat([p, c], dim=1)) for f, p, c in zip(self.fuse, pet, ct)])
        # A bounded variance: with it free, the network explains any hidden blob with a wide
        # sigma and a lesion's z stays small (training/README.md, attempt 2).
        logvar = LOGVAR_MIN + (LOGVAR_MAX - LOGVAR_MIN) * torch.sigmoid(out[:, 1:2])
        return torch.cat([out[:, 0:1], logvar], dim=1)
