"""Transfer strategies: how the student's loss is built from the frozen models' logits.

A strategy declares what it needs (teacher, frozen initial student ``s0``, labels) and computes a
loss from logits that were all produced on the same augmented view; the training loop owns
devices, AMP, seeding and checkpoints. Definitions follow Roth et al. (ICLR 2024), §4/§5.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F

from kt.errors import KtError

if TYPE_CHECKING:
    from kt.registry import Registry

log = logging.getLogger("kt")


@dataclass
class Outputs:
    """Logits of one batch: the student being trained, the teacher(s) and the frozen initial student.

    ``teacher`` is the first of ``teachers``; single-teacher strategies read only it, strategies
    with ``multi_teacher = True`` (parallel multi-teacher transfer) read them all. Teachers' logits
    carry gradients only for a strategy with ``trains_teacher = True``."""

    student: torch.Tensor
    teacher: torch.Tensor | None = None
    initial: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    teachers: list[torch.Tensor] = field(default_factory=list)
    # the features a strategy declares (Strategy.features), by module name: the student's, and one dict
    # per teacher; empty for strategies that declare none
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: list[dict[str, torch.Tensor]] = field(default_factory=list)
    positions: torch.Tensor | None = None  # the samples' positions in the transfer set (memory banks)

    def __post_init__(self) -> None:
        if not self.teachers and self.teacher is not None:
            self.teachers = [self.teacher]
        elif self.teacher is None and self.teachers:
            self.teacher = self.teachers[0]


def kl_div(student: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample KL(softmax(target/T) || softmax(student/T)) * T^2 (the T^2 keeps gradients T-invariant)."""
    log_p_target = F.log_softmax(target.float() / temperature, dim=1)
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    return (log_p_target.exp() * (log_p_target - log_p_student)).sum(1) * temperature**2


