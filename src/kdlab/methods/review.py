"""Knowledge review: ReviewKD (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review").

The student's stage features and its pooled penultimate feature are fused from deep to shallow by
attention-based fusion (ABF) modules; the output of the ABF at level i (teacher-shaped) is compared with
the teacher's level-i feature by the hierarchical context loss (HCL), summed over levels::

    HCL(f_s, f_t) = (MSE(f_s, f_t) + Σ_j 2^-j · MSE(P_{l_j}(f_s), P_{l_j}(f_t))) / (1 + Σ_j 2^-j)

where P_l is adaptive average pooling to l×l, for l in (4, 2, 1) with l smaller than the map's height
(j = 1, 2, ... counts the levels used), and MSE is the mean over all elements.

ABF (level i, student channels C_i → ``mid_channel`` → teacher channels C'_i):
``x = BN(conv1x1(f_s^i))``; unless i is the deepest level, the residual r from level i+1 is resized
(nearest) to x's size and fused with a 2-channel attention map ``a = sigmoid(conv1x1([x, r]))``:
``x = x·a_0 + r·a_1``; x is resized (nearest) to the teacher's size when they differ (heterogeneous pairs),
becomes the residual passed on to level i−1, and the level output is ``BN(conv3x3(x))``.

Sources: paper and official code (github.com/dvlab-research/ReviewKD, ``CIFAR-100/model/reviewkd.py``,
``CIFAR-100/train.py``), cross-checked with mdistiller's ``reviewkd.py``. Vectors (the penultimate feature)
are treated as 1×1 maps, as the original's pooled ``f4``. The student side uses post-ReLU stage outputs, the
teacher side pre-ReLU ones (``preact=True`` in the official training script).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kdlab.errors import KDLabError
from kdlab.methods.base import SetupInfo, StepContext, Taps, Term, TermParams
from kdlab.registry import TERMS

HCL_LEVELS = (4, 2, 1)  # pyramid pooling sizes [reviewkd.py: hcl]


def hcl_loss(f_s: list[torch.Tensor], f_t: list[torch.Tensor], levels: tuple[int, ...] = HCL_LEVELS) -> torch.Tensor:
    """Hierarchical context loss summed over level pairs of (N, C, H, W) maps, in float32."""
    total = f_s[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(f_s, f_t):
        fs, ft = fs.float(), ft.float()
        loss = F.mse_loss(fs, ft)
        w, norm = 1.0, 1.0
        for size in levels:
            if size >= fs.shape[2]:
                continue
            w /= 2.0
            loss = loss + w * F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
            norm += w
        total = total + loss / norm
    return total


def as_map(f: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N, C, 1, 1); (N, C, H, W) unchanged."""
    if f.dim() == 2:
        return f[:, :, None, None]
    if f.dim() == 4:
        return f
    raise KDLabError(f"reviewkd works on (N, C) vectors and (N, C, H, W) maps; got a feature of shape {tuple(f.shape)}")


