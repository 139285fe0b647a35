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

    resnet_epochs: int
    vgg_epochs: int
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
    resnet_epochs=30,
    vgg_epochs=40,
    quote="ResNet converges in fewer epochs than VGG11/VGG16 (about 30 vs 40)",
    source=PROJECT_BRIEF,
)

_IMAGENET_10CROP = ("ImageNet", "10-crop, He et al. recipe (SGD, batch 256, lr 0.1 with plateau drops)")
_TINY_NATIVE = ("Tiny-ImageNet-200", "from scratch at 64x64 with modified stems, 100 epochs, cosine lr 0.1")

PUBLISHED: tuple[PublishedResult, ...] = (
    PublishedResult("resnet18_plain", "plain-18", *_IMAGENET_10CROP, "top-1 error (%)", "27.94", HE_2016),
    PublishedResult("resnet18", "ResNet-18", *_IMAGENET_10CROP, "top-1 error (%)", "27.88", HE_2016),
    PublishedResult("vgg11", "VGG11", *_TINY_NATIVE, "test accuracy (%)", "51.8", GIUNG_BASELINE),
    PublishedResult("vgg11_bn", "VGG11-BN", *_TINY_NATIVE, "test accuracy (%)", "55.9", GIUNG_BASELINE),
    PublishedResult("vgg16", "VGG16", *_TINY_NATIVE, "test accuracy (%)", "53.8", GIUNG_BASELINE),
    PublishedResult("vgg16_bn", "VGG16-BN", *_TINY_NATIVE, "test accuracy (%)", "57.8", GIUNG_BASELINE),
    PublishedResult("resnet18", "ResNet-18", *_TINY_NATIVE, "test accuracy (%)", "about 65", GIUNG_BASELINE),
)

HE_2016_CONVERGENCE_QUOTE = "the 18-layer ResNet converges faster"  # than plain-18, at similar accuracy