def most_confident(candidates: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Per sample, the index of the most confident of K models (``candidates``: K x B x C logits):
    the highest probability of the true class (supervised) or, without labels, the highest top-1
    confidence. Ties go to the lowest index. Probabilities at T = 1."""
    probs = F.softmax(candidates.float(), 2)
    if labels is None:
        conf = probs.max(2).values
    else:
        conf = probs.gather(2, labels[None, :, None].expand(len(candidates), -1, 1))[..., 0]
    return conf.argmax(0)  # argmax returns the first of equal maxima


class _LossPair(NamedTuple):
    value: torch.Tensor
    teacher_mask: torch.Tensor | None = None


class Loss(_LossPair):
    """What :meth:`Strategy.loss` returns when it partitions the batch or has named terms: the loss;
    where a teacher was the target (bool ``(B,)``), whose share is the ``teacher_share`` column of
    metrics.parquet; and the loss's terms by name (``terms``: scalar tensors, e.g. ``{"kl": ..., "ce":
    ...}``), which the training curves show beside the total. Returned rather than stored on the
    strategy, so the mask and terms always belong to the loss they came with. Unpacks as the pair
    ``value, mask`` (as before terms existed); ``terms`` is an attribute."""

    terms: dict[str, torch.Tensor] | None

    def __new__(cls, value: torch.Tensor, teacher_mask: torch.Tensor | None = None,
                terms: dict[str, torch.Tensor] | None = None) -> Loss:
        self = super().__new__(cls, value, teacher_mask)
        self.terms = terms
        return self


@dataclass
class Context:
    """What :meth:`Strategy.build` sizes its modules from: the number of samples in the transfer set and
    their labels (``(N,)``, for memory banks and class-aware sampling), the number of classes, and the
    size of each declared feature (flattened) per model: ``feature_dims["student"]["pooled"]``, and
    ``feature_dims["teacher"]`` for the first teacher."""

    num_samples: int
    num_classes: int
    labels: torch.Tensor
    feature_dims: dict[str, dict[str, int]] = field(default_factory=dict)


_WARNED_LAST_MASK: set[str] = set()


def as_loss(result: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None], strategy: object | None = None) -> Loss:
    """:meth:`Strategy.loss`'s result as a :class:`Loss`: a bare tensor (no partition) or a ``(loss, mask)``
    pair. Deprecated fallback: a strategy that returns a bare tensor but sets ``self.last_mask`` (the
    contract before :class:`Loss`) still gets its mask read, with a warning once per class."""
    if isinstance(result, tuple):
        return result if isinstance(result, Loss) else Loss(*result)
    mask = getattr(strategy, "last_mask", None)
    if mask is not None:
        name = type(strategy).__qualname__
        if name not in _WARNED_LAST_MASK:
            _WARNED_LAST_MASK.add(name)
            log.warning("strategy %s sets last_mask, which is deprecated: return kt.strategies.Loss(loss, "
                        "teacher_mask) from loss() instead (docs/plugins.md)", name)
    return Loss(result, mask)


@dataclass
class Strategy:
    """Base class; subclasses implement :meth:`loss`. Fields are settable from the config."""

    temperature: float = 1.0
    lr: float | None = None  # None: the loop's default (paper: 1e-4 x batch / 256)
    needs_teacher: bool = field(default=True, init=False)
    needs_initial: bool = field(default=False, init=False)
    multi_teacher: bool = field(default=False, init=False)  # reads every teacher of Outputs.teachers
    # module names whose outputs loss() reads (Outputs.student_features / teacher_features), captured
    # by forward hooks; "pooled" is the input of the final linear layer (pooled penultimate features)
    features: tuple[str, ...] = field(default=(), init=False)
    trains_teacher: bool = field(default=False, init=False)  # the teachers learn too, with their own optimiser
    teacher_lr: float | None = field(default=None, init=False)  # None: the student's learning rate

    @property
    def cacheable(self) -> bool:
        """Whether the frozen-output cache can stand in for the teacher: it holds the frozen models'
        logits only, so not for a teacher that trains, nor for features it does not hold."""
        return not self.trains_teacher and not self.features

    def loss(self, out: Outputs) -> torch.Tensor | Loss:
        """The batch's loss: a scalar tensor, or a :class:`Loss` when the strategy partitions the batch."""
        raise NotImplementedError

    def configure(self, batch_size: int) -> None:
        """Called once per run with the training batch size (the one found by an automatic search),
        before :attr:`lr` is read and the optimiser built: for options whose default scales with the batch."""

    def build(self, context: Context) -> dict[str, torch.nn.Module]:
        """Called once at set-up, before a resume: the modules the strategy owns (embedding heads, memory
        banks), by name. The loop moves them to the device, trains their parameters with the student's
        (same optimiser and learning rate), and saves their state (parameters and buffers) in the resume
        point and in the run folder's ``strategy.pt``. Keep references to them: ``loss`` uses them."""
        return {}

    def setup(self, student: torch.nn.Module) -> None:
        """Called once before training (also after resuming) with the initial student."""

    def after_step(self, student: torch.nn.Module, step: int) -> None:
        """Hook for weight-level updates (e.g. slow weights); nothing by default."""

    def eval_model(self, student: torch.nn.Module) -> torch.nn.Module:
        """The weights to evaluate (and save): the student itself by default."""
        return student

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (for resuming)."""


@dataclass
class KL(Strategy):
    """``kl``: the teacher is the target on every sample."""

    def loss(self, out: Outputs) -> torch.Tensor:
        return kl_div(out.student, out.teacher, self.temperature).mean()


@dataclass
class CE(Strategy):
    """``ce``: the control. Continued training on the labels alone (no teacher), on the same views and
    schedule, so a strategy's Δ can be compared with what fine-tuning alone does to the student."""

    def __post_init__(self) -> None:
        self.needs_teacher = False

    def loss(self, out: Outputs) -> torch.Tensor:
        return F.cross_entropy(out.student.float(), out.labels)


@dataclass
class XEKL(Strategy):
    """``xekl``: alpha * KL + (1 - alpha) * cross-entropy on the labels (on logits)."""

    alpha: float = 0.5

    def loss(self, out: Outputs) -> torch.Tensor:
        kl = kl_div(out.student, out.teacher, self.temperature).mean()
        return self.alpha * kl + (1 - self.alpha) * F.cross_entropy(out.student.float(), out.labels)


