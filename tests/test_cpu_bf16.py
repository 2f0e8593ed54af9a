"""
bfloat16 CPU inference (``cpu_inference="bf16"``, ``gfl_d2.cpu_inference.BF16CPUDetector``)
and the CPU capability check behind its refusal (``gfl_d2.cpu_features``), on
/proc/cpuinfo texts of real CPUs (their flags lines cut to the flags that matter).
"""

import pytest
import torch
from detectron2.utils.events import EventStorage

from gfl_d2 import cpu_features
from gfl_d2.cpu_features import cpu_flags, cpu_model_name, native_bf16_flags, require_native_bf16
from gfl_d2.cpu_inference import BF16CPUDetector, for_cpu_inference
from gfl_d2.errors import UsageError
from gfl_d2.testing import tiny_gfl, two_image_batch

from .test_frozen_inference import ROUNDINGS, assert_same_detections, confident

X86 = "processor\t: {i}\nvendor_id\t: {vendor}\nmodel name\t: {name}\nflags\t\t: {flags}\n\n"
ARM = "processor\t: {i}\nBogoMIPS\t: 2100.00\nFeatures\t: {flags}\nCPU implementer\t: 0x41\n\n"
BASE_X86 = "fpu vme de pse tsc msr pae mce cx8 sse sse2 ssse3 sse4_1 sse4_2 avx f16c"


def cpuinfo(template, processors=2, **fields):
    return "".join(template.format(i=i, **fields) for i in range(processors))


ZEN3 = cpuinfo(X86, vendor="AuthenticAMD", name="AMD EPYC 7B13", flags=f"{BASE_X86} fma avx2")
ZEN4 = cpuinfo(
    X86,
    vendor="AuthenticAMD",
    name="AMD EPYC 9R14",
    flags=f"{BASE_X86} fma avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni",
)
ICE_LAKE = cpuinfo(
    X86,
    vendor="GenuineIntel",
    name="Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
    flags=f"{BASE_X86} fma avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni",
)
SAPPHIRE_RAPIDS = cpuinfo(
    X86,
    vendor="GenuineIntel",
    name="Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
    flags=f"{BASE_X86} fma avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8",
)
GRAVITON2 = cpuinfo(ARM, flags="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp")
GRAVITON3 = cpuinfo(ARM, flags="fp asimd evtstrm aes sha1 sha2 crc32 asimddp sve i8mm bf16")

# the tiny GFL's longest path of convolutions: stem 1, ResNet-18's 8 blocks x 2, FPN lateral
# and output 2, P6 and P7 2, head tower 1 and output 1
DEPTH = 23
# bfloat16 keeps 8 significant bits: a rounding is off by at most 2^-9 of the value. Each
# convolution rounds its input and its weights to bfloat16 and its output back (3 roundings),
# and in the worst case the relative errors of the layers add up along the path (a
# normalisation rescales the error with the signal). Outputs compare to this share of their
# scale (the largest value of the kind over the levels).
BF16_TOL = 3 * DEPTH * 2**-9


def use_cpuinfo(monkeypatch, text):
    monkeypatch.setattr(cpu_features, "_proc_cpuinfo", lambda: text)


@pytest.mark.parametrize(
    "text, native",
    [
        (ZEN3, []),
        (ICE_LAKE, []),  # AVX-512 without BF16: oneDNN would emulate bfloat16
        (ZEN4, ["avx512_bf16"]),
        (SAPPHIRE_RAPIDS, ["avx512_bf16", "amx_bf16"]),
        (GRAVITON2, []),
        (GRAVITON3, ["bf16"]),
    ],
    ids=["zen3", "ice_lake", "zen4", "sapphire_rapids", "graviton2", "graviton3"],
)
def test_native_bf16_from_cpuinfo(text, native):
    flags = cpu_flags(text)
    assert "avx2" in flags or "asimd" in flags
    assert native_bf16_flags(flags) == native
    if native:
        require_native_bf16(flags)
    else:
        with pytest.raises(UsageError, match="bfloat16 arithmetic"):
            require_native_bf16(flags)


def test_cpu_name_and_flags_without_proc_cpuinfo(monkeypatch):
    assert cpu_model_name(ICE_LAKE).startswith("Intel(R) Xeon(R) Platinum 8375C")
    assert cpu_flags("") == frozenset()
    # no /proc/cpuinfo (macOS): torch's own probe of the CPU decides
    use_cpuinfo(monkeypatch, "")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert native_bf16_flags() == ["avx512_bf16"]


