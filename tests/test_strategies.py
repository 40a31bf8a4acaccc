"""Transfer strategies on hand-made logits: every loss against arithmetic written out in the test (math /
numpy, never kt's own helpers), the data-partitioning masks with their tie rules, and the slow weights of
XE-KL+MCL. Definitions: README "Strategies" and docs/paper-code.md (Roth et al., ICLR 2024)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kt.errors import KtError
from kt.registry import Registry
from kt.strategies import KL, KLDP, XEKL, XEKLMCL, Loss, Outputs, as_loss, kl_div, most_confident
from kt.transfer import TransferSettings

# ---------------------------------------------------------------------------------------------- hand arithmetic


def dp_mask(teacher: torch.Tensor, initial: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """KL+DP's partition for one teacher, through the loss's own building block: True where the
    teacher is strictly more confident than the frozen initial student (ties go to the student)."""
    return most_confident(torch.stack([initial, teacher]), labels) == 1


def softmax(row: list[float], t: float = 1.0) -> list[float]:
    """softmax(row / t), one exp per entry, written out."""
    exps = [math.exp(z / t) for z in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl(target: list[float], student: list[float], t: float = 1.0) -> float:
    """KL(softmax(target/t) || softmax(student/t)) = sum_i p_i (log p_i - log q_i), without the t² factor."""
    p, q = softmax(target, t), softmax(student, t)
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))


def xent(logits: list[float], label: int) -> float:
    """Cross-entropy on logits: -log softmax(logits)[label]."""
    return -math.log(softmax(logits)[label])


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]
TEACHER = [[3.0, 0.0, -1.0], [0.5, 0.5, 1.0], [-2.0, 4.0, 0.0]]


def close(value: torch.Tensor | float, expected: float, rel: float = 1e-5) -> bool:
    value = value.detach() if isinstance(value, torch.Tensor) else value
    return float(value) == pytest.approx(expected, rel=rel, abs=1e-7)


# ---------------------------------------------------------------------------------------------- KL and kl / xekl


def test_kl_div_matches_hand_computed_kl_per_sample() -> None:
    out = kl_div(t(STUDENT), t(TEACHER))
    assert out.shape == (3,)
    for i in range(3):
        assert close(out[i], kl(TEACHER[i], STUDENT[i]))
    # one row spelled out completely: p = softmax([3, 0, -1]), q = softmax([1, 2, 0.5])
    p = [math.exp(3) / (math.exp(3) + 1 + math.exp(-1)), 1 / (math.exp(3) + 1 + math.exp(-1)),
         math.exp(-1) / (math.exp(3) + 1 + math.exp(-1))]
    zq = math.exp(1) + math.exp(2) + math.exp(0.5)
    q = [math.exp(1) / zq, math.exp(2) / zq, math.exp(0.5) / zq]
    assert close(out[0], sum(p[i] * math.log(p[i] / q[i]) for i in range(3)))
    # KL is zero for equal distributions (also for logits shifted by a constant), positive otherwise
    assert kl_div(t(TEACHER), t(TEACHER)).abs().max() < 1e-6
    assert kl_div(t(TEACHER) + 5.0, t(TEACHER)).abs().max() < 1e-6
    assert (out > 0).all()


@pytest.mark.parametrize("temperature", [2.0, 4.0, 0.5])
def test_kl_div_temperature_scales_by_t_squared(temperature: float) -> None:
    out = kl_div(t(STUDENT), t(TEACHER), temperature)
    for i in range(3):
        softened = kl(TEACHER[i], STUDENT[i], temperature)  # KL of softmax(z / T)
        assert close(out[i], temperature**2 * softened)
        assert not close(out[i], kl(TEACHER[i], STUDENT[i]), rel=1e-3)  # not the T = 1 value
    # T = 2, row 1, by hand: softmax([0.25, 0.25, 0.5]) against softmax([0, -0.5, 1.5]), times 4
    p = softmax([0.25, 0.25, 0.5])
    q = softmax([0.0, -0.5, 1.5])
    if temperature == 2.0:
        assert close(out[1], 4 * sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)))


def test_kl_strategy_is_the_batch_mean_of_kl_to_the_teacher() -> None:
    strategy = KL()
    assert strategy.needs_teacher and not strategy.needs_initial
    loss = strategy.loss(Outputs(student=t(STUDENT), teacher=t(TEACHER)))
    assert loss.ndim == 0
    assert close(loss, sum(kl(TEACHER[i], STUDENT[i]) for i in range(3)) / 3)
    loss_t2 = KL(temperature=2.0).loss(Outputs(student=t(STUDENT), teacher=t(TEACHER)))
    assert close(loss_t2, 4 * sum(kl(TEACHER[i], STUDENT[i], 2.0) for i in range(3)) / 3)
    assert isinstance(loss, torch.Tensor)  # the teacher is the target everywhere: no partition (mask) to report


def test_xekl_is_half_kl_plus_half_cross_entropy_on_logits() -> None:
    labels = [2, 0, 1]
    strategy = XEKL()
    assert strategy.alpha == 0.5 and strategy.needs_teacher
    loss = strategy.loss(Outputs(student=t(STUDENT), teacher=t(TEACHER), labels=torch.tensor(labels)))
    kl_mean = sum(kl(TEACHER[i], STUDENT[i]) for i in range(3)) / 3
    ce_mean = sum(xent(STUDENT[i], labels[i]) for i in range(3)) / 3
    assert close(loss, 0.5 * kl_mean + 0.5 * ce_mean)
    # cross-entropy on logits, not on probabilities: -log softmax(z)[y], not -log softmax(softmax(z))[y]
    ce_on_probs = sum(xent(softmax(STUDENT[i]), labels[i]) for i in range(3)) / 3
    assert not close(loss, 0.5 * kl_mean + 0.5 * ce_on_probs, rel=1e-3)
    alpha = XEKL(alpha=0.25).loss(Outputs(student=t(STUDENT), teacher=t(TEACHER), labels=torch.tensor(labels)))
    assert close(alpha, 0.25 * kl_mean + 0.75 * ce_mean)


class LegacyMask(KL):
    """A plugin written for the contract before Loss: the mask set on the strategy, a bare tensor returned."""

    def loss(self, out: Outputs) -> torch.Tensor:
        self.last_mask = torch.tensor([True, False, True])
        return super().loss(out)


def test_the_loop_reads_the_mask_from_what_loss_returns(caplog: pytest.LogCaptureFixture) -> None:
    """A bare tensor (no partition), a Loss or a (loss, mask) pair; the deprecated last_mask still read."""
    value, mask = torch.tensor(1.0), torch.tensor([True, False])
    plain = as_loss(value, KL())
    assert plain.value is value and plain.teacher_mask is None
    pair = as_loss((value, mask))
    assert isinstance(pair, Loss) and pair.value is value and pair.teacher_mask is mask
    assert as_loss(pair) is pair
    legacy = LegacyMask()
    with caplog.at_level("WARNING", logger="kt"):
        for _ in range(2):
            read = as_loss(legacy.loss(Outputs(student=t(STUDENT), teacher=t(TEACHER))), legacy)
            assert read.teacher_mask.tolist() == [True, False, True]
    assert close(read.value, sum(kl(TEACHER[i], STUDENT[i]) for i in range(3)) / 3)
    assert len([r for r in caplog.records if "last_mask" in r.getMessage()]) == 1  # warned once per class


# ---------------------------------------------------------------------------------------------- data partitioning

# Rows: (teacher, initial, label). Supervised rule: teacher iff p_teacher[y] > p_initial[y] strictly.
DP_ROWS = [
    ([0.0, 3.0, 0.0], [0.0, 1.0, 0.0], 1),   # teacher surer of the true class -> teacher
    ([0.0, 1.0, 0.0], [0.0, 3.0, 0.0], 1),   # initial surer of the true class -> initial
    ([1.0, 0.5, -2.0], [1.0, 0.5, -2.0], 0),  # identical rows: exact tie -> initial
    ([3.0, 1.0, 1.0], [2.0, 0.0, 0.0], 0),   # logits shifted by a constant: same probabilities, tie -> initial
    ([5.0, 0.0, 0.0], [0.0, 0.0, 0.1], 2),   # teacher confident but wrong: p_t[2] < p_0[2] -> initial
    ([0.0, 0.0, 1.0], [9.0, 0.0, 0.0], 2),   # teacher right, initial confidently wrong -> teacher
]


def dp_columns(rows: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return t([r[0] for r in rows]), t([r[1] for r in rows]), torch.tensor([r[2] for r in rows])


def test_dp_mask_supervised_teacher_iff_strictly_higher_true_class_probability() -> None:
    teacher, initial, labels = dp_columns(DP_ROWS)
    expected = [softmax(tr)[y] > softmax(ir)[y] for tr, ir, y in DP_ROWS]
    assert expected == [True, False, False, False, False, True]
    mask = dp_mask(teacher, initial, labels)
    assert mask.dtype == torch.bool
    assert mask.tolist() == expected
    # the exact ties really are ties in torch's own softmax: equality must not flip to the teacher
    for i in (2, 3):
        p_t, p_0 = torch.softmax(teacher[i], 0)[labels[i]], torch.softmax(initial[i], 0)[labels[i]]
        assert p_t == p_0 and not mask[i]


def test_dp_mask_unsupervised_compares_top1_confidence_with_ties_to_initial() -> None:
    rows = [
        ([0.0, 4.0, 0.0], [2.0, 0.0, 0.0]),   # teacher more confident (in another class) -> teacher
        ([1.0, 0.0, 0.0], [0.0, 0.0, 3.0]),   # initial more confident -> initial
        ([0.5, 2.0, 0.0], [0.5, 2.0, 0.0]),   # identical rows: tie -> initial
        ([4.0, 2.0, 2.0], [2.0, 0.0, 0.0]),   # shifted by a constant: tie -> initial
    ]
    teacher, initial = t([r[0] for r in rows]), t([r[1] for r in rows])
    expected = [max(softmax(a)) > max(softmax(b)) for a, b in rows]
    assert expected == [True, False, False, False]
    assert dp_mask(teacher, initial, None).tolist() == expected


def test_kl_dp_is_pure_kl_to_the_selected_target() -> None:
    teacher, initial, labels = dp_columns(DP_ROWS)
    mask = [softmax(tr)[y] > softmax(ir)[y] for tr, ir, y in DP_ROWS]
    targets = [tr if m else ir for (tr, ir, _), m in zip(DP_ROWS, mask, strict=True)]
    strategy = KLDP()
    assert strategy.needs_teacher and strategy.needs_initial

    # a student equal to the selected target on every sample has loss 0, although its cross-entropy on the
    # labels is far from 0: there is no cross-entropy term
    ce = sum(xent(z, y) for z, (_, _, y) in zip(targets, DP_ROWS, strict=True)) / len(DP_ROWS)
    assert ce > 0.3
    zero, returned_mask = strategy.loss(Outputs(student=t(targets), teacher=teacher, initial=initial, labels=labels))
    assert abs(float(zero)) < 1e-7
    assert returned_mask.tolist() == mask  # returned with the loss: the teacher_share of metrics.parquet

    # any student: the mean KL to the per-sample target
    student = [[0.2, -0.3, 1.1], [1.0, 0.0, 0.0], [0.0, 2.0, -1.0], [0.3, 0.3, 0.3], [-1.0, 0.5, 2.0],
               [2.5, 0.0, 1.0]]
    loss = strategy.loss(Outputs(student=t(student), teacher=teacher, initial=initial, labels=labels)).value
    assert close(loss, sum(kl(tg, s) for tg, s in zip(targets, student, strict=True)) / len(student))


def test_kl_dp_labels_act_only_through_the_mask() -> None:
    teacher, initial, labels = dp_columns(DP_ROWS)
    student = t([[0.2, -0.3, 1.1]] * len(DP_ROWS))
    strategy = KLDP()
    base = strategy.loss(Outputs(student=student, teacher=teacher, initial=initial, labels=labels)).value

    # other labels that leave the partition unchanged leave the loss unchanged (bit for bit)
    same_mask = labels.clone()
    same_mask[2], same_mask[3] = 1, 2  # ties stay ties whatever the label
    assert dp_mask(teacher, initial, same_mask).tolist() == dp_mask(teacher, initial, labels).tolist()
    assert torch.equal(strategy.loss(Outputs(student=student, teacher=teacher, initial=initial,
                                             labels=same_mask)).value, base)

    # labels that flip the partition change the loss to the KL against the new targets
    flipped = labels.clone()
    flipped[0], flipped[1] = 0, 0  # row 0: p_t[0] < p_0[0] -> initial; row 1: p_t[0] > p_0[0] -> teacher
    new_mask = [softmax(tr)[y] > softmax(ir)[y] for (tr, ir, _), y in zip(DP_ROWS, flipped.tolist(), strict=True)]
    assert new_mask[:2] == [False, True]
    loss, flipped_mask = strategy.loss(Outputs(student=student, teacher=teacher, initial=initial, labels=flipped))
    assert flipped_mask.tolist() == new_mask
    row = [0.2, -0.3, 1.1]
    expected = sum(kl(tr if m else ir, row) for (tr, ir, _), m in zip(DP_ROWS, new_mask, strict=True))
    assert close(loss, expected / len(DP_ROWS))
    assert not close(loss, float(base), rel=1e-4)


def test_kl_dp_unsup_ignores_labels() -> None:
    factory = Registry().get("strategies", "kl_dp_unsup")
    strategy = factory()
    assert isinstance(strategy, KLDP) and not strategy.supervised
    assert strategy.needs_initial
    teacher, initial, labels = dp_columns(DP_ROWS)
    student = [[0.2, -0.3, 1.1], [1.0, 0.0, 0.0], [0.0, 2.0, -1.0], [0.3, 0.3, 0.3], [-1.0, 0.5, 2.0],
               [2.5, 0.0, 1.0]]
    no_labels, returned_mask = strategy.loss(Outputs(student=t(student), teacher=teacher, initial=initial,
                                                     labels=None))
    mask = [max(softmax(tr)) > max(softmax(ir)) for tr, ir, _ in DP_ROWS]
    assert returned_mask.tolist() == mask
    targets = [tr if m else ir for (tr, ir, _), m in zip(DP_ROWS, mask, strict=True)]
    assert close(no_labels, sum(kl(tg, s) for tg, s in zip(targets, student, strict=True)) / len(student))
    for seed in range(3):  # any labels give the very same loss
        random_labels = torch.randint(0, 3, (len(DP_ROWS),), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(strategy.loss(Outputs(student=t(student), teacher=teacher, initial=initial,
                                                 labels=random_labels)).value, no_labels)
    assert isinstance(partial(KLDP, supervised=False)(), KLDP)


# ---------------------------------------------------------------------------------------------- XE-KL + MCL


def test_xekl_mcl_defaults() -> None:
    s = XEKLMCL()
    assert (s.alpha, s.tau, s.k, s.every, s.lr) == (0.68, 0.9999, 100, None, None)  # every, lr: from the batch
    assert s.needs_teacher and not s.needs_initial
    for bad in ({"k": 0}, {"every": 0}):
        with pytest.raises(KtError, match="xekl_mcl needs k >= 1 and every >= 1"):
            XEKLMCL(**bad)


def paper_parse_cfg(batch_size: int, lr: float = 0.01, n: float = 2) -> tuple[float, float]:
    """The paper's parse_cfg for its xekl_mcl config (optimizer.lr 0.01, loss.N 2), one device:
    scale = batch / 256; lr * scale; N / scale (a float, not rounded)."""
    scale = batch_size / 256
    return lr * scale, n / scale


@pytest.mark.parametrize(("batch", "every", "lr"), [(128, 4, 5e-3), (256, 2, 1e-2), (512, 1, 2e-2),
                                                      (1024, 1, 4e-2)])
def test_xekl_mcl_scales_interval_and_lr_with_the_batch_as_the_paper(batch: int, every: int, lr: float) -> None:
    s = XEKLMCL()
    s.configure(batch)
    assert s.every == every and s.lr == pytest.approx(lr, rel=1e-12)
    paper_lr, paper_n = paper_parse_cfg(batch)
    assert s.lr == pytest.approx(paper_lr, rel=1e-12)
    # the same spacing as the paper's j % N == 0 (j: steps from 0 in the epoch); at 1024 its N = 0.5 fires every step
    assert [j for j in range(8) if j % paper_n == 0] == list(range(0, 8, every))
    # through the loop's entry point, which hands the strategy the (possibly searched) batch size
    fresh = XEKLMCL()
    assert TransferSettings(batch_size=batch, lr=0.5).learning_rate(fresh) == pytest.approx(lr, rel=1e-12)
    assert fresh.every == every
    # an option set in the config wins over the scaled default
    own = XEKLMCL(every=3, lr=0.1)
    own.configure(batch)
    assert (own.every, own.lr) == (3, 0.1)


def paper_xekl_mcl_step(out_s: torch.Tensor, out_t: torch.Tensor, labels: torch.Tensor, k: int,
                        kd_t: float = 1.0, alpha: float = 0.68) -> torch.Tensor:
    """One step of the paper's xe_kl_distill for loss xekl_mcl (on_flip: pos/neut distill, neg nothing),
    written with the torch ops of its code (the top-k gather, get_flip_masks, DistillKL), except that the
    cross-entropy is on logits as in kt (the paper passes softmax(out_s) to CrossEntropyLoss)."""
    _, top_k_idx = torch.topk(out_t, k)
    topk_out_s = torch.empty((len(out_s), k))
    topk_out_t = torch.empty((len(out_s), k))
    for i, index in enumerate(top_k_idx):  # the teacher's top-k indices, applied to both models
        topk_out_s[i] = torch.index_select(out_s[i], 0, index)
        topk_out_t[i] = torch.index_select(out_t[i], 0, index)
    _, s_preds = torch.max(out_s, 1)
    _, t_preds = torch.max(out_t, 1)
    neg_mask = torch.logical_and(torch.ne(t_preds, labels), torch.eq(s_preds, labels))
    y_s, y_t = topk_out_s[torch.logical_not(neg_mask)], topk_out_t[torch.logical_not(neg_mask)]
    p_s = F.log_softmax(y_s / kd_t, dim=1)
    p_t = F.softmax(y_t / kd_t, dim=1)
    kl_loss = F.kl_div(p_s, p_t, reduction="sum") * (kd_t**2) / y_s.shape[0]  # mean over the kept samples
    if torch.isnan(kl_loss):  # no kept sample: 0 / 0
        kl_loss = torch.zeros(1)
    xe_loss = torch.nn.CrossEntropyLoss()(out_s, labels)
    return alpha * kl_loss + (1 - alpha) * xe_loss


LN2 = math.log(2)
# Batch 4, 5 classes, k = 3. Rows 0 and 3: the teacher's top-3 logits give p = (1/2, 1/4, 1/4), the student's
# logits there are equal (q uniform), so KL = 1/2 ln(3/2) + 2 * 1/4 ln(3/4) = 1/2 ln(9/8); their student's
# largest logit lies outside the top 3 and never enters the KL. Row 2: the student's top-3 logits are the
# teacher's + 1, so KL = 0. Row 1 is a negative flip (student right, teacher wrong): skipped.
MCL_LABELS = [0, 1, 3, 2]
MCL_STUDENT = [[0.0, 0.0, 0.0, 3.0, -1.0],   # wrong (3)  -> with the teacher right: positive flip, kept
               [0.0, 4.0, 0.0, 0.0, 0.0],    # right (1)
               [5.0, 3.0, 1.0, 2.0, 0.0],    # wrong (0)
               [1.0, 7.0, 1.0, 0.0, 1.0]]    # wrong (1)
MCL_TEACHER = [[LN2, 0.0, 0.0, -5.0, -5.0],  # right (0), top 3: classes 0, 1, 2
               [3.0, 0.0, 1.0, 2.0, -1.0],   # wrong (0) -> row 1 is a negative flip
               [-1.0, 2.0, 0.0, 1.0, -3.0],  # wrong (1), top 3: classes 1, 3, 2 -> both wrong, kept
               [0.0, -2.0, LN2, -3.0, 0.0]]  # right (2), top 3: classes 2, 0, 4


def test_xekl_mcl_reproduces_one_step_of_the_paper_code() -> None:
    student, teacher, labels = t(MCL_STUDENT), t(MCL_TEACHER), torch.tensor(MCL_LABELS)
    out = Outputs(student=student, teacher=teacher, labels=labels)
    loss = XEKLMCL(k=3).loss(out)
    ce = sum(xent(MCL_STUDENT[i], MCL_LABELS[i]) for i in range(4)) / 4
    kl_kept = (0.5 * math.log(9 / 8) + 0.0 + 0.5 * math.log(9 / 8)) / 3  # ln(9/8) / 3 = 0.0392610, 3 kept rows
    assert kl_kept == pytest.approx(0.0392610, abs=1e-7)
    assert close(loss, 0.68 * kl_kept + 0.32 * ce)
    assert close(loss, float(paper_xekl_mcl_step(student, teacher, labels, k=3)))
    # averaged over the kept samples, not the batch of 4
    assert not close(loss, 0.68 * math.log(9 / 8) / 4 + 0.32 * ce, rel=1e-3)
    # the KL over all 5 classes differs: the student's large logits outside the top 3 count there
    assert not close(XEKLMCL(k=5).loss(out), float(loss), rel=1e-3)
    # the paper's double softmax (CE on probabilities) is a different number; kt keeps CE on logits
    ce_on_probs = sum(xent(softmax(MCL_STUDENT[i]), MCL_LABELS[i]) for i in range(4)) / 4
    assert not close(loss, 0.68 * kl_kept + 0.32 * ce_on_probs, rel=1e-3)
    # at T = 2 both agree too (T^2 times the KL of the softened top-3 distributions)
    assert close(XEKLMCL(k=3, temperature=2.0).loss(out),
                 float(paper_xekl_mcl_step(student, teacher, labels, 3, 2.0)))


def test_xekl_mcl_clips_k_to_the_class_count() -> None:
    student, teacher, labels = t(MCL_STUDENT), t(MCL_TEACHER), torch.tensor(MCL_LABELS)
    out = Outputs(student=student, teacher=teacher, labels=labels)
    with pytest.raises(RuntimeError):
        torch.topk(teacher, 100)  # the paper's code would stop here; kt clips k
    default = XEKLMCL().loss(out)  # k = 100 > 5 classes: all 5
    assert torch.equal(default, XEKLMCL(k=5).loss(out))
    assert close(default, float(paper_xekl_mcl_step(student, teacher, labels, k=5)))
    kept = [0, 2, 3]
    full_kl = sum(kl(MCL_TEACHER[i], MCL_STUDENT[i]) for i in kept) / 3
    assert close(default, 0.68 * full_kl + 0.32 * sum(xent(MCL_STUDENT[i], MCL_LABELS[i]) for i in range(4)) / 4)


def test_xekl_mcl_batch_without_kept_samples_is_cross_entropy_alone() -> None:
    # every row a negative flip: the student right, the teacher wrong; the paper's 0 / 0 KL becomes 0
    labels = [0, 1]
    student = t([[2.0, 0.0, 0.0], [0.0, 1.0, 0.5]]).requires_grad_()
    teacher = t([[0.0, 3.0, 0.0], [2.0, 0.0, 1.0]])
    loss = XEKLMCL(k=2).loss(Outputs(student=student, teacher=teacher, labels=torch.tensor(labels)))
    ce = (xent([2.0, 0.0, 0.0], 0) + xent([0.0, 1.0, 0.5], 1)) / 2
    assert close(loss.detach(), 0.32 * ce)
    assert close(loss.detach(), float(paper_xekl_mcl_step(student.detach(), teacher, torch.tensor(labels), k=2)))
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_xekl_mcl_skips_kl_exactly_on_negative_flips() -> None:
    labels = [0, 1, 2, 0]
    student = [[3.0, 0.0, 0.0],   # right
               [2.0, 0.0, 1.0],   # wrong
               [0.0, 1.0, 2.0],   # right
               [0.0, 1.0, 0.0]]   # wrong
    teacher = [[0.0, 2.0, 0.0],   # wrong -> row 0 is a negative flip: KL skipped
               [0.0, 3.0, 1.0],   # right (positive flip)
               [0.0, 0.0, 1.5],   # right (both right)
               [0.0, 0.0, 2.0]]   # wrong (both wrong)
    negative = [int(np.argmax(s)) == y and int(np.argmax(tt)) != y
                for s, tt, y in zip(student, teacher, labels, strict=True)]
    assert negative == [True, False, False, False]
    strategy = XEKLMCL()  # k = 100, clipped to the 3 classes: the KL over all of them
    loss = strategy.loss(Outputs(student=t(student), teacher=t(teacher), labels=torch.tensor(labels)))
    kl_kept = sum(kl(teacher[i], student[i]) for i in range(4) if not negative[i]) / 3  # mean over the 3 kept
    ce = sum(xent(student[i], labels[i]) for i in range(4)) / 4
    assert close(loss, 0.68 * kl_kept + 0.32 * ce)

    # the skipped row's teacher does not matter (as long as it stays wrong); a kept row's teacher does
    other = [row[:] for row in teacher]
    other[0] = [0.0, 0.0, 7.0]
    assert torch.equal(strategy.loss(Outputs(student=t(student), teacher=t(other), labels=torch.tensor(labels))),
                       loss)
    other = [row[:] for row in teacher]
    other[3] = [0.0, 7.0, 0.0]
    assert not torch.equal(strategy.loss(Outputs(student=t(student), teacher=t(other),
                                                 labels=torch.tensor(labels))), loss)
    # no negative flip -> plain 0.68 KL + 0.32 CE over every sample
    right_teacher = [[2.0, 0.0, 0.0]] + teacher[1:]
    full = strategy.loss(Outputs(student=t(student), teacher=t(right_teacher), labels=torch.tensor(labels)))
    kl_all = sum(kl(right_teacher[i], student[i]) for i in range(4)) / 4
    assert close(full, 0.68 * kl_all + 0.32 * ce)


class TinyNet(nn.Module):
    """A linear layer and a batch norm: float weights, float buffers and the integer num_batches_tracked."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))

    def set(self, w: list[float], b: float, mean: float, tracked: int) -> None:
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([w]))
            self.fc.bias.fill_(b)
            self.bn.running_mean.fill_(mean)
            self.bn.num_batches_tracked.fill_(tracked)


