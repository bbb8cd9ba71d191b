"""ResNet-18 (He et al. 2016), the network of every experiment in the paper (Sec. 2.1, App. A.2).

Two stems. "cifar" (CIFAR-10/100): a 3x3 stride-1 convolution and no max-pool, so 32x32 inputs keep their
resolution in the first stage. "imagenet" (ImageNet-100/200 and Adaptiope, Table 2a and Fig. 7): He et al.'s
7x7 stride-2 convolution and a 3x3 stride-2 max-pool, so the first stage sees a quarter of the image's side
(28x28 at our 112x112, 56x56 at 224x224). Then four stages of two BasicBlocks with 64/128/256/512 channels
(strides 1, 2, 2, 2), BatchNorm and ReLU, global average pooling and a linear head. At width 64 and 100
classes: 11,220,132 parameters with the CIFAR stem, 7,680 more with the ImageNet one.

Every layer keeps PyTorch's default initialisation (each module's own reset_parameters()), so "a freshly
initialised network" means the same thing here, in shrink_perturb.py's noise and in the L2-init anchor.
Imports torch only.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            # projection shortcut (option B of He et al.) whenever the shape changes
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


STEMS = ("cifar", "imagenet")


def stem_for(image_size):
    """The stem a --stem auto picks: the CIFAR stem up to 32x32, where a stride-4 stem would leave 8x8 to the
    first stage; the ImageNet stem above, where the CIFAR stem would cost (size/32)^2 times a CIFAR run."""
    return "cifar" if image_size <= 32 else "imagenet"


class ResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=100, width=64, stem="cifar"):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        if stem == "cifar":
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.pool = nn.Identity()
        else:  # the same parameter names, so a checkpoint of the other stem fails to load by shape, not silently
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.pool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        layers, c_in = [], width
        for i, (c, n) in enumerate(zip(widths, num_blocks)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c_in, c, 2 if (j == 0 and i > 0) else 1))
                c_in = c
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(c_in, num_classes)

    def stem(self, x):  # x: [B,3,H,W] -> [B,width,H,W] (cifar) or [B,width,H/4,W/4] (imagenet)
        return self.pool(F.relu(self.bn1(self.conv1(x))))

    def features(self, x):  # x: [B,3,H,W] -> [B,8*width]
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x):  # x: [B,3,H,W] -> logits [B,num_classes]
        return self.fc(self.features(x))


def resnet18(num_classes: int = 100, width: int = 64, stem: str = "cifar") -> nn.Module:
    """ResNet-18 with the CIFAR stem (32x32 inputs) or the ImageNet stem (larger ones); `width` scales every
    channel count (width=8 gives a tiny CPU test net)."""
    if num_classes < 1 or width < 1:
        raise ValueError(f"resnet18 needs num_classes >= 1 and width >= 1, got {num_classes} and {width}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem '{stem}' (choose from {', '.join(STEMS)})")
    return ResNet((2, 2, 2, 2), num_classes, width, stem)


@torch.no_grad()
def grow_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Widen model.fc to `num_classes` outputs in place: the old rows are copied, the rows of the new
    classes keep a fresh nn.Linear initialisation (the labels of new classes come after the old ones)."""
    old = model.fc
    if num_classes == old.out_features:  # no new class (a new domain, Sec. 4.3): the head stays as it is
        return model
    if num_classes < old.out_features:
        raise ValueError(f"cannot shrink the head from {old.out_features} to {num_classes} classes")
    new = nn.Linear(old.in_features, num_classes).to(device=old.weight.device, dtype=old.weight.dtype)
    new.weight[: old.out_features] = old.weight
    new.bias[: old.out_features] = old.bias
    model.fc = new
    return model