@dataclass
class KLDP(Strategy):
    """``kl_dp`` / ``kl_dp_unsup``: per sample, the target is the teacher where it is more confident
    than the frozen initial student (see :func:`most_confident`), else the initial student. Pure KL:
    labels only choose the partition, and ``supervised=False`` needs none. With several teachers
    (parallel multi-teacher transfer) the target is the most confident of {initial, teachers...}."""

    supervised: bool = True

    def __post_init__(self) -> None:
        self.needs_initial = True
        self.multi_teacher = True

    def loss(self, out: Outputs) -> Loss:
        candidates = torch.stack([out.initial, *out.teachers])
        pick = most_confident(candidates, out.labels if self.supervised else None)
        target = candidates[pick, torch.arange(len(pick), device=pick.device)]
        return Loss(kl_div(out.student, target, self.temperature).mean(), teacher_mask=pick > 0)


@dataclass
class DKD(Strategy):
    """``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge
    Distillation"), as ``dkd_loss`` in the authors' code (megvii-research/mdistiller,
    ``mdistiller/distillers/DKD.py``). Per sample, with y the label and p = softmax(z / T):

    * TCKD = KL(b_t || b_s)·T², b = (p_y, 1 − p_y) the binary target / non-target distribution;
    * NCKD = KL(p̂_t || p̂_s)·T², p̂ = softmax(z / T) over the non-target classes only (mdistiller
      subtracts 1000 from the target logit; kt drops the column, which is the same up to exp(−1000));

    loss = mean over the batch of alpha·TCKD + beta·NCKD (mdistiller: sums divided by the batch size),
    + ``ce_weight``·cross-entropy on the labels (on logits). ``ce_weight`` is 0 by default, as kt's other
    distillation strategies add no label term; mdistiller uses 1.0 (its ``CE_WEIGHT``) with its own CE.
    ``beta`` 0.5 and T = 1 are mdistiller's ImageNet setting (ResNet-34 → ResNet-18; 2.0 for
    ResNet-50 → MobileNet-V1; its CIFAR default is beta 8, T 4). mdistiller's warm-up (the DKD term
    scaled by min(epoch / WARMUP, 1)) is left out: kt runs few epochs from pretrained students.
    Labels pick the target class, so this strategy needs them."""

    alpha: float = 1.0
    beta: float = 0.5
    ce_weight: float = 0.0

    def loss(self, out: Outputs) -> torch.Tensor:
        student, teacher, labels = out.student.float(), out.teacher.float(), out.labels
        target = F.one_hot(labels, student.shape[1]).bool()
        tckd = kl_div(_binary_logits(student, target, self.temperature),
                      _binary_logits(teacher, target, self.temperature)) * self.temperature**2
        rest = (len(labels), student.shape[1] - 1)  # the non-target logits, in class order
        nckd = kl_div(student[~target].view(rest), teacher[~target].view(rest), self.temperature)
        value = (self.alpha * tckd + self.beta * nckd).mean()
        if self.ce_weight:
            value = value + self.ce_weight * F.cross_entropy(student, labels)
        return value


