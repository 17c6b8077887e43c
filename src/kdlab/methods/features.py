"""Feature-map distillation terms: FitNet, AT, NST, VID, FSP, AB and FT.

Every term reads intermediate feature maps captured by tap (portable aliases such as ``"@stage2"`` or
``"@pre_stage3"`` by default, see ``kdlab.capture``), builds its adapters in ``setup`` from the probed
shapes, and computes its loss in float32 (so bf16/fp16 features stay finite). Teacher features are always
detached. Where a student map and a teacher map differ in resolution, the larger one is average-pooled to
the smaller one (as RepDistiller does), unless a connector resizes the student map itself.

Defaults follow the original papers; where a paper is silent (loss scaling, which layers), they follow
RepDistiller (Tian et al., ICLR 2020, github.com/HobbitLong/RepDistiller ``distiller_zoo/``), the reference
implementation the CIFAR-100 benchmark tables come from. Each default carries its source in a comment.

Layer defaults are the three stage ends ``@stage1..@stage3``: every zoo CNN has at least three stages
(ResNet, WRN and ShuffleNet have exactly three; VGG and MobileNetV2 have four, of which the first three are
used); FSP adds the stem output ``@stem`` in front. ``smallcnn`` has two stages and no stem: pass
``layers: ["@stage1", "@stage2"]`` for it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kdlab.errors import KDLabError
from kdlab.methods.base import SetupInfo, StepContext, Taps, Term, TermParams, teacher_feature
from kdlab.methods.connectors import make_connector
from kdlab.registry import TERMS

STAGES3 = ["@stage1", "@stage2", "@stage3"]
PRE_STAGES3 = ["@pre_stage1", "@pre_stage2", "@pre_stage3"]


# ----------------------------------------------------------------------------------------------- helpers


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever map is larger to the smaller spatial size (per dimension); vectors pass."""
    if a.dim() <= 2 or a.shape[2:] == b.shape[2:]:
        return a, b
    if a.dim() != b.dim():
        raise KDLabError(f"cannot compare feature maps of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    size = tuple(min(x, y) for x, y in zip(a.shape[2:], b.shape[2:]))
    pool = F.adaptive_avg_pool2d if a.dim() == 4 else F.adaptive_avg_pool1d
    a = a if tuple(a.shape[2:]) == size else pool(a, size)
    b = b if tuple(b.shape[2:]) == size else pool(b, size)
    return a, b


def _pointwise(cin: int, cout: int, rank: int, bias: bool = False) -> nn.Module:
    """A 1x1 convolution for maps of per-sample rank 3 (C,H,W) or 2 (C,L); a Linear for vectors."""
    if rank == 3:
        return nn.Conv2d(cin, cout, 1, bias=bias)
    if rank == 2:
        return nn.Conv1d(cin, cout, 1, bias=bias)
    return nn.Linear(cin, cout, bias=bias)


def _need_map(shape: torch.Size | tuple[int, ...], term: str, tap: str) -> None:
    if len(shape) not in (2, 3):
        raise KDLabError(
            f"{term}: tap {tap!r} has per-sample shape {tuple(shape)}; this method needs a feature map "
            "(C, H, W) or (C, L) - tap a stage output, not the pooled penultimate vector"
        )


def _keyed(taps: list[str]) -> list[str]:
    """Module-dict keys for taps (``.`` and ``@`` are not allowed in ModuleDict keys)."""
    return [f"l{i}" for i in range(len(taps))]


class _LayersParams(TermParams):
    """Shared by multi-layer terms: ``layers`` on the student, ``teacher_layers`` (default: the same)."""

    layers: list[str] = Field(
        default_factory=lambda: list(STAGES3),
        min_length=1,
        description=("student taps (module paths or @aliases), one loss per tap"),
    )
    teacher_layers: list[str] | None = Field(
        None, description=("teacher taps paired one to one with `layers`; null: the same names")
    )

    @model_validator(mode="after")
    def _same_length(self) -> _LayersParams:
        if self.teacher_layers is not None and len(self.teacher_layers) != len(self.layers):
            raise ValueError(
                f"teacher_layers has {len(self.teacher_layers)} entries but layers has "
                f"{len(self.layers)}: they are paired one to one"
            )
        return self


class _LayersTerm(Term):
    """Base for terms that pair ``layers`` (student) with ``teacher_layers`` one to one."""

    @property
    def s_layers(self) -> list[str]:
        return list(self.p.layers)

    @property
    def t_layers(self) -> list[str]:
        return list(self.p.teacher_layers or self.p.layers)

    def taps(self) -> Taps:
        return Taps(student=tuple(dict.fromkeys(self.s_layers)), teacher=tuple(dict.fromkeys(self.t_layers)))

    def pairs(self, ctx: StepContext) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(ctx.s_feats[s].float(), teacher_feature(ctx, t)) for s, t in zip(self.s_layers, self.t_layers)]


