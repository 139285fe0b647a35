"""Published facts REPORT.md sets beside archbench's numbers, each with its source.

These are references, never archbench results: the report prints them in rows and sentences that say
where they come from. Accuracies and errors are percentages, exactly as published.
"""

from __future__ import annotations

from dataclasses import dataclass

PROJECT_BRIEF = "the reference reproduction archbench is built to run, as the project brief gives it"
BRIEF_PROTOCOL = "Tiny-ImageNet-200, 64x64 upscaled to 256, random 224 crop, 50% flip, val set as test set"
HE_2016 = 'He et al. 2016, "Deep Residual Learning for Image Recognition" (CVPR), Table 2'
GIUNG_BASELINE = "cs-giung/giung2-jax, projects/Baseline-TinyImageNet"


@dataclass(frozen=True)
class ReproductionAccuracy:
    """Final accuracies the reference reproduction reports for one model."""

    model: str  # the archbench registry name it corresponds to
    train_acc: float  # percent
    test_acc: float  # percent
    protocol: str
    source: str


@dataclass(frozen=True)
class ConvergenceClaim:
    """An epochs-to-converge statement, quoted as the source words it (no threshold is given)."""

    quote: str
    source: str


@dataclass(frozen=True)
class PublishedResult:
    """One number from a paper or an independent baseline, with the protocol it was measured under."""

    model: str  # the archbench registry name it corresponds to
    label: str  # the name the source uses
    dataset: str
    protocol: str
    metric: str
    value: str  # as published, e.g. "27.94" or "about 65"
    source: str


REPRODUCTION = ReproductionAccuracy(
    model="resnet18", train_acc=85.46, test_acc=54.72, protocol=BRIEF_PROTOCOL, source=PROJECT_BRIEF
)

CONVERGENCE = ConvergenceClaim(
    quote="ResNet converges in fewer epochs than VGG11/VGG16 (about 30 vs 40)", source=PROJECT_BRIEF
)

_IMAGENET_10CROP = ("ImageNet", "10-crop, He et al. recipe (SGD, batch 256, lr 0.1 with plateau drops)")
_TINY_NATIVE = ("Tiny-ImageNet-200", "from scratch at 64x64 with modified stems, 100 epochs, cosine lr 0.1")


@dataclass(frozen=True)
class DepthError:
    """One row of He et al. 2016, Table 2: a plain or residual net of one depth, ImageNet top-1 error."""

    label: str  # the name the paper uses
    depth: int
    residual: bool
    top1_error: float  # percent, 10-crop testing
    source: str


HE_2016_TABLE2_PROTOCOL = "ImageNet, top-1 error, 10-crop testing"
HE_2016_TABLE2: tuple[DepthError, ...] = (
    DepthError("plain-18", 18, False, 27.94, HE_2016),
    DepthError("ResNet-18", 18, True, 27.88, HE_2016),
    DepthError("plain-34", 34, False, 28.54, HE_2016),
    DepthError("ResNet-34", 34, True, 25.03, HE_2016),
)


def _imagenet_top1(model: str, label: str) -> PublishedResult:
    """The HE_2016_TABLE2 row the paper calls `label`, as a published reference for `model`."""
    row = next(row for row in HE_2016_TABLE2 if row.label == label)
    return PublishedResult(model, label, *_IMAGENET_10CROP, "top-1 error (%)", str(row.top1_error), row.source)


PUBLISHED: tuple[PublishedResult, ...] = (
    _imagenet_top1("resnet18_plain", "plain-18"),
    _imagenet_top1("resnet18", "ResNet-18"),
    PublishedResult("vgg11", "VGG11", *_TINY_NATIVE, "test accuracy (%)", "51.8", GIUNG_BASELINE),
    PublishedResult("vgg11_bn", "VGG11-BN", *_TINY_NATIVE, "test accuracy (%)", "55.9", GIUNG_BASELINE),
    PublishedResult("vgg16", "VGG16", *_TINY_NATIVE, "test accuracy (%)", "53.8", GIUNG_BASELINE),
    PublishedResult("vgg16_bn", "VGG16-BN", *_TINY_NATIVE, "test accuracy (%)", "57.8", GIUNG_BASELINE),
    PublishedResult("resnet18", "ResNet-18", *_TINY_NATIVE, "test accuracy (%)", "about 65", GIUNG_BASELINE),
)

HE_2016_CONVERGENCE_QUOTE = "the 18-layer ResNet converges faster"  # than plain-18, at similar accuracy

# Parameters and fvcore GFLOPs, measured: what archbench's own builders must reproduce, and torchvision's
# modules (the same architectures) are checked against.
COUNTS_MEASURED = (
    "torchvision 0.29.1 + fvcore 0.1.5, measured: 200 classes, eval mode, one 1x3xSxS input; "
    "fvcore counts one fused multiply-add as one flop and does not count max-pool or the residual add"
)
PLAIN34_DERIVED = (
    f"resnet34 (torchvision) without its three 1x1 projection shortcuts (173,824 fewer); {COUNTS_MEASURED}"
)