def test_xekl_mcl_slow_weights_every_second_step() -> None:
    net = TinyNet()
    net.set([1.0, 2.0], 0.5, 0.0, 0)
    s = XEKLMCL(tau=0.5, every=2)
    s.setup(net)
    assert torch.equal(s.slow["fc.weight"], torch.tensor([[1.0, 2.0]]))

    net.set([3.0, -2.0], 1.5, 4.0, 5)  # the fast weights after an optimizer step
    assert torch.equal(s.slow["fc.weight"], torch.tensor([[1.0, 2.0]]))  # slow is a copy, not a view
    s.after_step(net, 1)  # odd step: nothing
    assert torch.equal(s.slow["fc.weight"], torch.tensor([[1.0, 2.0]]))
    assert float(s.slow["fc.bias"]) == 0.5 and int(s.slow["bn.num_batches_tracked"]) == 0

    s.after_step(net, 2)  # slow = 0.5 slow + 0.5 fast
    assert torch.equal(s.slow["fc.weight"], torch.tensor([[0.5 * 1 + 0.5 * 3, 0.5 * 2 + 0.5 * -2]]))  # [2, 0]
    assert float(s.slow["fc.bias"]) == 0.5 * 0.5 + 0.5 * 1.5  # 1.0
    assert float(s.slow["bn.running_mean"]) == 0.5 * 0.0 + 0.5 * 4.0  # float buffers are averaged too
    assert s.slow["bn.num_batches_tracked"].dtype == torch.int64
    assert int(s.slow["bn.num_batches_tracked"]) == 5  # integer buffers are copied

    net.set([5.0, 0.0], 1.0, 0.0, 9)
    s.after_step(net, 3)
    assert torch.equal(s.slow["fc.weight"], torch.tensor([[2.0, 0.0]]))
    s.after_step(net, 4)
    assert torch.equal(s.slow["fc.weight"], torch.tensor([[3.5, 0.0]]))
    assert int(s.slow["bn.num_batches_tracked"]) == 9

    # evaluation (and the saved checkpoint) use the slow weights; the fast student is left alone
    evaluated = s.eval_model(net)
    assert evaluated is not net
    assert torch.equal(evaluated.fc.weight, torch.tensor([[3.5, 0.0]]))
    assert torch.equal(net.fc.weight, torch.tensor([[5.0, 0.0]]))
    x = torch.tensor([[1.0, 1.0]])
    evaluated.eval().requires_grad_(False)
    # slow bias 1.0 (0.5 -> 1.0 -> 1.0), slow running mean 1.0 (0 -> 2 -> 1), running var 1, gamma 1, beta 0
    assert float(s.slow["fc.bias"]) == 1.0 and float(s.slow["bn.running_mean"]) == 1.0
    assert float(evaluated(x)) == pytest.approx((3.5 * 1 + 0.0 * 1 + 1.0 - 1.0) / math.sqrt(1 + 1e-5), rel=1e-6)