# ----------------------------------------------------------------------------------------------- FitNet


class FitNetParams(TermParams):
    # Romero et al. 2015 train the hint stage alone with 1/2 ||u_h - r(v_g)||^2; RepDistiller (fitnet, -b 100)
    # uses MSE (mean over elements) with weight 100 next to CE. We use the MSE form and RepDistiller's 100: the
    # two differ by the constant C*H*W/2, which in a hint-only stage only rescales the learning rate.
    weight: float = Field(100.0, description="multiplier of this term's loss in the objective")
    # RepDistiller hint_layer=2: the end of the 2nd stage (the paper: a middle layer)
    student_layer: str = Field("@stage2", description="student hint tap (module path or @alias)")
    teacher_layer: str = Field("@stage2", description="teacher hint tap (module path or @alias)")
    # convreg: RepDistiller's ConvReg (models/util.py) - 1x1 conv at equal resolution, stride-2 3x3 conv for 2x
    # downsampling, 4x4 stride-2 transposed conv for 2x upsampling, else a conv of kernel n_s - n_t + 1 (Romero
    # et al. 2015, Sec. 2.2) - then BN + ReLU. conv1x1 (+ BN) and conv3x3 (+ BN + ReLU) resize first.
    connector: Literal["convreg", "conv1x1", "conv3x3", "identity"] = Field(
        "convreg",
        description=(
            "regressor from the student map to the teacher's: convreg (RepDistiller's ConvReg), conv1x1, conv3x3 or "
            "identity"
        ),
    )


@TERMS.register(
    "fitnet",
    description="FitNet hints: MSE between a regressor of a student layer and a teacher layer",
    paper="Romero et al., ICLR 2015",
)
class FitNet(Term):
    Params = FitNetParams

    def taps(self) -> Taps:
        return Taps(student=(self.p.student_layer,), teacher=(self.p.teacher_layer,))

    def setup(self, s_shapes: dict[str, torch.Size], t_shapes: dict[str, torch.Size], info: SetupInfo) -> None:
        self.connector = make_connector(
            s_shapes[self.p.student_layer], t_shapes[self.p.teacher_layer], kind=self.p.connector
        )

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        s = self.connector(ctx.s_feats[self.p.student_layer].float()).float()
        t = teacher_feature(ctx, self.p.teacher_layer)
        return {"loss": (s - t).pow(2).mean()}


# ----------------------------------------------------------------------------------------------- AT


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """Q(F) = vec(mean_c |F_c|^p), L2-normalised per sample (an all-zero map gives 0, not NaN)."""
    q = f.abs().pow(p).mean(1).flatten(1)
    return F.normalize(q, dim=1, eps=1e-12)


