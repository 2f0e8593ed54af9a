"""
Localization Distillation: the loss, the distiller (the student's losses plus
``loss_ld``, the teacher frozen and out of the student), the checks that
refuse a teacher that cannot teach, building the teacher from its config and
checkpoint, and a distilled student's checkpoint loaded into a plain GFL.
"""

import copy

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from gfl_d2.model_zoo import get_config_file
from gfl_d2.modeling import GFL, LocalizationDistiller, check_teacher
from gfl_d2.modeling.losses import localization_distillation_loss
from gfl_d2.teacher import build_teacher, distill_from_lazy_config, distill_from_yacs_config
from gfl_d2.testing import tiny_gfl, tiny_gfl_config, train_step, two_image_batch

from .repo import TINY_OVERRIDES, read_metrics, run_tool


def test_loss_is_the_softened_kl_times_t_squared():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, 17, generator=g), torch.randn(6, 4, 17, generator=g)
    for t in (1.0, 10.0):
        p = torch.softmax(teacher.double() / t, -1)
        q = torch.softmax(student.double() / t, -1)
        expected = (p * (p.log() - q.log())).mean(-1) * t * t
        got = localization_distillation_loss(student, teacher, t)
        assert got.shape == (6, 4) and got.dtype == torch.float32
        # float32: each term p (log p - log q) is off by a few ulp of
        # |log| <= ~10, i.e. ~1e-6, then times T^2
        torch.testing.assert_close(got.double(), expected, rtol=0, atol=2e-6 * t * t)
    assert localization_distillation_loss(teacher, teacher).abs().max() < 1e-6