def test_xekl_mcl_default_tau_moves_slowly() -> None:
    net = TinyNet()
    net.set([1.0, 1.0], 0.0, 0.0, 0)
    s = XEKLMCL()
    s.configure(256)  # every 2 steps
    s.setup(net)
    net.set([2.0, 1.0], 0.0, 0.0, 0)
    s.after_step(net, 2)
    assert float(s.slow["fc.weight"][0, 0]) == pytest.approx(0.9999 * 1 + 0.0001 * 2, rel=1e-6)


def test_xekl_mcl_state_round_trip_and_setup_keeps_restored_slow_weights() -> None:
    net = TinyNet()
    net.set([1.0, 2.0], 0.5, 0.0, 0)
    s = XEKLMCL(tau=0.5, every=2)
    s.setup(net)
    net.set([3.0, -2.0], 1.5, 4.0, 5)
    s.after_step(net, 2)
    saved = s.state_dict()

    restored = XEKLMCL(tau=0.5, every=2)
    assert restored.eval_model(net) is net  # before setup / restore there are no slow weights
    restored.load_state_dict(saved)
    fresh = TinyNet()  # a resumed run calls setup() with its student: it must not overwrite the restored slow
    restored.setup(fresh)
    assert restored.slow.keys() == s.slow.keys()
    for k in s.slow:
        assert torch.equal(restored.slow[k], s.slow[k])
    assert torch.equal(restored.eval_model(fresh).fc.weight, torch.tensor([[2.0, 0.0]]))

    # through torch.save, as the training loop checkpoints it
    import io

    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    again = XEKLMCL(tau=0.5, every=2)
    again.load_state_dict(torch.load(buf, weights_only=False))
    for k in s.slow:
        assert torch.equal(again.slow[k], s.slow[k])