@dataclass(frozen=True)
class ModelCount:
    """Parameters and fvcore GFLOPs of one architecture at 200 classes; None where not measured."""

    model: str  # the archbench registry name; for a torchvision-only model, torchvision's name for it
    parameters: int
    gflops_224: float | None  # fvcore GFLOPs at 224x224
    gflops_64: float | None  # fvcore GFLOPs at 64x64
    source: str


MODEL_COUNTS: tuple[ModelCount, ...] = (
    ModelCount("resnet18", 11_279_112, 1.8187, 0.1486, COUNTS_MEASURED),
    ModelCount("vgg11", 129_585_736, 7.6058, 0.7314, COUNTS_MEASURED),
    ModelCount("vgg11_bn", 129_591_240, 7.6207, 0.7326, COUNTS_MEASURED),
    ModelCount("vgg16", 135_079_944, 15.4670, 1.3731, COUNTS_MEASURED),
    ModelCount("vgg16_bn", 135_088_392, 15.4941, 1.3754, COUNTS_MEASURED),
    ModelCount("resnet34", 21_387_272, 3.6709, None, COUNTS_MEASURED),
    ModelCount("resnet34_plain", 21_213_448, None, None, PLAIN34_DERIVED),
    ModelCount("vgg19", 140_389_640, 19.6288, None, COUNTS_MEASURED),
    ModelCount("vgg19_bn", 140_400_648, 19.6585, None, COUNTS_MEASURED),
    ModelCount("mobilenet_v3_small", 1_722_856, 0.0588, None, COUNTS_MEASURED),
)


# Balduzzi et al. 2017, "The Shattered Gradients Problem: If resnets are the answer, then what is the
# question?" (ICML): in plain nets, gradients decorrelate towards white noise with depth (exponentially);
# with skip connections the decorrelation is sublinear.
BALDUZZI_2017 = 'Balduzzi et al. 2017, "The Shattered Gradients Problem" (ICML)'

# How a throughput benchmark is trusted (`archbench bench` follows both): users of timm's benchmark
# reported that models measured one after another in one process change each other's numbers (allocator
# fragmentation), so each model is measured in a process of its own (huggingface/pytorch-image-models
# issue 955); and that synthetic-input throughput overstates training speed when the input pipeline is the
# bottleneck (ResNet-50 on an A100: about 2,600 img/s on synthetic input against 1,923 img/s in real
# training, issue 1491), hence model-only beside end-to-end. timm's benchmark retries with a smaller batch
# after running out of memory and records the batch used.
TIMM_BENCHMARK_PITFALLS = "huggingface/pytorch-image-models issues 955 and 1491"

# He et al. 2016, §4.2 (CIFAR-10): Table 6, test error (%) of the 6n+2-layer CIFAR ResNets (option A
# shortcuts, 45k/5k split for the choices, batch 128, lr 0.1 divided by 10 at 32k and 48k iterations, 64k in
# all). Fig. 6: the plain 20/32/44/56 nets' training and test error rise with depth (degradation); the paper
# prints no table of the plain nets' numbers, so none is set beside them.
HE_2016_CIFAR = 'He et al. 2016, "Deep Residual Learning for Image Recognition" (CVPR), Table 6 and Fig. 6'
HE_2016_CIFAR_PROTOCOL = "CIFAR-10 test set, 32x32, pad-4 random crop and flip, 64k iterations"
HE_2016_CIFAR_PLAIN = "Fig. 6: the plain 20/32/44/56-layer nets' test error rises with depth (no table given)"
HE_2016_TABLE6: tuple[DepthError, ...] = (
    DepthError("ResNet-20", 20, True, 8.75, HE_2016_CIFAR),
    DepthError("ResNet-32", 32, True, 7.51, HE_2016_CIFAR),
    DepthError("ResNet-44", 44, True, 7.17, HE_2016_CIFAR),
    DepthError("ResNet-56", 56, True, 6.97, HE_2016_CIFAR),
    DepthError("ResNet-110", 110, True, 6.43, HE_2016_CIFAR),
)

# What the literature expects of the gradients at initialisation, set beside the early-gradient claims.
HE_2016_GRADIENTS = (
    "He et al. 2016 §4.1: plain nets with BN show healthy backward gradient norms, so their difficulty is "
    "not vanishing gradients"
)
YANG_2019 = 'Yang et al. 2019, "A Mean Field Theory of Batch Normalization" (ICLR)'
YANG_2019_GRADIENTS = f"{YANG_2019}: in plain deep nets BN makes gradients explode with depth at initialisation"