class ATParams(_LayersParams):
    # Zagoruyko & Komodakis 2017: beta = 1000 with p = 2 (paper Sec. 4 and RepDistiller `-b 1000`). The paper
    # writes beta/2 * sum_j ||Q_s/|Q_s| - Q_t/|Q_t|||_2; the authors' code (szagoruyko/attention-transfer
    # cifar.py) and RepDistiller (AT.py) use beta * sum_j mean((Q_s - Q_t)^2), which is what we compute.
    weight: float = Field(1000.0, description="beta, the multiplier of the attention loss")
    p: float = Field(2.0, gt=0, description="power of the attention map mean_c |F|^p")  # paper: p = 2
    # layers: the three stage ends (paper: the ends of the three WRN groups; RepDistiller: feat[1:-1])


@TERMS.register(
    "at",
    description="attention transfer: MSE between L2-normalised spatial attention maps",
    paper="Zagoruyko & Komodakis, ICLR 2017",
)
class AttentionTransfer(_LayersTerm):
    Params = ATParams

    def setup(self, s_shapes: dict[str, torch.Size], t_shapes: dict[str, torch.Size], info: SetupInfo) -> None:
        for s, t in zip(self.s_layers, self.t_layers):
            _need_map(s_shapes[s], "at", s)
            _need_map(t_shapes[t], "at", t)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        total = ctx.s_logits.new_zeros((), dtype=torch.float32)
        for s, t in self.pairs(ctx):
            s, t = match_spatial(s, t)
            total = total + (attention_map(s, self.p.p) - attention_map(t, self.p.p)).pow(2).mean()
        return {"loss": total}


# ----------------------------------------------------------------------------------------------- NST


def poly_mmd(s: torch.Tensor, t: torch.Tensor, degree: int, c: float) -> torch.Tensor:
    """Squared MMD between the channel sets of s (B,Cs,N) and t (B,Ct,N), kernel k(x,y) = (x.y + c)^d,
    averaged over the batch."""
    k_ss = (s @ s.transpose(1, 2) + c).pow(degree).mean((1, 2))
    k_tt = (t @ t.transpose(1, 2) + c).pow(degree).mean((1, 2))
    k_st = (s @ t.transpose(1, 2) + c).pow(degree).mean((1, 2))
    return (k_ss + k_tt - 2 * k_st).mean()


class NSTParams(_LayersParams):
    # Huang & Wang 2017 (neuron selectivity transfer): polynomial kernel with d = 2, c = 0 (the paper's choice
    # for CIFAR); weight 50 as RepDistiller (`-b 50`), which also takes the stage ends feat[1:-1].
    weight: float = Field(50.0, description="multiplier of this term's loss in the objective")
    degree: int = Field(2, ge=1, description="degree d of the polynomial kernel")
    c: float = Field(0.0, description="constant c of the polynomial kernel")


@TERMS.register(
    "nst",
    description="neuron selectivity transfer: polynomial-kernel MMD between channel activations",
    paper="Huang & Wang, arXiv 2017",
)
class NeuronSelectivityTransfer(_LayersTerm):
    Params = NSTParams

    def setup(self, s_shapes: dict[str, torch.Size], t_shapes: dict[str, torch.Size], info: SetupInfo) -> None:
        for s, t in zip(self.s_layers, self.t_layers):
            _need_map(s_shapes[s], "nst", s)
            _need_map(t_shapes[t], "nst", t)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        total = ctx.s_logits.new_zeros((), dtype=torch.float32)
        for s, t in self.pairs(ctx):
            s, t = match_spatial(s, t)
            s = F.normalize(s.flatten(2), dim=2, eps=1e-12)  # each channel's spatial response, unit norm
            t = F.normalize(t.flatten(2), dim=2, eps=1e-12)
            total = total + poly_mmd(s, t, self.p.degree, self.p.c)
        return {"loss": total}


# ----------------------------------------------------------------------------------------------- VID