def test_plain_strategies_have_no_weight_level_state() -> None:
    net = TinyNet()
    for strategy in (KL(), XEKL(), KLDP(), KLDP(supervised=False)):
        strategy.setup(net)
        strategy.after_step(net, 2)
        assert strategy.eval_model(net) is net
        assert strategy.state_dict() == {}


def test_ce_control_is_cross_entropy_on_the_labels_without_a_teacher() -> None:
    from kt.strategies import CE

    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 2])
    strategy = CE()
    assert not strategy.needs_teacher and not strategy.needs_initial
    # by hand: -log softmax(student)[label], averaged
    by_hand = -(torch.log_softmax(student, 1)[0, 0] + torch.log_softmax(student, 1)[1, 2]) / 2
    assert strategy.loss(Outputs(student=student, labels=labels)) == pytest.approx(by_hand.item())


# ---------------------------------------------------------------------------------------------- DKD and AdaptConf

# 3 samples, 4 classes; the teacher's top-1 differs from the student's in rows 0 (0 vs 1) and 2 (1 vs 3)
S4 = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.5], [0.3, 1.2, -0.4, 2.0]]
T4 = [[3.0, 0.0, -1.0, 0.5], [0.5, 0.5, 1.0, -2.0], [-2.0, 4.0, 0.0, 1.0]]
Y4 = [0, 2, 1]