def test_bf16_mode_is_refused_naming_the_missing_flags(monkeypatch):
    model = tiny_gfl()
    use_cpuinfo(monkeypatch, ZEN3)
    with pytest.raises(UsageError) as e:
        for_cpu_inference(model, "bf16")
    message = str(e.value)
    assert "cpu_inference='bf16'" in message and "AMD EPYC 7B13" in message
    assert "avx512_bf16 or amx_bf16" in message and "it has: avx2, fma" in message
    use_cpuinfo(monkeypatch, GRAVITON2)
    with pytest.raises(UsageError, match="flag bf16"):
        for_cpu_inference(model, "bf16")
    # the explicit override, and a CPU with bfloat16 units
    assert isinstance(for_cpu_inference(model, "bf16", allow_emulated_bf16=True), BF16CPUDetector)
    use_cpuinfo(monkeypatch, SAPPHIRE_RAPIDS)
    wrapped = for_cpu_inference(model, "bf16")
    assert isinstance(wrapped, BF16CPUDetector) and wrapped.detector is model
    # the wrapper's state is the detector's: its checkpoints load into a plain GFL
    assert list(wrapped.state_dict()) == [f"detector.{k}" for k in model.state_dict()]


def bf16_error(actual, expected):
    """
    Per kind of output (features, class logits, box logits): the largest error over the levels
    as a share of the kind's scale (its largest value), checked to be within BF16_TOL.
    """
    scale = max(e.abs().max().item() for e in expected)
    error = max((a - e).abs().max().item() for a, e in zip(actual, expected)) / scale
    assert all(a.dtype == torch.float32 for a in actual)
    assert error <= BF16_TOL, error
    return error


def test_bf16_outputs_and_detections_close_to_float32():
    model = confident(tiny_gfl())
    bf16 = BF16CPUDetector(model, allow_emulated=True).eval()
    data = [dict(x, height=200, width=180) for x in two_image_batch()]
    with torch.no_grad():
        images = model.preprocess_image(data)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        bf16_features, bf16_predictions = bf16.backbone_and_head(images.tensor)
        eager, out = model(data), bf16(data)
        # decoding and NMS in float32 on the bfloat16 head's outputs, as the model's own
        decoded = model.forward_inference(images, bf16_features, bf16_predictions)
    errors = [bf16_error(bf16_features, features)]
    errors += [bf16_error(b, p) for b, p in zip(bf16_predictions, predictions)]
    # bfloat16 did run: the errors are far beyond float32's (2^-13 of the scale)
    assert min(errors) > 16 * ROUNDINGS, errors

    # scores: the sigmoid's slope is at most 1/4. An edge is stride x the mean bin of its
    # softmax over the n + 1 = 17 bins; logits off by at most d move that mean by at most
    # 2 d x (n / 2) bins; the largest stride, 128, bounds every level's
    logit_error = max(
        (b - p).abs().max().item() for b, p in zip(bf16_predictions[0], predictions[0])
    )
    box_error = max((b - p).abs().max().item() for b, p in zip(bf16_predictions[1], predictions[1]))
    for e, o, d in zip(eager, out, decoded):
        e, o = e["instances"], o["instances"]
        assert len(e) > 10 and o.image_size == (200, 180)
        assert o.scores.dtype == o.pred_boxes.tensor.dtype == torch.float32
        assert torch.equal(o.scores, d.scores) and torch.equal(o.pred_classes, d.pred_classes)
        assert_same_detections(
            o, e, model, score_tol=logit_error / 4, box_tol=128 * 2 * box_error * 8
        )


def test_bf16_only_for_cpu_inference_without_gradients():
    model = tiny_gfl()
    bf16 = BF16CPUDetector(model, allow_emulated=True)
    bf16.train()
    with EventStorage():
        losses = bf16(two_image_batch())
    assert set(losses) == {"loss_qfl", "loss_bbox", "loss_dfl"}
    bf16.eval()
    assert not bf16.applies()  # gradients enabled
    out = bf16(two_image_batch())
    assert out[0]["instances"].scores.requires_grad
    with torch.no_grad():
        assert bf16.applies()