def _binary_logits(logits: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """B x 2 log-probabilities (log p_y, log(1 − p_y)) of softmax(logits / T), ``target`` the B x C
    one-hot mask of the labels: as logits, softmax of them at T = 1 is the binary distribution."""
    z = logits / temperature
    lse = z.logsumexp(1)
    return torch.stack([z[target] - lse, z.masked_fill(target, float("-inf")).logsumexp(1) - lse], 1)


@dataclass
class AdaptConf(Strategy):
    """``adaptconf``: adaptive confidence distillation for weak-to-strong transfer (Guo et al., 2024,
    "Vision Superalignment: Weak-to-Strong Generalization for Vision Foundation Models",
    arXiv 2402.03749), as ``AdaptConf`` in the authors' code (ggjy/vision_weak_to_strong,
    ``classification/distillers/adaptconf.py``). Per sample, with the hard labels ŝ = argmax z_s (the
    student's own prediction) and t̂ = argmax z_t (the teacher's):

    * ce_self = CE(z_s, ŝ) and ce_teacher = CE(z_s, t̂), both on the student's logits at T = 1;
    * β = exp(ce_self / θ) / (exp(ce_self / θ) + exp(ce_teacher / θ)), detached (θ: ``threshold``,
      the code's ``superalignment_threshold``);
    * loss = mean over the batch of (1 − β)·KL(softmax(z_t/T) ‖ softmax(z_s/T))·T² + β·ce_self,
      + ``ce_weight``·cross-entropy on the labels (the code's ``gt_loss_weight``; 0 by default, as in
      kt's other distillation strategies, so no labels are read).

    Since ce_self ≤ ce_teacher, β ≤ 1/2: it is 1/2 where the student's top-1 agrees with the teacher's
    and falls towards 0 (all weight on the teacher) the less probability the student gives the
    teacher's class. The code's few-shot variant ramps β up over the first quarter of training; its
    classification variant, followed here, does not. The code's ``kd_loss_weight`` (scaling both
    terms) is left out: ``lr`` does that. The README runs θ = 0.5 (CIFAR-100) and 4.0 (ImageNet
    transfer); kt's default θ = 1 is the formula without it. Only the teacher's logits are read, so
    the frozen-output cache serves it."""

    threshold: float = 1.0
    ce_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise KtError(f"adaptconf needs threshold > 0 (got {self.threshold}).")

    def loss(self, out: Outputs) -> torch.Tensor:
        student = out.student.float()
        log_p = F.log_softmax(student, 1)
        ce_self = -log_p.gather(1, student.argmax(1, keepdim=True))[:, 0]
        ce_teacher = -log_p.gather(1, out.teacher.argmax(1, keepdim=True))[:, 0]
        beta = torch.sigmoid((ce_self - ce_teacher) / self.threshold).detach()  # the ratio of exps above
        kd = kl_div(student, out.teacher, self.temperature)
        value = ((1 - beta) * kd + beta * ce_self).mean()
        if self.ce_weight:
            value = value + self.ce_weight * F.cross_entropy(student, out.labels)
        return value


@dataclass
class XEKLMCL(Strategy):
    """``xekl_mcl``: the continual-learning baseline, as in the paper's code (``xe_kl_distill`` and
    ``parse_cfg``). alpha * KL + (1 - alpha) * CE, where the KL term

    * compares student and teacher only on the teacher's top-``k`` classes (both logit vectors are
      gathered at the teacher's top-k indices; the softmax at temperature T runs over those k only);
    * skips the samples the current student gets right and the teacher wrong (negative flips) and is
      averaged over the kept samples, not the batch; a batch without kept samples adds no KL (where the
      paper's code gets 0/0 = NaN and replaces it by 0).

    Slow weights ``slow <- tau * slow + (1 - tau) * fast`` every ``every`` steps are evaluated instead
    of the fast student. The paper scales both schedule knobs with the batch B (:meth:`configure`):
    ``every`` = 2 / (B / 256) steps (kt rounds it, at least 1) and ``lr`` = 1e-2 x B / 256; an option
    set in the config wins over the scaled default.

    Cross-entropy is on logits, as in ``xekl`` and ``ce``. The paper's ``xe_kl_distill`` passes softmax
    probabilities to ``CrossEntropyLoss``, which applies a second softmax: that confines the label term to a
    narrow band near log C and weakens its gradient wherever the student is confident, right or wrong."""

    alpha: float = 0.68
    tau: float = 0.9999
    k: int = 100  # KL over the teacher's top-k classes (clipped to the number of classes)
    every: int | None = None  # None: 2 / (batch / 256) steps, set by configure
    lr: float | None = None  # None: 1e-2 x batch / 256, set by configure
    slow: dict[str, torch.Tensor] | None = field(default=None, init=False, repr=False)  # state, not an option

    def __post_init__(self) -> None:
        if self.k < 1 or (self.every is not None and self.every < 1):
            raise KtError(f"xekl_mcl needs k >= 1 and every >= 1 (got k={self.k}, every={self.every}).")

    def configure(self, batch_size: int) -> None:
        scale = batch_size / 256  # the paper's parse_cfg: lr x scale, N / scale
        if self.every is None:
            self.every = max(1, round(2 / scale))
        if self.lr is None:
            self.lr = 1e-2 * scale

    def loss(self, out: Outputs) -> torch.Tensor:
        kept = ~((out.student.argmax(1) == out.labels) & (out.teacher.argmax(1) != out.labels))
        top = out.teacher.topk(min(self.k, out.teacher.shape[1]), dim=1).indices
        per_sample = kl_div(out.student.gather(1, top), out.teacher.gather(1, top), self.temperature)
        kl = (per_sample * kept).sum() / kept.sum().clamp(min=1)
        return self.alpha * kl + (1 - self.alpha) * F.cross_entropy(out.student.float(), out.labels)

    def setup(self, student: torch.nn.Module) -> None:
        if self.slow is None:
            self.slow = {key: v.detach().clone() for key, v in student.state_dict().items()}

    def after_step(self, student: torch.nn.Module, step: int) -> None:
        if step % self.every:
            return
        state = student.state_dict()
        with torch.no_grad():
            for key, v in state.items():
                if v.dtype.is_floating_point:
                    self.slow[key].mul_(self.tau).add_(v.detach(), alpha=1 - self.tau)
                else:
                    self.slow[key].copy_(v)

    def eval_model(self, student: torch.nn.Module) -> torch.nn.Module:
        import copy

        if self.slow is None:
            return student
        slow = copy.deepcopy(student)
        slow.load_state_dict(self.slow)
        return slow

    def state_dict(self) -> dict[str, Any]:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.slow = state.get("slow")



@dataclass
class BiKD(Strategy):
    """``bikd``: bidirectional knowledge distillation (TMLR 2025, "Simplifying Knowledge
    Transfer in Pretrained Models"), as ``src/train_bi_kd.py`` (two models) and ``src/train_tri_kd.py`` /
    ``train_quad_kd.py`` (three, four) in the authors' code (Syd-J/Bi-KD). Every model trains: the
    student with the run's optimiser, the teachers with their own (``teacher_lr``; None: the student's).
    Per sample, with p_i = softmax(z_i) (T = 1) and c_i = p_i[y] each model's probability of the label:

    * two models: the teacher teaches where c_t > c_s, else (ties included) the student does; the
      teacher's term KL(p_t ‖ p_s), the student's KL(p_s ‖ p_t);
    * n models: the one model with the highest c teaches each other one, KL(p_k ‖ p_j) summed over j;
      a sample whose highest c is shared gets no KL term;

    loss = Σ_i CE(z_i, y) + mean over the batch of the teaching model's term. As in the authors'
    code, neither side is detached: the teaching model also gets the KL's gradient. kt computes
    log p with ``log_softmax`` (the code: ``softmax(z).log()``, the same where no probability
    underflows). The code trains with Adam at lr 1e-6 for both models; kt's optimiser is SGD at the
    run's learning rate. The teacher mask (``teacher_share``) marks samples taught by a teacher."""

    def __post_init__(self) -> None:
        self.multi_teacher = True
        self.trains_teacher = True

    def loss(self, out: Outputs) -> Loss:
        logits = [out.student.float(), *(t.float() for t in out.teachers)]
        log_p = torch.stack([F.log_softmax(z, 1) for z in logits])  # K x B x C
        conf = log_p.exp().gather(2, out.labels[None, :, None].expand(len(logits), -1, 1))[..., 0]  # K x B
        best = conf.max(0)
        if len(logits) == 2:  # the student teaches on ties (train_bi_kd.py: mask_s = gt_t <= gt_s)
            teacher = (conf[1] > conf[0]).long()
            valid = torch.ones_like(teacher, dtype=torch.bool)
        else:  # train_tri_kd.py: only samples with one most confident model
            teacher, valid = best.indices, (conf == best.values).sum(0) == 1
        rows = torch.arange(len(teacher), device=teacher.device)
        source = log_p[teacher, rows]  # B x C, the teaching model's log-probabilities
        kl = (source.exp()[None] * (source[None] - log_p)).sum(2).sum(0)  # Σ_j KL(p_k || p_j); 0 for j = k
        ce = [F.cross_entropy(z, out.labels) for z in logits]
        kd = (kl * valid).mean()
        terms = {"kd": kd.detach(), "ce_student": ce[0].detach(), "ce_teachers": sum(ce[1:]).detach()}
        return Loss(sum(ce) + kd, teacher_mask=valid & (teacher > 0), terms=terms)


@dataclass
class CRD(Strategy):
    """``crd``: contrastive representation distillation (Tian et al., ICLR 2020), as the paper's code
    runs it (ExplainableML/FantasticGains ``distillation/contrastive/``: RepDistiller's ``CRDLoss``,
    ``ContrastMemory`` and ``ContrastLoss``; ``config/distillation/crd_dist.yaml``). On the pooled
    penultimate features of student and teacher:

    * embedding heads ``Linear(dim, feat_dim)`` + L2 norm for each (trained with the student);
    * two memory banks (N x feat_dim, uniform in ±1/sqrt(feat_dim/3)) of student and teacher
      embeddings, updated at each sample's position: m·old + (1 − m)·new, renormalised;
    * per sample, the positive (its own position) and ``nce_k`` negatives drawn with replacement from
      the other classes; scores exp(⟨memory row, embedding⟩ / nce_t) / Z, Z fixed from the first batch
      as mean score × N;
    * NCE: −(Σ log P₊/(P₊ + K/N) + Σ log (K/N)/(P₋ + K/N)) / B for each side (eps 1e-7), summed.

    loss = gamma·CE(z_s, y) + alpha·KL(T) + beta·CRD with the paper's gamma 1, alpha 0, beta 0.8, T 4
    and nce_k 4096 (RepDistiller's default: 16384; its "CRD+KD" is alpha 1). ``nce_k`` is clipped to
    the number of samples outside the largest class. Teacher features are read from the teacher in
    eval mode (the paper's code leaves its backbone in train mode)."""

    temperature: float = 4.0
    gamma: float = 1.0
    alpha: float = 0.0
    beta: float = 0.8
    feat_dim: int = 128
    nce_k: int = 4096
    nce_t: float = 0.07
    nce_m: float = 0.5

    def __post_init__(self) -> None:
        self.features = ("pooled",)
        if self.nce_k < 1 or self.nce_t <= 0 or not 0 <= self.nce_m < 1 or self.feat_dim < 1:
            raise KtError(f"crd needs nce_k >= 1, nce_t > 0, 0 <= nce_m < 1 and feat_dim >= 1 (got nce_k="
                          f"{self.nce_k}, nce_t={self.nce_t}, nce_m={self.nce_m}, feat_dim={self.feat_dim}).")

    def build(self, context: Context) -> dict[str, torch.nn.Module]:
        dims = context.feature_dims
        self.embed_s = Embed(dims["student"]["pooled"], self.feat_dim)
        self.embed_t = Embed(dims["teacher"]["pooled"], self.feat_dim)
        self.memory = ContrastMemory(self.feat_dim, context.labels, self.nce_k, self.nce_t, self.nce_m)
        return {"embed_s": self.embed_s, "embed_t": self.embed_t, "memory": self.memory}

    def loss(self, out: Outputs) -> Loss:
        student = out.student.float()
        f_s = self.embed_s(out.student_features["pooled"].float())
        f_t = self.embed_t(out.teacher_features[0]["pooled"].float().detach())
        scores_s, scores_t = self.memory(f_s, f_t, out.positions)
        crd = contrast_loss(scores_s, self.memory.k, self.memory.n) + contrast_loss(scores_t, self.memory.k,
                                                                                    self.memory.n)
        ce = F.cross_entropy(student, out.labels)
        value = self.gamma * ce + self.beta * crd
        terms = {"crd": crd.detach(), "ce": ce.detach()}
        if self.alpha:
            kl = kl_div(student, out.teacher, self.temperature).mean()
            value, terms["kl"] = value + self.alpha * kl, kl.detach()
        return Loss(value, terms=terms)


class Embed(torch.nn.Module):
    """RepDistiller's ``Embed``: a linear map to the embedding, L2-normalised (no epsilon, as there)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(1, keepdim=True).sqrt()


class ContrastMemory(torch.nn.Module):
    """RepDistiller's ``ContrastMemory`` with the paper code's sampling: memory banks of both models'
    embeddings, the normalising constants (fixed from the first batch, then saved with the banks), and
    negatives from the other classes. Buffers only: nothing in it is trained by the optimiser. The
    label tables that sampling reads stay on the CPU, where the loader's positions are: drawing
    negatives never waits for the GPU."""

    def __init__(self, dim: int, labels: torch.Tensor, k: int, temperature: float, momentum: float) -> None:
        super().__init__()
        self.labels = labels.long().cpu()  # plain attributes, not buffers: .to(device) leaves them here
        self.n = len(self.labels)
        self.counts = torch.bincount(self.labels)
        self.k = min(k, self.n - int(self.counts.max()))
        if self.k < 1:
            raise KtError("crd needs samples of at least two classes in the transfer set.")
        self.by_class = torch.argsort(self.labels, stable=True)  # positions grouped by class
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.temperature, self.momentum = temperature, momentum
        stdv = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(self.n, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(self.n, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # Z_s, Z_t: -1 until the first batch

    def negatives(self, labels: torch.Tensor) -> torch.Tensor:
        """B x k positions (CPU) drawn uniformly, with replacement, from the samples of other classes (the
        paper's ``get_contrast_idx``), with the run's seeded CPU generator: a draw u in [0, N − n_y)
        skips class y's block of ``by_class``."""
        labels = labels.cpu()
        u = (torch.rand(len(labels), self.k, dtype=torch.float64) * (self.n - self.counts[labels])[:, None]).long()
        return self.by_class[u + (u >= self.starts[labels][:, None]) * self.counts[labels][:, None]]

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, positions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B x (1 + k)) of the student's embedding against the teacher's bank and the teacher's
        against the student's (positive first), then the banks updated at ``positions`` (the samples'
        positions in the transfer set)."""
        positions = positions.cpu()
        idx = torch.cat([positions[:, None], self.negatives(self.labels[positions])], 1).to(f_s.device,
                                                                                            non_blocking=True)
        scores_s = torch.exp(torch.bmm(self.memory_t[idx].detach(), f_s[:, :, None])[..., 0] / self.temperature)
        scores_t = torch.exp(torch.bmm(self.memory_s[idx].detach(), f_t[:, :, None])[..., 0] / self.temperature)
        with torch.no_grad():  # Z from the first batch, then fixed; torch.where: no host sync on a GPU
            first = torch.stack([scores_s.mean(), scores_t.mean()]) * self.n
            self.z.copy_(torch.where(self.z < 0, first, self.z))
        scores_s, scores_t = scores_s / self.z[0], scores_t / self.z[1]
        rows = idx[:, 0]
        with torch.no_grad():
            for bank, f in ((self.memory_s, f_s), (self.memory_t, f_t)):
                row = bank[rows] * self.momentum + f.detach() * (1 - self.momentum)
                bank[rows] = row / row.pow(2).sum(1, keepdim=True).sqrt()
        return scores_s, scores_t


def contrast_loss(scores: torch.Tensor, k: int, n: int, eps: float = 1e-7) -> torch.Tensor:
    """RepDistiller's ``ContrastLoss``: NCE with noise K/N; ``scores`` B x (1 + K), positive first."""
    noise = k / n
    log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / len(scores)


def make_strategy(name: str, options: dict[str, Any], registry: Registry) -> Strategy:
    """The strategy registered as ``name``, built with its config options; whatever its own checks
    raise ends as one line naming the config key and the plugin."""
    factory = registry.get("strategies", name)
    try:
        return factory(**options)
    except KtError:
        raise
    except TypeError as e:
        raise KtError(f"strategy {name!r} does not accept options {sorted(options)} "
                      f"(config key transfer.options.{name}): {e}.") from None
    except Exception as e:  # noqa: BLE001 - a plugin's own validation (ValueError, assert, ...)
        raise KtError(f"config key transfer.options.{name}: {registry.who('strategies', name)} rejected the "
                      f"options {options}: {type(e).__name__}: {e}") from None
