import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import Tensor

from gfl_d2.modeling.losses import (
    distribution_focal_loss,
    fused_quality_focal_loss,
    quality_focal_loss,
)

from .gfocalv2_reference import authors_model, load_authors_reference


def qfl_direct(logits, y, beta):
    """The paper's QFL, written out: -|y - s|^b ((1 - y) log(1 - s) + y log s)."""
    s = torch.sigmoid(logits.double())
    y = y.double()
    return -((y - s).abs() ** beta) * ((1 - y) * torch.log(1 - s) + y * torch.log(s))


def dfl_direct(logits, y):
    """The paper's DFL, written out with explicit neighbours y_i = floor(y)."""
    probs = torch.softmax(logits.double(), dim=-1)
    out = torch.empty(y.shape, dtype=torch.float64)
    for idx in range(y.numel()):
        yy = float(y.reshape(-1)[idx])
        i = math.floor(yy)
        p = probs.reshape(-1, probs.shape[-1])[idx]
        out.reshape(-1)[idx] = -((i + 1 - yy) * math.log(p[i]) + (yy - i) * math.log(p[i + 1]))
    return out


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0, 3.0])
def test_qfl_equals_formula(beta):
    torch.manual_seed(0)
    logits = torch.randn(6, 7) * 3
    y = torch.rand(6, 7)
    y[0] = 0.0
    y[1, :3] = 1.0
    got = quality_focal_loss(logits, y, beta)
    assert got.shape == (6, 7) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), qfl_direct(logits, y, beta), rtol=1e-5, atol=1e-6)


def test_qfl_beta0_hard_labels_is_bce():
    torch.manual_seed(1)
    logits = torch.randn(50, 4) * 4
    y = (torch.rand(50, 4) > 0.7).float()
    torch.testing.assert_close(
        quality_focal_loss(logits, y, beta=0.0),
        F.binary_cross_entropy_with_logits(logits, y, reduction="none"),
    )


@pytest.mark.parametrize("y", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_qfl_minimum_and_zero_gradient_at_sigma_equal_y(y):
    target = torch.tensor([y])
    if 0 < y < 1:
        x0 = math.log(y / (1 - y))
        x = torch.tensor([x0], dtype=torch.float32, requires_grad=True)
        loss = quality_focal_loss(x, target)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        assert abs(grad.item()) < 1e-6
        # neighbours are worse
        for dx in (-0.5, -0.05, 0.05, 0.5):
            assert quality_focal_loss(torch.tensor([x0 + dx]), target) > loss.detach()
    else:
        # at y = 0 / 1 the loss decreases monotonically towards sigma = y
        xs = torch.linspace(-8, 8, 33)
        losses = quality_focal_loss(xs, target.expand(33))
        diffs = losses[1:] - losses[:-1]
        assert (diffs > 0).all() if y == 0 else (diffs < 0).all()


def test_qfl_finite_for_extreme_logits():
    logits = torch.tensor([[-100.0, 100.0, -100.0, 100.0, 0.0]], requires_grad=True)
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.3]])
    loss = quality_focal_loss(logits, y)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()
    # the confidently wrong entries cost about |x| each
    assert 99 < loss[0, 2] < 101 and 99 < loss[0, 3] < 101
    assert loss[0, 0] < 1e-30 and loss[0, 1] < 1e-30