def np_softmax(row: list[float], temp: float = 1.0) -> np.ndarray:
    e = np.exp(np.asarray(row, dtype=np.float64) / temp)
    return e / e.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) between two probability vectors."""
    return float(np.sum(p * np.log(p / q)))


def dkd_by_hand(student: list[list[float]], teacher: list[list[float]], labels: list[int], alpha: float,
                beta: float, temp: float) -> float:
    """Zhao et al.'s DKD, written out: per sample, TCKD on the binary (p_y, 1 - p_y) distributions and NCKD
    on the distributions renormalised over the non-target classes, both at T and times T²; batch mean."""
    total = 0.0
    for s, t_, y in zip(student, teacher, labels, strict=True):
        ps, pt = np_softmax(s, temp), np_softmax(t_, temp)
        tckd = np_kl(np.array([pt[y], 1 - pt[y]]), np.array([ps[y], 1 - ps[y]]))
        nckd = np_kl(np.delete(pt, y) / np.delete(pt, y).sum(), np.delete(ps, y) / np.delete(ps, y).sum())
        total += (alpha * tckd + beta * nckd) * temp**2
    return total / len(labels)


def adaptconf_by_hand(student: list[list[float]], teacher: list[list[float]], threshold: float,
                      temp: float) -> tuple[float, list[float]]:
    """Guo et al.'s AdaptConf as in their code, written out: the batch loss and the per-sample β."""
    total, betas = 0.0, []
    for s, t_ in zip(student, teacher, strict=True):
        p = np_softmax(s)
        ce_self = -math.log(p[int(np.argmax(s))])
        ce_teacher = -math.log(p[int(np.argmax(t_))])
        beta = math.exp(ce_self / threshold) / (math.exp(ce_self / threshold) + math.exp(ce_teacher / threshold))
        kd = np_kl(np_softmax(t_, temp), np_softmax(s, temp)) * temp**2
        total += (1 - beta) * kd + beta * ce_self
        betas.append(beta)
    return total / len(student), betas


