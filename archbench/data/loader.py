"""Batches made on the training device: the packed split lives there as uint8, augmentation is tensor ops.

The study's transform: upscale 64 -> 256, random 224 crop, horizontal flip with probability 0.5,
normalise with the ImageNet mean/std; evaluation upscales to 256 and takes the centre 224 crop. For any
output size S the upscale is to U = round(S * 256 / 224), so CPU runs can use small S.

Resize-then-crop is never materialised: one bilinear ``grid_sample`` over the 64 x 64 source evaluates
exactly the S x S pixels of the crop. Output pixel k of a crop at offset o in the U x U image sits at
``(k + o + 0.5) * 64 / U - 0.5`` in source pixels (the half-pixel convention of ``F.interpolate`` with
``align_corners=False``), which in grid_sample's normalised coordinates is ``(2 * (k + o) + 1) / U - 1``.
Border padding reproduces the resize's edge clamping, so the result equals torchvision's
``resize(antialias=False)`` + ``crop`` up to float rounding (tests/test_data.py checks this). The
normalised coordinates do not depend on the source's size, so for S < 56, where U < 64 and the "upscale"
shrinks the image, the source is first resized to U x U with antialiasing and the same grid then picks
the crop's pixels exactly.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from archbench.errors import ArchbenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def upscaled_size(image_size: int) -> int:
    """U = round(S * 256 / 224): the study's 64 -> 256 upscale before a 224 crop, for any crop S."""
    return round(image_size * 256 / 224)


def centre_offset(image_size: int) -> int:
    """Top/left of the centre crop, rounded as torchvision's ``center_crop`` does."""
    return int(round((upscaled_size(image_size) - image_size) / 2.0))


def transform_batch(
    x: torch.Tensor,
    image_size: int,
    offsets: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 B x H x W x 3 -> normalised B x 3 x S x S: upscale to U, crop S x S, flip.

    ``offsets`` (B x 2 integers: top, left in the U x U image; default: the centre crop) and ``flips``
    (B booleans; default: none) make the function pure, so tests can compare it with torchvision. The
    arithmetic is float32; the result is written once in the training ``dtype`` (bf16 or fp16 under
    autocast, which then has nothing left to cast at the first conv) and memory format.
    """
    batch, height, width, _ = x.shape
    upscaled = upscaled_size(image_size)
    if offsets is None:
        offsets = torch.full((batch, 2), centre_offset(image_size), device=x.device)
    # Normalising first is exact (bilinear weights sum to 1) and touches 64 x 64 pixels instead of S x S.
    scale, shift = _normalisation(x.device)
    source = torch.addcmul(shift, x.permute(0, 3, 1, 2).float(), scale)
    if upscaled < min(height, width):  # S < 56 shrinks the image: antialias, as torchvision and PIL do
        source = F.interpolate(source, size=(upscaled, upscaled), mode="bilinear", antialias=True, align_corners=False)
    grid = _crop_grid(offsets.to(x.device), flips, image_size, upscaled)
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@functools.cache
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift taking 0..255 to (x / 255 - mean) / std, made once per device
    (building them per batch would copy from the host, and wait for the device, at every step)."""
    scale = torch.tensor([1 / (255 * s) for s in IMAGENET_STD]).view(1, 3, 1, 1)
    shift = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1, 1)
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

    The uint8 N x 64 x 64 x 3 images are uploaded once (1.2 GB for the real train split); each batch is a
    gather plus `transform_batch`, with no worker processes and no per-image Python.

    Order and augmentation of epoch e come from a CPU generator seeded by (seed, e) (see `set_epoch`):
    in training a permutation of all N samples plus a crop offset and a flip flag for each of the N
    positions, so a sample's augmentation does not depend on the number of ranks; in evaluation the
    identity order, the centre crop and no flip.

    Training batches all hold exactly ``batch_size`` images, so a compiled step sees one shape: an epoch
    is the first ``steps x batch_size x world_size`` positions of the permutation, where ``steps =
    N // (batch_size x world_size)``, and rank r takes positions r, r + world_size, ... of them. The
    last ``N mod (batch_size x world_size)`` positions wait for a later epoch's shuffle (timm's training
    loader drops its last batch the same way); within an epoch the ranks' shards are disjoint and no
    image is seen twice. Evaluation covers every image once: each rank's shard of all N positions is
    split into equal-as-possible batches (``tensor_split``), the same number on every rank.
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
        self.images = _upload(images, self.device)
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(self.device)

    @property
    def num_batches(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.full_batches:
            return self.dataset_size // global_batch
        return math.ceil(self.dataset_size / global_batch)

    @property
    def num_samples(self) -> int:
        """Images this rank takes per epoch."""
        if self.full_batches:
            return self.num_batches * self.batch_size
        return len(range(self.rank, self.dataset_size, self.world_size))

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
        room = upscaled_size(self.image_size) - self.image_size
        offsets = torch.randint(0, room + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        used = slice(self.rank, self.num_batches * self.batch_size * self.world_size, self.world_size)
        return tuple(t[used].to(self.device) for t in (order, offsets, flips))

    def __iter__(self):
        steps = self.num_batches
        indices, offsets, flips = (
            t.tensor_split(steps) if t is not None else [None] * steps for t in self.epoch_plan()
        )
        for part, batch_offsets, batch_flips in zip(indices, offsets, flips):
            x = transform_batch(
                self.images[part], self.image_size, batch_offsets, batch_flips, self.channels_last, self.dtype
            )
            yield x, self.labels[part]


def _upload(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy the array once onto ``device`` (a memory-mapped split is read into memory here)."""
    array = np.ascontiguousarray(images)
    if not array.flags.writeable:  # torch tensors need writable memory; np.load(mmap_mode="r") is not
        array = np.array(array)
    return torch.from_numpy(array).to(device)
