"""Batches made on the training device: the packed split lives there as uint8, augmentation is tensor ops.

Each data set names its augmentation in its manifest (`AUGMENTATIONS`) and is normalised with the
manifest's per-channel statistics of its training split. Resize-then-crop is one bilinear ``grid_sample``
that evaluates exactly the crop's pixels; docs/data.md#normalisation-and-augmentation gives the
augmentations, the sampling coordinates and how they match torchvision.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from archbench.data.cifar import crop_room, pad_crop_flip
from archbench.errors import ArchbenchError

UNIT = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean and std that leave pixels scaled to [0, 1], not normalised


def upscaled_size(image_size: int) -> int:
    """U = round(S * 256 / 224): the study's 64 -> 256 upscale before a 224 crop, for any crop S."""
    return round(image_size * 256 / 224)


def transform_batch(
    x: torch.Tensor,
    image_size: int,
    offsets: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
    *,
    mean: tuple[float, ...] = UNIT[0],
    std: tuple[float, ...] = UNIT[1],
    augmentation: str = "upscale-crop-flip",
) -> torch.Tensor:
    """uint8 B x H x W x 3 -> B x 3 x S x S: ``augmentation``'s geometry at ``offsets`` (B x 2: top, left;
    default: the centre crop) with ``flips``, then ``(x / 255 - mean) / std`` per channel.

    The arithmetic is float32; the result is written once in the training ``dtype`` (bf16 or fp16 under
    autocast, which then has nothing left to cast at the first conv) and memory format.
    """
    geometry = augmentation_named(augmentation)
    if offsets is None:
        centre = geometry.centre(image_size, x.shape[1])
        offsets = torch.full((x.shape[0], 2), centre, device=x.device)
    scale, shift = _normalisation(x.device, tuple(mean), tuple(std))
    out = geometry.apply(x, image_size, offsets.to(x.device), flips, scale, shift)
    return out.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _upscale_crop(x: torch.Tensor, image_size: int, offsets, flips, scale, shift) -> torch.Tensor:
    """Upscale to U, crop S x S at ``offsets``, flip: one grid_sample (docs/data.md gives the coordinates)."""
    _, height, width, _ = x.shape
    upscaled = upscaled_size(image_size)
    # Normalising first is exact (bilinear weights sum to 1) and touches H x W pixels instead of S x S.
    source = torch.addcmul(shift, x.permute(0, 3, 1, 2).float(), scale)
    if upscaled < min(height, width):  # the "upscale" shrinks the image: antialias, as torchvision and PIL do
        source = F.interpolate(source, size=(upscaled, upscaled), mode="bilinear", antialias=True, align_corners=False)
    grid = _crop_grid(offsets, flips, image_size, upscaled)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _pad_crop(x: torch.Tensor, image_size: int, offsets, flips, scale, shift) -> torch.Tensor:
    """CIFAR's zero padding, crop at ``offsets`` and flip on the uint8 pixels (a copy), then normalise."""
    cropped = pad_crop_flip(x, image_size, offsets, flips)
    return torch.addcmul(shift, cropped.permute(0, 3, 1, 2).float(), scale)


@dataclass(frozen=True)
class Augmentation:
    """Crop offsets in ``[0, room(S, H)]`` per axis, a flip if ``flip``, and ``apply(x, S, offsets, flips, scale,
    shift)`` making the normalised (``x * scale + shift``) float batch; evaluation crops at the centre."""

    description: str
    flip: bool
    room: Callable[[int, int], int]
    apply: Callable[..., torch.Tensor]

    def centre(self, image_size: int, height: int) -> int:
        return int(round(self.room(image_size, height) / 2.0))


AUGMENTATIONS: dict[str, Augmentation] = {
    "upscale-crop-flip": Augmentation(
        "upscale to S*256/224, random S crop, horizontal flip", True, lambda s, h: upscaled_size(s) - s, _upscale_crop
    ),
    "upscale-crop": Augmentation(
        "upscale to S*256/224, random S crop, no flip", False, lambda s, h: upscaled_size(s) - s, _upscale_crop
    ),
    "pad-crop-flip": Augmentation(
        "4-pixel zero padding, random S crop, horizontal flip", True, lambda s, h: crop_room(h, s), _pad_crop
    ),
}


def augmentation_named(name: str) -> Augmentation:
    if name not in AUGMENTATIONS:
        raise ArchbenchError(f"unknown augmentation '{name}' (known: {', '.join(AUGMENTATIONS)})")
    return AUGMENTATIONS[name]