class ABF(nn.Module):
    """Attention-based fusion of one level's student feature with the residual from the deeper level."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, out_size: tuple[int, int], fuse: bool):
        super().__init__()
        self.out_size = tuple(out_size)
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)  # as the official ABF
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.conv1(x)
        if self.att is not None:
            if residual is None:
                raise ValueError("a fusing ABF needs the residual of the deeper level")
            r = F.interpolate(residual, size=x.shape[2:], mode="nearest").to(x.dtype)
            a = self.att(torch.cat([x, r], dim=1))
            x = x * a[:, 0:1] + r * a[:, 1:2]
        if tuple(x.shape[2:]) != self.out_size:
            x = F.interpolate(x, size=self.out_size, mode="nearest")
        return self.conv2(x), x


class ReviewKDParams(TermParams):
    # --kd-loss-weight default 1.0 [CIFAR-100/train.py; mdistiller REVIEWKD_WEIGHT]; the official script
    # uses per-pair values: 5.0 for resnet32x4→resnet8x4 and the wrn pairs, 0.6 resnet56→resnet20, 8.0 shufflev2
    # (set in recipes/methods/reviewkd_<teacher>-<student>.yaml).
    weight: float = Field(1.0, description="multiplier of this term's loss in the objective")
    # --kd-warm-up 20 [CIFAR-100/train.py]: factor min(1, e/20); here e counts fractional epochs; 0 = off.
    warmup_epochs: float = Field(20.0, ge=0, description="linear warm-up min(1, epoch / warmup_epochs) (0: off)")
    # mid_channel = min(512, channels of the student's last level) [reviewkd.py] (64 for resnet20,
    # 256 for resnet8x4); null = that rule.
    mid_channel: int | None = Field(
        None, ge=1, description=("channels of the fusion modules; null: min(512, the student's last level)")
    )
    # levels shallow -> deep: the stage outputs (post-ReLU) and the pooled penultimate feature [reviewkd.py].
    layers: list[str] = Field(
        default_factory=lambda: ["@stage1", "@stage2", "@stage3", "@penultimate"],
        min_length=1,
        description=("student levels, shallow to deep (stage outputs and the penultimate feature)"),
    )
    # paired one to one with `layers`; null = the same taps with ``@stageK`` read pre-ReLU as ``@pre_stageK``
    # (the official script takes teacher features with ``preact=True``) [CIFAR-100/train.py].
    teacher_layers: list[str] | None = Field(
        None, description=("teacher levels paired one to one; null: the same taps, stage ends pre-ReLU")
    )

    @model_validator(mode="after")
    def _pairs(self) -> ReviewKDParams:
        if self.teacher_layers is not None and len(self.teacher_layers) != len(self.layers):
            raise ValueError(
                f"teacher_layers has {len(self.teacher_layers)} entries but layers has "
                f"{len(self.layers)}: they are paired one to one"
            )
        return self

    @property
    def t_layers(self) -> list[str]:
        if self.teacher_layers is not None:
            return list(self.teacher_layers)
        return ["@pre_" + t[1:] if t.startswith("@stage") else t for t in self.layers]


@TERMS.register(
    "reviewkd",
    description="ReviewKD: student stages fused deep-to-shallow by attention (ABF), "
    "matched to teacher stages with a pyramid-pooled MSE (HCL)",
    paper="Chen et al., CVPR 2021",
)
class ReviewKD(Term):
    Params = ReviewKDParams

    def __init__(self, params: ReviewKDParams | None = None):
        super().__init__(params)
        self.abfs = nn.ModuleList()

    def taps(self) -> Taps:
        return Taps(student=tuple(dict.fromkeys(self.p.layers)), teacher=tuple(dict.fromkeys(self.p.t_layers)))

    def setup(self, s_shapes, t_shapes, info: SetupInfo) -> None:
        ss, ts = [], []
        for s_tap, t_tap in zip(self.p.layers, self.p.t_layers):
            s, t = tuple(s_shapes[s_tap]), tuple(t_shapes[t_tap])
            for tap, shape in ((s_tap, s), (t_tap, t)):
                if len(shape) not in (1, 3):
                    raise KDLabError(
                        f"reviewkd: tap {tap!r} has per-sample shape {shape}; it needs a (C,) vector or a (C, H, W) map"
                    )
            ss.append(s + (1, 1) if len(s) == 1 else s)
            ts.append(t + (1, 1) if len(t) == 1 else t)
        mid = self.p.mid_channel or min(512, ss[-1][0])
        n = len(ss)
        # built shallow -> deep; the deepest level (last) has nothing deeper to fuse with
        self.abfs = nn.ModuleList(ABF(s[0], mid, t[0], t[1:], fuse=i < n - 1) for i, (s, t) in enumerate(zip(ss, ts)))

    def fuse(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Student features (shallow -> deep) -> teacher-shaped review outputs (shallow -> deep)."""
        if len(feats) != len(self.abfs):
            raise KDLabError("reviewkd: setup() was not called with the tap shapes (or the taps changed)")
        outs: list[torch.Tensor] = [None] * len(feats)  # type: ignore[list-item]
        residual = None
        for i in reversed(range(len(feats))):
            outs[i], residual = self.abfs[i](as_map(feats[i]), residual)
        return outs

    def warmup(self, ctx: StepContext) -> float:
        if self.p.warmup_epochs <= 0:
            return 1.0
        return min(1.0, (ctx.epoch + ctx.step / max(1, ctx.steps_per_epoch)) / self.p.warmup_epochs)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        f_s = [as_map(ctx.s_feats[t]) for t in self.p.layers]
        if not torch.is_autocast_enabled(f_s[0].device.type):  # low-precision inputs outside autocast
            f_s = [f.float() for f in f_s]
        if (
            self.training
            and len(f_s[0]) == 1
            and any(min(f.shape[2:].numel(), math.prod(a.out_size)) == 1 for f, a in zip(f_s, self.abfs))
        ):
            # BatchNorm cannot train on a single value per channel (batch of 1 at a 1x1 level, e.g. the
            # penultimate feature): such a batch contributes a finite 0 instead of an error.
            return {"loss": sum((f.float() * 0.0).sum() for f in f_s)}
        f_t = [as_map(ctx.t_feats[t]).detach() for t in self.p.t_layers]
        return {"loss": self.warmup(ctx) * hcl_loss(self.fuse(f_s), f_t)}