def test_dkd_defaults_and_registration() -> None:
    from kt.strategies import DKD

    registry = Registry()
    strategy = registry.get("strategies", "dkd")()
    assert isinstance(strategy, DKD)
    assert (strategy.alpha, strategy.beta, strategy.ce_weight, strategy.temperature) == (1.0, 0.5, 0.0, 1.0)
    assert strategy.needs_teacher and not strategy.needs_initial and not strategy.multi_teacher
    assert registry.options("strategies", "dkd") == {"temperature": 1.0, "lr": None, "alpha": 1.0, "beta": 0.5,
                                                     "ce_weight": 0.0}


@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 0.5, 1.0), (1.0, 8.0, 4.0), (0.3, 2.0, 0.5)])
def test_dkd_matches_hand_computed_tckd_and_nckd(alpha: float, beta: float, temperature: float) -> None:
    from kt.strategies import DKD

    strategy = DKD(alpha=alpha, beta=beta, temperature=temperature)
    loss = strategy.loss(Outputs(student=t(S4), teacher=t(T4), labels=torch.tensor(Y4)))
    assert close(loss, dkd_by_hand(S4, T4, Y4, alpha, beta, temperature))


def test_dkd_spelled_out_on_one_row() -> None:
    from kt.strategies import DKD

    # teacher softmax (1/2, 1/6, 1/6, 1/6), student uniform (1/4 each), label 0: the non-target parts are
    # both uniform, so NCKD = 0, and TCKD = 1/2 log((1/2)/(1/4)) + 1/2 log((1/2)/(3/4)) = 1/2 log(4/3)
    out = Outputs(student=t([[0.0, 0.0, 0.0, 0.0]]), teacher=t([[math.log(3), 0.0, 0.0, 0.0]]),
                  labels=torch.tensor([0]))
    assert close(DKD(alpha=1.0, beta=8.0).loss(out), 0.5 * math.log(4 / 3))
    assert close(DKD(alpha=2.0, beta=8.0).loss(out), math.log(4 / 3))
    # label 1 instead: b_t = (1/6, 5/6), b_s = (1/4, 3/4); non-target p̂_t = (3/5, 1/5, 1/5), p̂_s = 1/3 each
    out.labels = torch.tensor([1])
    tckd = 1 / 6 * math.log((1 / 6) / (1 / 4)) + 5 / 6 * math.log((5 / 6) / (3 / 4))
    nckd = 3 / 5 * math.log((3 / 5) / (1 / 3)) + 2 * (1 / 5 * math.log((1 / 5) / (1 / 3)))
    assert close(DKD(alpha=1.0, beta=8.0).loss(out), tckd + 8 * nckd)


def test_dkd_with_alpha_1_and_beta_1_minus_pt_is_classical_kd() -> None:
    """The paper's decomposition (its Eq. 5): KD = TCKD + (1 − p_t,y)·NCKD, sample by sample."""
    from kt.strategies import DKD

    for s, t_, y in zip(S4, T4, Y4, strict=True):
        for temperature in (1.0, 3.0):
            p_target = float(np_softmax(t_, temperature)[y])
            out = Outputs(student=t([s]), teacher=t([t_]), labels=torch.tensor([y]))
            dkd = DKD(alpha=1.0, beta=1 - p_target, temperature=temperature).loss(out)
            assert close(dkd, np_kl(np_softmax(t_, temperature), np_softmax(s, temperature)) * temperature**2)


def test_dkd_ce_weight_adds_cross_entropy_on_the_labels() -> None:
    from kt.strategies import DKD

    out = Outputs(student=t(S4), teacher=t(T4), labels=torch.tensor(Y4))
    xent_mean = sum(-math.log(np_softmax(s)[y]) for s, y in zip(S4, Y4, strict=True)) / 3
    assert close(DKD(ce_weight=1.0).loss(out), dkd_by_hand(S4, T4, Y4, 1.0, 0.5, 1.0) + xent_mean)