class VIDParams(_LayersParams):
    # Ahn et al. 2019: a Gaussian q(t|s) with mean from a regressor of 1x1 convs and a learned per-channel
    # variance (softplus); the authors' code (ssahn0215/variational-information-distillation, as in RepDistiller
    # VID.py) initialises the variance at 5.0 with eps 1e-5 and uses three 1x1 convs with ReLUs and as many
    # hidden channels as the teacher layer. Weight 1 and the stage ends feat[1:-1]: RepDistiller (`-b 1`).
    weight: float = Field(1.0, description="multiplier of this term's loss in the objective")
    init_var: float = Field(5.0, gt=0, description="initial per-channel variance of q(t|s)")
    eps: float = Field(1e-5, gt=0, description="variance floor")
    hidden: int | None = Field(None, description="hidden channels of the regressor; null: the teacher layer's channels")


class _VIDHead(nn.Module):
    def __init__(self, cin: int, cout: int, hidden: int, rank: int, init_var: float, eps: float):
        super().__init__()
        self.regressor = nn.Sequential(
            _pointwise(cin, hidden, rank),
            nn.ReLU(),
            _pointwise(hidden, hidden, rank),
            nn.ReLU(),
            _pointwise(hidden, cout, rank),
        )
        # softplus(raw) + eps == init_var at the start
        self.raw_var = nn.Parameter(torch.full((cout,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mean = self.regressor(s).float()
        var = (F.softplus(self.raw_var.float()) + self.eps).view(1, -1, *([1] * (t.dim() - 2)))
        return (0.5 * ((mean - t).pow(2) / var + var.log())).mean()


@TERMS.register(
    "vid",
    description="variational information distillation: Gaussian NLL of teacher maps given student",
    paper="Ahn et al., CVPR 2019",
)
class VID(_LayersTerm):
    Params = VIDParams

    def setup(self, s_shapes: dict[str, torch.Size], t_shapes: dict[str, torch.Size], info: SetupInfo) -> None:
        heads = {}
        for key, s, t in zip(_keyed(self.s_layers), self.s_layers, self.t_layers):
            ss, ts = s_shapes[s], t_shapes[t]
            if len(ss) != len(ts):
                raise KDLabError(f"vid: student tap {s!r} {tuple(ss)} and teacher tap {t!r} {tuple(ts)} differ in rank")
            heads[key] = _VIDHead(ss[0], ts[0], self.p.hidden or ts[0], len(ss), self.p.init_var, self.p.eps)
        self.heads = nn.ModuleDict(heads)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        total = ctx.s_logits.new_zeros((), dtype=torch.float32)
        for key, (s, t) in zip(_keyed(self.s_layers), self.pairs(ctx)):
            s, t = match_spatial(s, t)
            total = total + self.heads[key](s, t)
        return {"loss": total}


# ----------------------------------------------------------------------------------------------- FSP


def fsp_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """G_ij = (1/N) sum_x a_i(x) b_j(x) over the N spatial positions, after pooling to the smaller size."""
    a, b = match_spatial(a, b)
    a, b = a.flatten(2), b.flatten(2)
    return a @ b.transpose(1, 2) / a.shape[-1]


class FSPParams(_LayersParams):
    # Yim et al. 2017: FSP matrices between the two ends of each stage, L2 loss, lambda_i all equal. Portable
    # variant (as RepDistiller FSP.py): matrices between consecutive taps of `layers`, the larger map pooled to the
    # smaller, loss = sum over pairs of mean((G_s - G_t)^2). Weight 1: RepDistiller's init stage sums the
    # losses without a factor; the paper trains FSP alone in its first stage, then CE.
    weight: float = Field(1.0, description="multiplier of this term's loss in the objective")
    # The stem output and every stage end: 3 matrices on the 3-stage CIFAR nets, as the paper (one per ResNet
    # section, from its input to its output) and RepDistiller (feat[:-1] = stem + stages). VGG/MobileNetV2 have
    # a 4th stage: add "@stage4" to match RepDistiller there.
    layers: list[str] = Field(
        default_factory=lambda: ["@stem", *STAGES3],
        min_length=2,
        description=("taps whose consecutive pairs give the FSP matrices (stem and stage ends)"),
    )
    # The paper and RepDistiller need equal channel counts (RepDistiller raises). Our extension: where the
    # student's channels differ, a 1x1 conv + BN connector on the student side maps them to the teacher's
    # (trained with the FSP loss); "none" keeps the strict behaviour and raises.
    connector: Literal["conv1x1", "none"] = Field(
        "conv1x1",
        description=(
            "conv1x1: a 1x1 conv + BN maps differing student channels to the teacher's; none: equal channels required"
        ),
    )


@TERMS.register(
    "fsp",
    description="flow of solution procedure: L2 between Gram matrices of consecutive stage maps",
    paper="Yim et al., CVPR 2017",
)
class FSP(_LayersTerm):
    Params = FSPParams

    def setup(self, s_shapes: dict[str, torch.Size], t_shapes: dict[str, torch.Size], info: SetupInfo) -> None:
        conns = {}
        for key, s, t in zip(_keyed(self.s_layers), self.s_layers, self.t_layers):
            ss, ts = s_shapes[s], t_shapes[t]
            _need_map(ss, "fsp", s)
            _need_map(ts, "fsp", t)
            if ss[0] == ts[0]:
                conns[key] = nn.Identity()
            elif self.p.connector == "none":
                raise KDLabError(
                    f"fsp: student tap {s!r} has {ss[0]} channels, teacher tap {t!r} has {ts[0]}; FSP "
                    "needs equal channels (set connector: conv1x1 to learn a student-side adapter)"
                )
            else:
                # channels only: the FSP matrix is C x C', so the spatial size need not match the teacher's
                conns[key] = make_connector(ss, (ts[0], *ss[1:]), kind="conv1x1")
        self.connectors = nn.ModuleDict(conns)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        s_maps, t_maps = [], []
        for key, (s, t) in zip(_keyed(self.s_layers), self.pairs(ctx)):
            s_maps.append(self.connectors[key](s).float())
            t_maps.append(t)
        total = ctx.s_logits.new_zeros((), dtype=torch.float32)
        for i in range(len(s_maps) - 1):
            g_s = fsp_matrix(s_maps[i], s_maps[i + 1])
            g_t = fsp_matrix(t_maps[i], t_maps[i + 1])
            total = total + (g_s - g_t).pow(2).mean()
        return {"loss": total}


# ----------------------------------------------------------------------------------------------- AB


def ab_criterion(s: torch.Tensor, t: torch.Tensor, margin: float) -> torch.Tensor:
    """Alternative (hinge-squared) activation-boundary loss, summed over elements:
    (s + m)^2 where the teacher neuron is off (t <= 0) but s > -m, (s - m)^2 where it is on (t > 0) but s <= m."""
    off = ((s > -margin) & (t <= 0)).to(s.dtype)
    on = ((s <= margin) & (t > 0)).to(s.dtype)
    return ((s + margin).pow(2) * off + (s - margin).pow(2) * on).sum()


class ABParams(_LayersParams):
    # Heo et al. AAAI 2019: pre-ReLU maps at the stage ends, margin mu = 1, connector 1x1 conv + BN, layer i of
    # n weighted 2^(i-n+1) (the deepest gets 1), loss summed over elements and divided by the batch size.
    # RepDistiller (AB.py, citing the authors' code bhheo/AB_distillation) further scales by 3/1000: our weight.
    weight: float = Field(
        0.003, description=("multiplier of this term's loss in the objective (RepDistiller's 3/1000 scaling)")
    )
    layers: list[str] = Field(
        default_factory=lambda: list(PRE_STAGES3),
        min_length=1,
        description=("student pre-ReLU taps whose activation boundaries are transferred"),
    )
    margin: float = Field(1.0, ge=0, description="margin mu of the hinge on the teacher's pre-ReLU sign")
    # auto: identity where the student map already has the teacher's shape, else 1x1 conv + BN (the paper's
    # connector), as RepDistiller's Connector (models/util.py) skips it on equal shapes; conv1x1: always.
    connector: Literal["auto", "conv1x1", "identity"] = Field(
        "auto", description=("auto: identity where shapes match, else 1x1 conv + BN; conv1x1: always; identity: never")
    )


@TERMS.register(
    "ab",
    description="activation boundaries: hinge-squared loss on pre-ReLU signs (init stage)",
    paper="Heo et al., AAAI 2019",
)
class ActivationBoundaries(_LayersTerm):
    Params = ABParams

    def setup(self, s_shapes: dict[str, torch.Size], t_shapes: dict[str, torch.Size], info: SetupInfo) -> None:
        conns = {}
        for key, s, t in zip(_keyed(self.s_layers), self.s_layers, self.t_layers):
            kind = self.p.connector
            if kind == "auto":
                kind = "identity" if tuple(s_shapes[s]) == tuple(t_shapes[t]) else "conv1x1"
            conns[key] = make_connector(s_shapes[s], t_shapes[t], kind=kind)
        self.connectors = nn.ModuleDict(conns)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        n = len(self.s_layers)
        total = ctx.s_logits.new_zeros((), dtype=torch.float32)
        for i, (key, (s, t)) in enumerate(zip(_keyed(self.s_layers), self.pairs(ctx))):
            s = self.connectors[key](s).float()
            total = total + 2.0 ** (i - n + 1) * ab_criterion(s, t, self.p.margin) / s.shape[0]
        return {"loss": total}


# ----------------------------------------------------------------------------------------------- FT


def _convs(rank: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if rank == 3:
        return nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d
    return nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d


def _encoder(cin: int, cout: int, rank: int, bn: bool) -> nn.Sequential:
    """Three 3x3 convs (cin -> cin -> cout -> cout), each followed by (BN and) LeakyReLU(0.1)."""
    conv, _, norm = _convs(rank)
    layers: list[nn.Module] = []
    for a, b in ((cin, cin), (cin, cout), (cout, cout)):
        layers += [conv(a, b, 3, padding=1)] + ([norm(b)] if bn else []) + [nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Convolutional autoencoder on the teacher's map; the encoder output is the teacher factor."""

    def __init__(self, channels: int, factor_channels: int, rank: int, bn: bool = False):
        super().__init__()
        _, deconv, norm = _convs(rank)
        self.encoder = _encoder(channels, factor_channels, rank, bn)
        layers: list[nn.Module] = []
        for a, b in ((factor_channels, factor_channels), (factor_channels, channels), (channels, channels)):
            layers += [deconv(a, b, 3, padding=1)] + ([norm(b)] if bn else []) + [nn.LeakyReLU(0.1)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.encoder(x)
        return factor, self.decoder(factor)


def ft_factor(f: torch.Tensor, kind: str) -> torch.Tensor:
    """Normalised factor: ``"channel_mean"`` (RepDistiller FT.py) L2-normalises vec(mean_c F^2);
    ``"flat"`` (the paper) L2-normalises vec(F) over all of C x H x W."""
    q = f.pow(2).mean(1).flatten(1) if kind == "channel_mean" else f.flatten(1)
    return F.normalize(q, dim=1, eps=1e-12)


class FTParams(TermParams):
    # Kim et al. NeurIPS 2018. weight beta = 200 as RepDistiller (`-b 200`), which is calibrated to RepDistiller's
    # factor form (factor="channel_mean", mean absolute difference). mode "pretrain" trains the paraphraser alone
    # by reconstruction (MSE) on the teacher's map - use it in a first stage with `trainable: []` - and its
    # weight defaults to 1 there; mode "transfer" trains the student's translator (and the student) with the L1
    # between normalised factors, the paraphraser frozen. Keep the same label in both stages so the
    # paraphraser carries over.
    weight: float = Field(200.0, description="multiplier of this term's loss in the objective (1 in pretrain mode)")
    mode: Literal["pretrain", "transfer"] = Field(
        "transfer",
        description=(
            "pretrain: train the paraphraser alone by reconstruction; transfer: the student's translator matches the "
            "frozen paraphraser's factors"
        ),
    )
    # paper / RepDistiller: the last feature map before pooling (feat[-2])
    student_layer: str = Field("@last", description="student map translated (module path or @alias)")
    teacher_layer: str = Field("@last", description="teacher map paraphrased (module path or @alias)")
    # paraphrase rate k = 0.5 (paper's CIFAR setting; RepDistiller default)
    rate: float = Field(0.5, gt=0, description="paraphrase rate k: factor channels = k x teacher channels")
    factor: Literal["channel_mean", "flat"] = Field(
        "channel_mean", description=("channel_mean: factors averaged over channels; flat: whole maps")
    )
    # RepDistiller: no BN in the paraphraser, BN in the translator
    paraphraser_bn: bool = Field(False, description="BatchNorm in the paraphraser")
    translator_bn: bool = Field(True, description="BatchNorm in the translator")

    @model_validator(mode="before")
    @classmethod
    def _pretrain_weight(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mode") == "pretrain" and "weight" not in data:
            data = {**data, "weight": 1.0}
        return data


@TERMS.register(
    "ft",
    description="factor transfer: paraphraser (pretrain mode) + translator, L1 between factors",
    paper="Kim et al., NeurIPS 2018",
)
class FactorTransfer(Term):
    Params = FTParams

    def taps(self) -> Taps:
        if self.p.mode == "pretrain":
            return Taps(teacher=(self.p.teacher_layer,))
        return Taps(student=(self.p.student_layer,), teacher=(self.p.teacher_layer,))

    def setup(self, s_shapes: dict[str, torch.Size], t_shapes: dict[str, torch.Size], info: SetupInfo) -> None:
        ts = t_shapes[self.p.teacher_layer]
        _need_map(ts, "ft", self.p.teacher_layer)
        k = max(1, int(ts[0] * self.p.rate))
        self.paraphraser = Paraphraser(ts[0], k, len(ts), self.p.paraphraser_bn)
        # counts pretrain steps; carried over with the paraphraser, so transfer can tell if it was pre-trained
        self.register_buffer("pretrain_steps", torch.zeros((), dtype=torch.long))
        self._checked = False
        if self.p.mode == "transfer":
            ss = s_shapes[self.p.student_layer]
            _need_map(ss, "ft", self.p.student_layer)
            if len(ss) != len(ts):
                raise KDLabError(f"ft: student map {tuple(ss)} and teacher map {tuple(ts)} differ in rank")
            self.translator = _encoder(ss[0], k, len(ss), self.p.translator_bn)
            self.paraphraser.requires_grad_(False)  # trained in the pretrain stage, then fixed (paper Sec. 3)

    def train(self, mode: bool = True) -> FactorTransfer:
        super().train(mode)
        if self.p.mode == "transfer" and hasattr(self, "paraphraser"):
            self.paraphraser.eval()  # frozen: keep any BN statistics fixed
        return self

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        t = teacher_feature(ctx, self.p.teacher_layer)
        if self.p.mode == "pretrain":
            _, rec = self.paraphraser(t)
            if self.training:
                self.pretrain_steps += 1
            return {"loss": (rec.float() - t).pow(2).mean()}
        if not self._checked:
            self._checked = True
            if int(self.pretrain_steps) == 0:
                warnings.warn(
                    "ft (transfer): the paraphraser was never pre-trained; run a stage with "
                    "`ft: {mode: pretrain}` (same label) first, see recipes/methods/ft.yaml",
                    stacklevel=2,
                )
        with torch.no_grad():
            f_t, _ = self.paraphraser(t)
        f_s = self.translator(ctx.s_feats[self.p.student_layer].float()).float()
        f_s, f_t = match_spatial(f_s, f_t.float())
        d = (ft_factor(f_s, self.p.factor) - ft_factor(f_t, self.p.factor)).abs()
        return {"loss": d.mean() if self.p.factor == "channel_mean" else d.sum(1).mean()}