def test_qfl_under_bf16_autocast():
    torch.manual_seed(2)
    logits = (torch.randn(32, 5) * 5).bfloat16()
    y = torch.rand(32, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = quality_focal_loss(logits, y)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(
        got.double(), qfl_direct(logits.float(), y, 2.0), rtol=1e-5, atol=1e-6
    )


def test_dfl_equals_formula():
    torch.manual_seed(3)
    logits = torch.randn(5, 4, 17) * 2
    y = torch.rand(5, 4) * 15.9
    y[0, 0] = 0.0
    y[0, 1] = 15.9
    y[0, 2] = 3.0  # on a bin: the whole weight on the left bin
    got = distribution_focal_loss(logits, y)
    assert got.shape == (5, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), dfl_direct(logits, y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("y", [0.0, 0.25, 3.5, 7.9, 15.9])
def test_dfl_minimum_and_zero_gradient_at_two_bin_target(y):
    n_bins = 17
    i = math.floor(y)
    probs = torch.full((n_bins,), 0.0)
    probs[i] = i + 1 - y
    probs[i + 1] = y - i
    # the optimum: softmax equal to the two-bin distribution (other bins -> 0)
    logits = torch.where(probs > 0, probs.clamp(min=1e-30).log(), torch.tensor(-1e4))
    logits.requires_grad_(True)
    loss = distribution_focal_loss(logits[None], torch.tensor([y]))
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert grad.abs().max() < 1e-5
    # the integral of the optimum is y exactly
    assert abs(float((torch.softmax(logits.detach(), -1) * torch.arange(n_bins)).sum()) - y) < 1e-5
    # any perturbation of the two target bins is worse
    torch.manual_seed(4)
    for _ in range(5):
        noise = torch.zeros(n_bins)
        noise[i : i + 2] = torch.randn(2) * 0.3
        worse = distribution_focal_loss((logits.detach() + noise)[None], torch.tensor([y]))
        assert worse > loss.detach() if y != i else worse >= loss.detach()


def test_dfl_finite_for_extreme_logits():
    logits = torch.full((2, 17), -100.0)
    logits[0, 0] = 100.0
    logits[1, 16] = 100.0
    logits.requires_grad_(True)
    loss = distribution_focal_loss(logits, torch.tensor([15.9, 0.0]))
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logits.grad).all()


def test_dfl_under_bf16_autocast():
    torch.manual_seed(5)
    logits = torch.randn(8, 4, 17).bfloat16()
    y = torch.rand(8, 4) * 15.9
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = distribution_focal_loss(logits, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), dfl_direct(logits.float(), y), rtol=1e-5, atol=1e-6)


# the paper's general form (Eq. 7), of which QFL and DFL are special cases: a reference for the
# tests
def generalized_focal_loss(
    log_p_left: Tensor,
    log_p_right: Tensor,
    y_left: Tensor,
    y_right: Tensor,
    y: Tensor,
    beta: float = 2.0,
) -> Tensor:
    """
    The general form (paper Eq. 7) for a continuous label ``y`` with
    ``y_left <= y <= y_right``, predicted by probabilities ``p_left``/``p_right``
    on the two neighbouring discrete values::

        GFL = -|y - (y_l p_l + y_r p_r)|^beta ((y_r - y) log p_l + (y - y_l) log p_r)

    It takes log-probabilities so that the caller can produce them stably
    (``logsigmoid``, ``log_softmax``). All arguments broadcast; the result has
    their broadcast shape. QFL is the case ``y_l=0, y_r=1, p_r=sigmoid``; DFL is
    ``beta=0`` with ``p`` the softmax over bins.
    """
    log_p_left, log_p_right = log_p_left.float(), log_p_right.float()
    y_left, y_right, y = (
        torch.as_tensor(t, device=log_p_left.device).float() for t in (y_left, y_right, y)
    )
    ce = -((y_right - y) * log_p_left + (y - y_left) * log_p_right)
    if beta == 0:
        return ce
    expectation = y_left * log_p_left.exp() + y_right * log_p_right.exp()
    return (y - expectation).abs().pow(beta) * ce


def test_gfl_general_form_equals_formula_and_specialises():
    torch.manual_seed(6)
    # direct: -|y - (yl pl + yr pr)|^b ((yr - y) log pl + (y - yl) log pr)
    pl, pr = torch.rand(20) * 0.9 + 0.05, torch.rand(20) * 0.9 + 0.05
    yl = torch.randint(0, 10, (20,)).float()
    yr = yl + 1
    y = yl + torch.rand(20)
    direct = -((y - (yl * pl + yr * pr)).abs() ** 2) * ((yr - y) * pl.log() + (y - yl) * pr.log())
    torch.testing.assert_close(
        generalized_focal_loss(pl.log(), pr.log(), yl, yr, y, beta=2.0), direct
    )

    # QFL: y_l = 0, y_r = 1, p_r = sigmoid(x)
    x = torch.randn(20) * 3
    t = torch.rand(20)
    torch.testing.assert_close(
        generalized_focal_loss(F.logsigmoid(-x), F.logsigmoid(x), 0.0, 1.0, t, beta=2.0),
        quality_focal_loss(x, t, beta=2.0),
    )
    # DFL: beta = 0, p = softmax over bins, neighbours floor(y), floor(y) + 1
    logits = torch.randn(20, 17)
    yy = torch.rand(20) * 15.9
    logp = torch.log_softmax(logits, -1)
    left = yy.floor().long()
    torch.testing.assert_close(
        generalized_focal_loss(
            logp.gather(1, left[:, None])[:, 0],
            logp.gather(1, left[:, None] + 1)[:, 0],
            left.float(),
            left.float() + 1,
            yy,
            beta=0.0,
        ),
        distribution_focal_loss(logits, yy),
    )


