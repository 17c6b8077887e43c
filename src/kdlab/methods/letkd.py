"""letKD terms (Gorgun, Gurbuz, Alatan, "Knowledge Distillation Layer that Lets the Student Decide", BMVC 2023):
teacher supervision of the template scores of a ``letkd`` layer inserted into the student (``kdlab.layers.letkd``).

Both terms are ``KL(p_T || softmax(a))`` over the K score channels, averaged over all B*H*W locations
(``batchmean`` over locations, as ``kl_div`` on the (B*H*W) x K matrix in the authors' code), with the teacher
features average-pooled to the student's spatial size first (adaptive pooling; the paper's 2x2 "downscale" for
RN32x4 / WRN-40-2 teachers of 4x4 students):

- ``letkd_penult`` (letKD-1, QuEST's target): p_T = softmax(-tau * ||f_t - rho_k||^2) over K k-means centres of
  the teacher's last-stage locations (tau = 1, K = 4096 from the layer).
- ``letkd_inter`` (letKD-2's second layer): p_T = s_T[k*], the row of the teacher's sub-class confusion matrix for
  the nearest (in LDA space) of the ground-truth class's sub-class centres; K = sub-classes per class * classes.

The templates are fitted once before training (``Term.fit``, ``kdlab.layers.templates``) and cached in the run
folder. The terms do not add CE: recipes keep ``ce`` (weight 1) next to them; lambda_p = lambda_i = 1 (the
``weight``s) in every config of the paper.

Where the layer sits: ``student_layer`` is the module path the layer was inserted at, as it is *after all
insertions* (the scores are tapped at ``<student_layer>.layer.scores``). Aliases cannot carry a suffix, so give
the path: ``@last`` is ``layer3`` on the CIFAR ResNets, ``relu`` on WRNs, ``relu2`` on ``smallcnn``. When the
penultimate layer wraps ``layer3`` and the intermediate one sits inside it, the intermediate path is
``layer3.inner.0`` (``kdlab.layers.Inserted`` keeps the original module as ``inner``).

The intermediate tap is "after the first block of the last stage" (no alias exists for it): ``layer3.0`` on CIFAR
ResNets (RN8x4 has a single block there, so both layers then follow layer3, as in the authors' configs),
``block3.0`` on WRNs (pre-activation blocks: the residual sum), ``layer3.0`` on ShuffleNetV1/V2; ``@stage1`` on
``smallcnn`` (two conv stages only).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from kdlab.errors import KDLabError
from kdlab.layers import templates as T
from kdlab.methods.base import FitData, SetupInfo, StepContext, Taps, Term, TermParams
from kdlab.registry import TERMS

_VERSION = 1  # bump when the fitting changes, so that old caches are refitted


def score_kl(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(scores)) summed over K and averaged over locations; both (L, K), float32, zeros in
    ``target`` contribute 0."""
    return F.kl_div(F.log_softmax(scores.float(), dim=1), target.float(), reduction="batchmean")


class _LetKDParams(TermParams):
    # lambda (quest_loss_coef / sub_loss_coef = 1.0 in every config)
    weight: float = Field(1.0, description="lambda, the multiplier of the letKD loss")
    # see kdlab.layers.templates
    kmeans: Literal["auto", "sklearn", "torch"] = Field(
        "auto", description=("k-means backend for the templates: auto, sklearn or torch")
    )
    # faiss' default niter, as in the authors' clustering code
    kmeans_iters: int = Field(20, ge=1, description="k-means iterations")
    fit_samples: int | None = Field(
        None, ge=1, description=("fit on a seeded random subset of this many locations; null: all")
    )
    cache: str | None = Field(None, description="label of run_dir/templates-<cache>.safetensors; null: the term's name")