def test_loss_trains_the_student_only_and_computes_in_float32():
    student = torch.randn(5, 4, 9, dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.randn(5, 4, 9, dtype=torch.bfloat16, requires_grad=True)
    loss = localization_distillation_loss(student, teacher)
    assert loss.dtype == torch.float32
    loss.sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None
    with pytest.raises(ValueError, match="differ in shape"):
        localization_distillation_loss(torch.zeros(2, 4, 9), torch.zeros(2, 4, 17))


def student_with(teacher, **kwargs):
    """A distiller: a fresh tiny student taught by ``teacher``."""
    torch.manual_seed(1)
    return LocalizationDistiller(instantiate(tiny_gfl_config(**kwargs)), teacher)


def test_teacher_is_frozen_and_out_of_the_students_checkpoint_and_optimizer():
    teacher = tiny_gfl()
    distiller = student_with(teacher)
    plain = tiny_gfl()
    assert distiller.teacher is teacher
    # the student alone is checkpointed and optimised: a plain GFL
    assert list(distiller.student.state_dict()) == list(plain.state_dict())
    assert all(m is not teacher for m in distiller.student.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    trainable = {id(p) for p in distiller.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in distiller.student.parameters()}
    distiller.train()
    # frozen in eval mode, BatchNorm/GN statistics fixed
    assert distiller.student.training and not teacher.training
    distiller.eval()
    with torch.no_grad():
        out = distiller(two_image_batch())  # evaluation is the student's
    assert len(out) == 2 and "instances" in out[0]


def test_training_adds_loss_ld_and_leaves_the_teacher_unchanged():
    teacher = tiny_gfl()
    before = copy.deepcopy(teacher.state_dict())
    distiller = student_with(teacher)
    losses, _ = train_step(distiller, two_image_batch())
    assert set(losses) == {"loss_qfl", "loss_bbox", "loss_dfl", "loss_ld"}
    assert torch.isfinite(losses["loss_ld"]) and losses["loss_ld"] > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    # the other losses are those of the same student without a teacher
    plain = tiny_gfl()
    plain.load_state_dict(distiller.student.state_dict())
    plain_losses, _ = train_step(plain, two_image_batch())
    for k, v in plain_losses.items():
        torch.testing.assert_close(losses[k], v)


def test_a_student_equal_to_its_teacher_has_zero_ld_loss():
    teacher = tiny_gfl()
    distiller = student_with(teacher)
    distiller.student.load_state_dict(teacher.state_dict())
    losses, _ = train_step(distiller, two_image_batch())
    assert abs(losses["loss_ld"].item()) < 1e-5


def test_ld_loss_follows_mmdetections_reduction():
    """Summed over the positives' edges with the box losses' weights, divided by 4, times 0.25."""
    teacher = tiny_gfl()
    distiller = student_with(teacher)
    captured = {}
    original = distiller.student.box_losses

    def spy(pos, pred_logits, dgqp_logits, ctr_targets, distillation=None):
        teacher_pos = torch.cat(distillation.box_regs, dim=1)[pos.img, pos.anchor]
        captured.update(pos=pos, pred_logits=pred_logits, teacher_pos=teacher_pos)
        return original(pos, pred_logits, dgqp_logits, ctr_targets, distillation)

    distiller.student.box_losses = spy
    losses, _ = train_step(distiller, two_image_batch())
    pos, teacher_pos = captured["pos"], captured["teacher_pos"]
    weights = captured["pred_logits"].detach()[pos.img, pos.anchor].sigmoid().max(dim=1).values
    kl = localization_distillation_loss(
        pos.box_regs.detach().unflatten(-1, (4, -1)), teacher_pos.unflatten(-1, (4, -1)), 10.0
    )  # (P, 4), tested above
    expected = (kl.double() * weights.double()[:, None]).sum() / 4 * 0.25
    # a float32 sum of 4P non-negative terms: relative error at most 4P * 2^-24
    torch.testing.assert_close(
        losses["loss_ld"].double(), expected, rtol=kl.numel() * 2.0**-24, atol=0
    )


@pytest.mark.parametrize(
    "student_kwargs, teacher_kwargs, what",
    [
        (dict(reg_max=16), dict(reg_max=8), r"n \(reg_max.*student 16, teacher 8"),
        (dict(num_classes=3), dict(num_classes=5), "num_classes.*student 3, teacher 5"),
    ],
)
def test_a_teacher_that_cannot_teach_is_refused_naming_both_values(
    student_kwargs, teacher_kwargs, what
):
    teacher = tiny_gfl(**teacher_kwargs)
    with pytest.raises(ValueError, match=what):
        student_with(teacher, **student_kwargs)
    with pytest.raises(ValueError, match=what):
        check_teacher(tiny_gfl(**student_kwargs), teacher)


def test_other_teacher_mismatches_are_named():
    student, teacher = tiny_gfl(), tiny_gfl()
    teacher.box2box_transform.bin_width = 0.5
    with pytest.raises(ValueError, match=r"bin_width.*student 1.0, teacher 0.5"):
        check_teacher(student, teacher)
    cfg = tiny_gfl_config()
    cfg.anchor_generator.sizes = [[32], [64], [128], [256], [512]]  # 4 x stride
    with pytest.raises(ValueError, match=r"anchors.*student \[\[\[-32.0.*teacher \[\[\[-16.0"):
        check_teacher(student, instantiate(cfg))
    with pytest.raises(ValueError, match="must be a GFL model"):
        check_teacher(student, torch.nn.Linear(2, 2))


def test_build_teacher_loads_every_weight_or_refuses(tmp_path):
    config = tmp_path / "teacher.py"  # a LazyConfig file whose model is the tiny GFL
    config.write_text("from gfl_d2.testing import tiny_gfl_config\nmodel = tiny_gfl_config()\n")
    trained = tiny_gfl()
    weights = tmp_path / "teacher.pth"
    torch.save({"model": trained.state_dict()}, weights)
    teacher = build_teacher(str(config), str(weights))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for k, v in trained.state_dict().items():
        assert torch.equal(teacher.state_dict()[k], v)

    partial = {k: v for k, v in trained.state_dict().items() if not k.startswith("head.")}
    torch.save({"model": partial}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not fit.*missing weights: head"):
        build_teacher(str(config), str(tmp_path / "partial.pth"))
    with pytest.raises(ValueError, match="needs its checkpoint"):
        build_teacher(str(config), "")
    with pytest.raises(FileNotFoundError, match="teacher config not found"):
        build_teacher(str(tmp_path / "none.py"), str(weights))


def test_a_distilled_students_checkpoint_loads_into_a_plain_gfl(tmp_path):
    distiller = student_with(tiny_gfl())
    train_step(distiller, two_image_batch())
    student = distiller.student
    DetectionCheckpointer(student, save_dir=str(tmp_path)).save("model_final")
    plain = tiny_gfl()
    assert isinstance(plain, GFL)
    incompatible = DetectionCheckpointer(plain)._load_model(
        torch.load(tmp_path / "model_final.pth", weights_only=True)
    )
    assert (
        not incompatible.missing_keys
        and not incompatible.unexpected_keys
        and not incompatible.incorrect_shapes
    )
    for k, v in student.state_dict().items():
        assert torch.equal(plain.state_dict()[k], v)


def test_autocast_keeps_the_ld_loss_in_float32():
    distiller = student_with(tiny_gfl())
    distiller.train()
    with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
        losses = distiller(two_image_batch())
    assert losses["loss_ld"].dtype == torch.float32 and torch.isfinite(losses["loss_ld"])
    losses["loss_ld"].backward()
    assert distiller.student.head.bbox_pred.weight.grad.abs().sum() > 0


@pytest.mark.skipif(
    0 < torch.cuda.device_count() < 2, reason="2 processes need 2 GPUs, or none (CPU processes)"
)
def test_distillation_config_trains_in_two_processes_and_saves_a_plain_student(tmp_path):
    from detectron2.config import LazyConfig

    teacher_cfg = LazyConfig.load(get_config_file("Synthetic/gfl_R_18_FPN_shapes.py"))
    torch.manual_seed(0)
    torch.save({"model": instantiate(teacher_cfg.model).state_dict()}, tmp_path / "teacher.pth")
    out = tmp_path / "out"
    run_tool(
        [
            "tools/train_net.py",
            "--num-gpus",
            "2",
            "--config-file",
            "configs/Synthetic/Distillation/gfl_R_18_half_FPN_shapes_ld.py",
            f"distillation.teacher.checkpoint={tmp_path / 'teacher.pth'}",
            "train.max_iter=3",
            "train.log_period=1",
            "train.check_bins=0",
            f"train.output_dir={out}",
            "train.eval_period=0",
        ]
        + TINY_OVERRIDES,
        datasets=tmp_path / "datasets",
    )
    records = [r for r in read_metrics(out / "metrics.json") if "loss_ld" in r]
    assert len(records) == 3 and all(r["loss_ld"] > 0 for r in records)
    student_cfg = LazyConfig.load(
        get_config_file("Synthetic/Distillation/gfl_R_18_half_FPN_shapes.py")
    )
    plain = instantiate(student_cfg.model)
    state = torch.load(out / "model_final.pth", weights_only=False)["model"]
    assert sorted(state) == sorted(
        plain.state_dict()
    )  # no teacher weights in the student's checkpoint


def test_yacs_and_lazy_ld_configs_build_the_same_student_and_teacher(tmp_path):
    from detectron2.config import LazyConfig, get_cfg
    from detectron2.modeling import build_model

    from gfl_d2 import add_gfl_config

    lazy = LazyConfig.load(
        get_config_file("COCO-Detection/Distillation/ld_R_50_gfl_R_101_FPN_1x.py")
    )
    assert "teacher" not in lazy.model  # evaluation and export build the student alone
    torch.manual_seed(0)
    teacher_config = get_config_file(lazy.distillation.teacher.config_file)
    teacher = instantiate(LazyConfig.load(teacher_config).model)
    torch.save({"model": teacher.state_dict()}, tmp_path / "teacher.pth")
    lazy.distillation.teacher.checkpoint = str(tmp_path / "teacher.pth")
    lazy_distiller = distill_from_lazy_config(lazy, instantiate(lazy.model))

    cfg = add_gfl_config(get_cfg())
    cfg.merge_from_file(get_config_file("ld_R_50_gfl_R_101_FPN_1x.yaml"))
    cfg.MODEL.GFL.LD.TEACHER_WEIGHTS = str(tmp_path / "teacher.pth")
    cfg.MODEL.DEVICE = "cpu"
    yacs_distiller = distill_from_yacs_config(cfg, build_model(cfg))

    for d in (lazy_distiller, yacs_distiller):
        assert d.loss_weight == 0.25 and d.temperature == 10.0 and not d.teacher.training
    assert {k: v.shape for k, v in yacs_distiller.student.state_dict().items()} == {
        k: v.shape for k, v in lazy_distiller.student.state_dict().items()
    }
    for a, b in (
        (yacs_distiller.teacher, lazy_distiller.teacher),
        (yacs_distiller.teacher, teacher),
    ):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    # a yacs teacher config (here the R-50 student's own yaml, with the student's weights)
    student = yacs_distiller.student
    torch.save({"model": student.state_dict()}, tmp_path / "r50.pth")
    from_yaml = build_teacher(
        "gfl_R_50_FPN_1x.yaml", str(tmp_path / "r50.pth"), ["MODEL.GFL.QFL_BETA", "1.5"]
    )
    assert isinstance(from_yaml, GFL) and from_yaml.cls_loss.beta == 1.5
    sa, sb = from_yaml.state_dict(), student.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert distill_from_yacs_config(add_gfl_config(get_cfg()), student) is None