# ---------------------------------------------------------------- GFL V2: QFL on the fused score
def bce_on_probabilities(p, y, beta):
    """
    QFL as the authors compute it with use_sigmoid=False: binary cross-entropy on the
    probability.
    """
    return F.binary_cross_entropy(p, y, reduction="none") * (y - p).abs().pow(beta)


def test_fused_qfl_is_bce_on_the_product_probability():
    torch.manual_seed(0)
    a, b = torch.randn(64, 5) * 3, torch.randn(64, 1) * 3
    y = torch.rand(64, 5) * (torch.rand(64, 5) < 0.3)
    p = a.double().sigmoid() * b.double().sigmoid()
    for beta in (0.0, 1.0, 2.0):
        got = fused_quality_focal_loss(a, b, y, beta)
        assert got.dtype == torch.float32 and got.shape == (64, 5)
        torch.testing.assert_close(
            got.double(), bce_on_probabilities(p, y.double(), beta), rtol=1e-5, atol=1e-7
        )


def test_fused_qfl_gradient_is_the_formulas():
    torch.manual_seed(1)
    a, b = (
        (torch.randn(32, 4, dtype=torch.float64) * 2).requires_grad_(),
        torch.randn(32, 1, dtype=torch.float64).requires_grad_(),
    )
    y = torch.rand(32, 4, dtype=torch.float64) * (torch.rand(32, 4) < 0.5)
    fused_quality_focal_loss(a, b, y).sum().backward()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    bce_on_probabilities(a2.sigmoid() * b2.sigmoid(), y, 2.0).sum().backward()
    # float32 inside the loss: compare at float32 precision
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-4, atol=1e-6)


def test_fused_qfl_is_finite_at_extreme_logits_and_in_half_precision():
    a = torch.tensor([[200.0, -200.0, 40.0, -40.0, 0.0]], requires_grad=True)
    b = torch.tensor([[200.0]], requires_grad=True)
    y = torch.tensor([[0.0, 0.0, 1.0, 0.7, 0.3]])
    loss = fused_quality_focal_loss(a, b, y)
    loss.sum().backward()
    assert (
        torch.isfinite(loss).all() and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    )
    assert loss[0, 0].item() == pytest.approx(
        100.0
    )  # p = 1 for a negative: the log floor, as binary_cross_entropy's
    assert loss[0, 2].item() == pytest.approx(0.0, abs=1e-12)  # p = 1 for a target of 1
    # fp16 / bf16 logits (autocast) give the float32 loss of the same values
    torch.manual_seed(2)
    a16, b16 = (torch.randn(16, 3) * 4).half(), (torch.randn(16, 1) * 4).half()
    y = torch.rand(16, 3)
    got = fused_quality_focal_loss(a16, b16, y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fused_quality_focal_loss(a16.float(), b16.float(), y))


@pytest.fixture(scope="module")
def authors():
    return load_authors_reference()


def test_losses_and_gradient_equal_the_authors(authors):
    model = authors_model(authors).train()
    h, w, _ = authors["img_metas"][0]["img_shape"]
    inputs = [
        {
            "image": torch.zeros(3, h, w),
            "instances": Instances((h, w), gt_boxes=Boxes(b), gt_classes=c),
        }
        for b, c in zip(authors["gt_bboxes"], authors["gt_labels"])
    ]
    with EventStorage():
        losses = model(inputs)
    for ours, theirs in (
        ("loss_qfl", "loss_cls"),
        ("loss_bbox", "loss_bbox"),
        ("loss_dfl", "loss_dfl"),
    ):
        assert losses[ours].item() == pytest.approx(
            float(authors["loss_totals"][theirs]), rel=1e-5
        ), ours
    sum(losses.values()).backward()
    torch.testing.assert_close(
        model.head.bbox_pred.weight.grad, authors["grad_gfl_reg_weight"], rtol=1e-4, atol=1e-7
    )