@functools.cache
def _normalisation(
    device: torch.device, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift taking 0..255 to (x / 255 - mean) / std, made once per device and statistics
    (building them per batch would copy from the host, and wait for the device, at every step)."""
    scale = torch.tensor([1 / (255 * s) for s in std]).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    return scale.to(device), shift.to(device)


def _crop_grid(offsets: torch.Tensor, flips: torch.Tensor | None, size: int, upscaled: int) -> torch.Tensor:
    """B x S x S x 2 sampling grid (x, y in [-1, 1]) of each image's crop in the upscaled image."""
    k = torch.arange(size, device=offsets.device, dtype=torch.float32)
    top, left = offsets[:, :1].float(), offsets[:, 1:].float()
    gy = (2 * (k + top) + 1) / upscaled - 1  # B x S
    gx = (2 * (k + left) + 1) / upscaled - 1
    if flips is not None:
        gx = torch.where(flips.to(offsets.device).view(-1, 1), gx.flip(1), gx)
    gx, gy = torch.broadcast_tensors(gx[:, None, :], gy[:, :, None])
    return torch.stack((gx, gy), dim=-1)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for (seed, epoch): no RNG state to checkpoint, and CPU and GPU runs draw alike."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


class DeviceLoader:
    """Iterate (x, y) batches of one packed split held on ``device``, sharded over ``world_size`` ranks.

    The images are uploaded once; each batch is a gather plus `transform_batch` with the data's settings
    (pass ``**data.transform``). Epoch e's order and augmentation come from a CPU generator seeded by
    (seed, e). Training batches are all full, so a compiled step sees one shape (the remainder waits for a
    later epoch's shuffle); evaluation covers every image once, in order, centre-cropped and unflipped.
    docs/data.md#normalisation-and-augmentation gives the sharding.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        image_size: int,
        train: bool,
        device: torch.device | str,
        seed: int = 0,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
        mean: tuple[float, ...] = UNIT[0],
        std: tuple[float, ...] = UNIT[1],
        augmentation: str = "upscale-crop-flip",
    ):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.image_size = image_size
        self.train = train
        self.seed = seed
        self.channels_last = channels_last
        self.dtype = dtype
        self.mean, self.std = tuple(mean), tuple(std)
        self.augmentation = augmentation
        self.geometry = augmentation_named(augmentation)
        self.rank, self.world_size = rank, world_size
        self.full_batches = train  # training batches are always full size (one shape to compile)
        self.epoch = 0
        self.dataset_size = len(images)
        if self.full_batches and self.num_batches == 0:
            raise ArchbenchError(
                f"a batch of {batch_size} on each of {world_size} process(es) needs at least {batch_size * world_size} "
                f"training images, but the split holds {self.dataset_size}: lower --batch-size."
            )
        if not self.full_batches and self.dataset_size // world_size < self.num_batches:
            raise ArchbenchError(
                f"{self.dataset_size} images are too few to evaluate on {world_size} ranks at batch size {batch_size}."
            )
        # uploaded once (a memory-mapped split is read into memory here); torch tensors need contiguous, writable
        # memory, and np.load(mmap_mode="r") gives neither guarantee
        self.images = torch.from_numpy(np.require(images, requirements=["C", "W"])).to(self.device)
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(self.device)

    @property
    def num_batches(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.full_batches:
            return self.dataset_size // global_batch
        return math.ceil(self.dataset_size / global_batch)

    def as_evaluation(self) -> DeviceLoader:
        """This loader's images (the same tensors on the device, no second copy) with the evaluation transform:
        centre crop, no flip, in order; its batches keep their size (all full for a training loader)."""
        view = copy.copy(self)
        view.train = False
        return view

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This rank's sample indices, crop offsets and flip flags for the current epoch (on the device)."""
        n = self.dataset_size
        if not self.train:
            used = n if not self.full_batches else self.num_batches * self.batch_size * self.world_size
            return torch.arange(used)[self.rank :: self.world_size].to(self.device), None, None
        generator = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=generator)
        room = self.geometry.room(self.image_size, self.images.shape[1])
        offsets = torch.randint(0, room + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        used = slice(self.rank, self.num_batches * self.batch_size * self.world_size, self.world_size)
        order, offsets, flips = (t[used].to(self.device) for t in (order, offsets, flips))
        return order, offsets, flips if self.geometry.flip else None

    def __iter__(self):
        steps = self.num_batches
        indices, offsets, flips = (
            t.tensor_split(steps) if t is not None else [None] * steps for t in self.epoch_plan()
        )
        for part, batch_offsets, batch_flips in zip(indices, offsets, flips):
            x = transform_batch(
                self.images[part],
                self.image_size,
                batch_offsets,
                batch_flips,
                self.channels_last,
                self.dtype,
                mean=self.mean,
                std=self.std,
                augmentation=self.augmentation,
            )
            yield x, self.labels[part]