class _LetKDTerm(Term):
    kind = ""

    def taps(self) -> Taps:
        return Taps(student=(self.scores_tap,), teacher=(self.p.teacher_layer,))

    @property
    def scores_tap(self) -> str:
        return f"{self.p.student_layer}.layer.scores"

    def setup(self, s_shapes, t_shapes, info: SetupInfo) -> None:
        s, t = s_shapes[self.scores_tap], t_shapes.get(self.p.teacher_layer)
        if t is None:
            raise KDLabError(f"{self.kind}: needs a teacher")
        if len(s) != 3:
            raise KDLabError(
                f"{self.kind}: {self.scores_tap} has shape {tuple(s)}; is a letkd layer inserted at "
                f"{self.p.student_layer!r}?"
            )
        self.k, self.size = int(s[0]), (int(s[1]), int(s[2]))
        self.t_channels, self.t_shape = int(t[0]), [int(v) for v in t]
        self.num_classes = info.num_classes
        self._setup(info)

    def _setup(self, info: SetupInfo) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fingerprint(self, data: FitData) -> dict:
        p = self.p
        return {
            "kind": self.kind,
            "version": _VERSION,
            "teacher_layer": p.teacher_layer,
            "K": self.k,
            "teacher_shape": self.t_shape,
            "size": list(self.size),
            "n_train": int(len(data.labels)),
            "labels_sum": int(data.labels.long().sum()),
            "seed": int(data.seed),
            "kmeans": p.kmeans,
            "iters": p.kmeans_iters,
            "fit_samples": p.fit_samples,
            **self._extra_fingerprint(),
        }

    def _extra_fingerprint(self) -> dict:
        return {}

    def fit(self, data: FitData) -> None:
        fp = self._fingerprint(data)
        path = T.cache_path(data.run_dir, self.p.cache or self.kind)
        fitted = T.load_cached(path, fp)
        if fitted is None:
            feats = data.teacher_features([self.p.teacher_layer])[self.p.teacher_layer]
            fitted = self._fit(T.to_locations(feats.float(), self.size), data)
            T.save_cached(path, fitted, fp)
        self.fit_state = fitted  # everything fitted (also prototypes / sub-class counts), for inspection
        for name, value in fitted.items():
            if name in self._buffers:
                self._buffers[name].copy_(value.to(self._buffers[name]))

    def _fit(self, locs: torch.Tensor, data: FitData) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _locations(self, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        a = ctx.s_feats[self.scores_tap]
        f = ctx.t_feats[self.p.teacher_layer]
        return T.to_locations(a), T.to_locations(f.float(), self.size)

    def _device(self) -> torch.device:
        return next(iter(self.buffers())).device


# ---------------------------------------------------------------------------------------------- penultimate


class LetKDPenultParams(_LetKDParams):
    # where the penultimate letkd layer is inserted (@last of the CIFAR ResNets)
    student_layer: str = Field("layer3", description="path of the inserted penultimate letkd layer")
    teacher_layer: str = Field("@last", description="teacher last-stage map whose k-means templates are the targets")
    tau: float = Field(1.0, gt=0, description="softmax(-tau · squared distance) of the targets")
    # Instead of tau: calibrate tau at fit time so that the mean target entropy is this many nats (not in the
    # paper; the sharpness of softmax(-||f - rho||^2) depends on the teacher's feature scale).
    target_entropy: float | None = Field(
        None, gt=0, description=("instead of tau: calibrate tau so that the mean target entropy is this many nats")
    )


@TERMS.register(
    "letkd_penult",
    description="letKD-1: KL(softmax(-tau||f_t - rho_k||^2) || softmax(letkd scores)) "
    "over k-means templates of the teacher's last-stage locations",
    paper="Gorgun et al., BMVC 2023",
)
class LetKDPenult(_LetKDTerm):
    Params = LetKDPenultParams
    kind = "letkd_penult"

    def _setup(self, info: SetupInfo) -> None:
        self.register_buffer("centres", torch.zeros(self.k, self.t_channels), persistent=False)
        self.register_buffer("tau", torch.tensor(float(self.p.tau)), persistent=False)
        self.register_buffer("entropy", torch.tensor(float("nan")), persistent=False)

    def _extra_fingerprint(self) -> dict:
        return {"tau": self.p.tau, "target_entropy": self.p.target_entropy}

    def _fit(self, locs: torch.Tensor, data: FitData) -> dict[str, torch.Tensor]:
        return T.fit_penult(
            locs,
            self.k,
            data.seed,
            tau=self.p.tau,
            entropy=self.p.target_entropy,
            iters=self.p.kmeans_iters,
            backend=self.p.kmeans,
            fit_samples=self.p.fit_samples,
            device=self._device(),
        )

    def target(self, f_loc: torch.Tensor) -> torch.Tensor:
        """p_T (L, K) for teacher location vectors (L, C_t)."""
        return F.softmax(-self.tau * T.sq_dists(f_loc.float(), self.centres), dim=1)

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        a, f = self._locations(ctx)
        with torch.no_grad():
            p = self.target(f)
        return {"loss": score_kl(a, p)}


# ---------------------------------------------------------------------------------------------- intermediate


class LetKDInterParams(_LetKDParams):
    # where the intermediate letkd layer is inserted, as a path after all insertions: layer3.0 of a CIFAR ResNet,
    # inside layer3 wrapped by the penultimate layer (recipes/methods/letkd2.yaml)
    student_layer: str = Field(
        "layer3.inner.0", description=("path of the inserted intermediate letkd layer (after all insertions)")
    )
    # the teacher's first block of its last stage (CIFAR ResNets)
    teacher_layer: str = Field("layer3.0", description="teacher block whose sub-class decisions supervise it")
    # 60 for CIFAR-100 in the paper; capped at classes - 1 and C_t
    lda_components: int = Field(
        60, ge=1, description=("LDA components of the teacher features (capped at classes - 1 and channels)")
    )


@TERMS.register(
    "letkd_inter",
    description="letKD-2: KL(s_T[k*] || softmax(letkd scores)), teacher sub-class "
    "decisions (LDA + per-class k-means + confusion)",
    paper="Gorgun et al., BMVC 2023",
)
class LetKDInter(_LetKDTerm):
    Params = LetKDInterParams
    kind = "letkd_inter"

    def _setup(self, info: SetupInfo) -> None:
        c = info.num_classes
        if self.k % c:
            raise KDLabError(
                f"letkd_inter: the layer has {self.k} templates, not a multiple of the {c} classes; "
                "insert it with templates_per_class"
            )
        self.per_class = self.k // c
        self.n_comp = min(self.p.lda_components, c - 1, self.t_channels)
        if self.n_comp < 1:
            raise KDLabError("letkd_inter needs at least 2 classes for LDA")
        self.register_buffer("lda_mean", torch.zeros(self.t_channels), persistent=False)
        self.register_buffer("lda_w", torch.zeros(self.t_channels, self.n_comp), persistent=False)
        self.register_buffer("centres", torch.zeros(self.k, self.n_comp), persistent=False)
        self.register_buffer("s_T", torch.eye(self.k), persistent=False)

    def _extra_fingerprint(self) -> dict:
        return {"per_class": self.per_class, "lda_components": self.n_comp}

    def _fit(self, locs: torch.Tensor, data: FitData) -> dict[str, torch.Tensor]:
        per_image = self.size[0] * self.size[1]
        y = data.labels.long().cpu().repeat_interleave(per_image)
        return T.fit_subclass(
            locs,
            y,
            self.num_classes,
            self.per_class,
            data.seed,
            n_components=self.n_comp,
            iters=self.p.kmeans_iters,
            backend=self.p.kmeans,
            fit_samples=self.p.fit_samples,
            device=self._device(),
        )

    def target(self, f_loc: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """p_T (L, K): s_T[k*] for teacher location vectors (L, C_t) of images of class y (one label per image)."""
        z = (f_loc.float() - self.lda_mean) @ self.lda_w
        y_loc = y.long().to(z.device).repeat_interleave(len(z) // len(y))
        own = self.centres.view(self.num_classes, self.per_class, -1)[y_loc]  # (L, P, n)
        k_star = y_loc * self.per_class + (z[:, None, :] - own).pow(2).sum(-1).argmin(1)
        return self.s_T[k_star]

    def forward(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        a, f = self._locations(ctx)
        with torch.no_grad():
            p = self.target(f, ctx.y)
        return {"loss": score_kl(a, p)}