def test_dkd_is_finite_for_a_saturated_teacher() -> None:
    from kt.strategies import DKD

    student = t(S4).requires_grad_()
    teacher = t([[200.0, 0.0, -1.0, 0.5], [0.5, 0.5, 300.0, -2.0], [-2.0, 4.0, 0.0, 1.0]])
    loss = DKD(beta=8.0).loss(Outputs(student=student, teacher=teacher, labels=torch.tensor(Y4)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def test_adaptconf_defaults_and_registration() -> None:
    from kt.strategies import AdaptConf

    registry = Registry()
    strategy = registry.get("strategies", "adaptconf")()
    assert isinstance(strategy, AdaptConf)
    assert (strategy.threshold, strategy.ce_weight, strategy.temperature) == (1.0, 0.0, 1.0)
    assert strategy.needs_teacher and not strategy.needs_initial and not strategy.multi_teacher
    assert registry.options("strategies", "adaptconf") == {"temperature": 1.0, "lr": None, "threshold": 1.0,
                                                           "ce_weight": 0.0}
    with pytest.raises(KtError, match="threshold"):
        AdaptConf(threshold=0.0)


@pytest.mark.parametrize(("threshold", "temperature"), [(1.0, 1.0), (0.5, 1.0), (4.0, 2.0)])
def test_adaptconf_matches_hand_computed_loss(threshold: float, temperature: float) -> None:
    from kt.strategies import AdaptConf

    expected, betas = adaptconf_by_hand(S4, T4, threshold, temperature)
    # row 1: student and teacher agree on the top-1 class, so β = 1/2; rows 0 and 2 disagree, β < 1/2
    assert betas[1] == pytest.approx(0.5) and betas[0] < 0.5 and betas[2] < 0.5
    # labels are not read without ce_weight
    loss = AdaptConf(threshold=threshold, temperature=temperature).loss(Outputs(student=t(S4), teacher=t(T4)))
    assert close(loss, expected)


def test_adaptconf_spelled_out_on_one_row() -> None:
    from kt.strategies import AdaptConf

    # student = teacher = (log 3, 0, 0, 0): KL = 0, same top-1 so β = 1/2, ce_self = -log(3/6) = log 2
    row = t([[math.log(3), 0.0, 0.0, 0.0]])
    assert close(AdaptConf().loss(Outputs(student=row, teacher=row.clone())), 0.5 * math.log(2))
    # teacher's top-1 is class 1 instead: ce_teacher = -log(1/6) = log 6, β = 2 / (2 + 6) = 1/4, and
    # KL(p_t || p_s) with p_t = (1/6, 1/2, 1/6, 1/6), p_s = (1/2, 1/6, 1/6, 1/6) = 1/3 log 3
    teacher = t([[0.0, math.log(3), 0.0, 0.0]])
    expected = 0.75 * (1 / 6 * math.log(1 / 3) + 1 / 2 * math.log(3)) + 0.25 * math.log(2)
    assert close(AdaptConf().loss(Outputs(student=row, teacher=teacher)), expected)


def test_adaptconf_weight_is_not_differentiated() -> None:
    """β is a constant of the step (the code detaches it): the gradient is that of the weighted sum with
    β fixed at its hand-computed value."""
    from kt.strategies import AdaptConf

    _, betas = adaptconf_by_hand(S4, T4, 1.0, 1.0)
    student = t(S4).requires_grad_()
    AdaptConf().loss(Outputs(student=student, teacher=t(T4))).backward()
    reference = t(S4).requires_grad_()
    beta = torch.tensor(betas, dtype=torch.float32)
    log_q = torch.log_softmax(reference, 1)
    p = torch.softmax(t(T4), 1)
    kd = (p * (torch.log(p) - log_q)).sum(1)
    ce_self = -log_q[torch.arange(3), torch.tensor([int(np.argmax(s)) for s in S4])]
    ((1 - beta) * kd + beta * ce_self).mean().backward()
    assert torch.allclose(student.grad, reference.grad, atol=1e-6)


def test_adaptconf_ce_weight_adds_cross_entropy_on_the_labels() -> None:
    from kt.strategies import AdaptConf

    expected, _ = adaptconf_by_hand(S4, T4, 1.0, 1.0)
    xent_mean = sum(-math.log(np_softmax(s)[y]) for s, y in zip(S4, Y4, strict=True)) / 3
    out = Outputs(student=t(S4), teacher=t(T4), labels=torch.tensor(Y4))
    assert close(AdaptConf(ce_weight=0.5).loss(out), expected + 0.5 * xent_mean)


# ---------------------------------------------------------------------------------------------- bikd


def test_bikd_defaults_and_registration() -> None:
    from kt.strategies import BiKD

    strategy = Registry().get("strategies", "bikd")()
    assert isinstance(strategy, BiKD)
    assert strategy.trains_teacher and strategy.multi_teacher and not strategy.cacheable
    assert strategy.features == () and strategy.teacher_lr is None


def test_bikd_two_models_matches_the_authors_step_by_hand() -> None:
    """train_bi_kd.py on logits z_t = [[2,0,0],[0,1,0]], z_s = [[1,0,0],[0,2,0]], y = [0, 1]: the teacher
    is more confident on row 0 (0.787 > 0.576), the student on row 1; loss = CE_t + CE_s +
    mean(KL(p_t||p_s) on row 0, KL(p_s||p_t) on row 1) = 0.889875 (worked out with numpy from the code)."""
    from kt.strategies import BiKD

    zt, zs, y = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], [0, 1]
    ce = sum(xent(r, c) for model in (zt, zs) for r, c in zip(model, y, strict=True)) / 2
    by_hand = ce + (kl(zt[0], zs[0]) + kl(zs[1], zt[1])) / 2
    assert by_hand == pytest.approx(0.889875, abs=1e-6)
    student, teacher = t(zs).requires_grad_(), t(zt).requires_grad_()
    result = BiKD().loss(Outputs(student=student, teacher=teacher, labels=torch.tensor(y)))
    assert close(result.value, by_hand)
    assert result.teacher_mask.tolist() == [True, False]  # row 0 taught by the teacher
    assert close(result.terms["kd"], (kl(zt[0], zs[0]) + kl(zs[1], zt[1])) / 2)
    result.value.backward()  # as in the authors' code, the teaching side is not detached
    assert teacher.grad is not None and student.grad is not None
    assert teacher.grad[1].abs().sum() > 0  # the teacher learns on row 1 from the KL it is the target of


def test_bikd_two_models_tie_goes_to_the_student() -> None:
    from kt.strategies import BiKD

    same = t([[1.0, 0.0], [0.0, 1.0]])
    result = BiKD().loss(Outputs(student=same, teacher=same.clone(), labels=torch.tensor([0, 1])))
    assert result.teacher_mask.tolist() == [False, False]
    assert close(result.value, 2 * xent([1.0, 0.0], 0))  # identical models: no KL, two CE terms


def test_bikd_three_models_most_confident_teaches_all_and_ties_teach_none() -> None:
    """train_tri_kd.py: per sample, the one model with the highest true-class probability adds
    KL(p_k || p_j) for each other model j; a shared maximum adds nothing (but counts in the mean)."""
    from kt.strategies import BiKD

    s = [[0.0, 0.0], [3.0, 0.0], [1.0, 0.0]]
    t1 = [[2.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    t2 = [[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    y = [0, 0, 0]  # row 0: teacher 1 most confident; row 1: the student; row 2: student and teacher 1 tie
    kd = ((kl(t1[0], s[0]) + kl(t1[0], t2[0])) + (kl(s[1], t1[1]) + kl(s[1], t2[1])) + 0.0) / 3
    ce = sum(sum(xent(r, 0) for r in m) / 3 for m in (s, t1, t2))
    result = BiKD().loss(Outputs(student=t(s), teachers=[t(t1), t(t2)], labels=torch.tensor(y)))
    assert close(result.value, ce + kd)
    assert result.teacher_mask.tolist() == [True, False, False]


# ---------------------------------------------------------------------------------------------- crd


def test_contrast_loss_matches_repdistillers_formula_by_hand() -> None:
    """ContrastLoss on scores [[0.5, 0.1, 0.2], [1.0, 0.3, 0.05]] with N = 10, K = 2 (noise K/N = 0.2):
    -(Σ log P₊/(P₊ + 0.2) + Σ log 0.2/(P₋ + 0.2)) / 2 = 1.378421."""
    from kt.strategies import contrast_loss

    scores = t([[0.5, 0.1, 0.2], [1.0, 0.3, 0.05]])
    by_hand = -(math.log(0.5 / 0.7) + math.log(1.0 / 1.2) + math.log(0.2 / 0.3) + math.log(0.2 / 0.4)
                + math.log(0.2 / 0.5) + math.log(0.2 / 0.25)) / 2
    assert by_hand == pytest.approx(1.378421, abs=1e-6)
    assert close(contrast_loss(scores, k=2, n=10), by_hand, rel=1e-5)


def test_crd_negatives_come_from_other_classes_uniformly() -> None:
    from kt.strategies import ContrastMemory

    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    memory = ContrastMemory(4, labels, k=5000, temperature=0.07, momentum=0.5)
    assert memory.k == 10 - 4  # clipped to the samples outside the largest class
    torch.manual_seed(0)
    query = torch.tensor([0, 2, 3])
    drawn = memory.negatives(query)
    assert drawn.shape == (3, 6)
    for row, c in zip(drawn, query.tolist(), strict=True):
        assert (labels[row] != c).all()
    many = ContrastMemory(4, labels, k=6, temperature=0.07, momentum=0.5)
    draws = torch.cat([many.negatives(torch.tensor([2])) for _ in range(4000)]).flatten()
    counts = torch.bincount(draws, minlength=10)
    outside = counts[labels != 2].double()
    assert counts[labels == 2].sum() == 0 and (outside / outside.mean() - 1).abs().max() < 0.05  # uniform


def test_crd_scores_normaliser_and_memory_update_by_hand() -> None:
    """Two samples of different classes, feat_dim 2, K = 1: the positive's score is exp(<m_t[i], f_s>/T) / Z
    with Z = mean of the first batch's scores x N; afterwards memory_s[i] = normalise(m·old + (1 − m)·f_s)."""
    from kt.strategies import ContrastMemory

    memory = ContrastMemory(2, torch.tensor([0, 1]), k=1, temperature=0.5, momentum=0.5)
    memory.memory_s.copy_(t([[1.0, 0.0], [0.0, 1.0]]))
    memory.memory_t.copy_(t([[0.6, 0.8], [0.8, -0.6]]))
    f_s, f_t = t([[0.0, 1.0], [1.0, 0.0]]), t([[1.0, 0.0], [0.0, 1.0]])
    scores_s, scores_t = memory(f_s, f_t, torch.tensor([0, 1]))
    # each sample's one negative is the other sample: rows of memory_t in order (own, other)
    raw_s = [[math.exp(0.8 / 0.5), math.exp(-0.6 / 0.5)], [math.exp(0.8 / 0.5), math.exp(0.6 / 0.5)]]
    z_s = sum(map(sum, raw_s)) / 4 * 2
    assert torch.allclose(scores_s, t(raw_s) / z_s, rtol=1e-5)
    raw_t = [[math.exp(1.0 / 0.5), math.exp(0.0)], [math.exp(1.0 / 0.5), math.exp(0.0)]]
    assert torch.allclose(scores_t, t(raw_t) / (sum(map(sum, raw_t)) / 4 * 2), rtol=1e-5)
    half = 1 / math.sqrt(2)
    assert torch.allclose(memory.memory_s, t([[half, half], [half, half]]), atol=1e-6)
    assert float(memory.z[0]) == pytest.approx(z_s, rel=1e-5)  # fixed from now on


def test_crd_loss_is_ce_plus_beta_times_both_nce_terms() -> None:
    from kt.strategies import CRD, Context, contrast_loss

    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    strategy = CRD(nce_k=3)
    modules = strategy.build(Context(6, 3, labels, {"student": {"pooled": 5}, "teacher": {"pooled": 7}}))
    assert set(modules) == {"embed_s", "embed_t", "memory"} and modules["embed_s"].linear.in_features == 5
    fs, ft, zs = torch.randn(3, 5), torch.randn(3, 7), torch.randn(3, 3)
    pos, y = torch.tensor([0, 1, 2]), labels[:3]
    out = Outputs(student=zs, teacher=torch.randn(3, 3), labels=y, positions=pos,
                  student_features={"pooled": fs}, teacher_features=[{"pooled": ft}])
    state = {k: v.clone() for k, v in modules["memory"].state_dict().items()}
    rng = torch.get_rng_state()
    result = strategy.loss(out)
    modules["memory"].load_state_dict(state)  # replay the same step by hand
    torch.set_rng_state(rng)
    s_scores, t_scores = modules["memory"](strategy.embed_s(fs), strategy.embed_t(ft), pos)
    nce = contrast_loss(s_scores, 3, 6) + contrast_loss(t_scores, 3, 6)
    assert close(result.value, float((F.cross_entropy(zs, y) + 0.8 * nce).detach()))
    assert close(result.terms["crd"], float(nce.detach())) and "kl" not in result.terms


def test_crd_declares_pooled_features_and_is_not_cacheable() -> None:
    from kt.strategies import CRD

    strategy = Registry().get("strategies", "crd")()
    assert strategy.features == ("pooled",) and not strategy.cacheable and not strategy.trains_teacher
    options = (strategy.gamma, strategy.alpha, strategy.beta, strategy.temperature, strategy.nce_k)
    assert options == (1.0, 0.0, 0.8, 4.0, 4096)
    with pytest.raises(KtError, match="nce_t > 0"):
        CRD(nce_t=0)
