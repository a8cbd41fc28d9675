"""CLAM's two augmented views of an episode (Ma et al. 2024; DESIGN.md): independent random
temporal crops of length U{crop_min..crop_max}; in the first view ⌈mask_fraction·length⌉
random steps are zeroed, the second is unmasked. SimCLR's recipe (Chen et al. 2020, §2.1)
with temporal augmentations in place of image ones."""

from __future__ import annotations

import torch


def random_crops(lengths: torch.Tensor, crop_min: int, crop_max: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: crop length U{crop_min..crop_max} clipped to [1, length], and a start
    uniform over the positions where the crop fits in the valid prefix. → (start, crop) [B]."""
    device = lengths.device
    crop = torch.randint(crop_min, crop_max + 1, lengths.shape, generator=generator, device=device)
    crop = torch.minimum(crop, lengths).clamp(min=1)
    room = (lengths - crop + 1).clamp(min=1)  # number of possible starts
    start = (torch.rand(lengths.shape, generator=generator, device=device) * room).long()
    return torch.minimum(start, room - 1), crop


def masked_step_count(crop: torch.Tensor, mask_fraction: float) -> torch.Tensor:
    """⌈mask_fraction · crop⌉, robust to float rounding (0.3·10 is 3.0000000000000004)."""
    return torch.ceil(mask_fraction * crop.double() - 1e-9).long().clamp(min=0)


def two_views(hist: torch.Tensor, lengths: torch.Tensor, generator: torch.Generator,
              crop_min: int = 8, crop_max: int = 48, mask_fraction: float = 0.3):
    """hist [B, T, f] (valid prefix [0, lengths[b]) per row), lengths [B] long ≥ 1
    → (x1, valid1, x2, valid2): [B, L, f] and [B, L] bool, L = min(crop_max, T), the longest
    crop possible (a width known in advance: reading the longest drawn crop back would make
    the host wait for the device; the encoder ignores padding, so the width changes nothing).

    Crops are left-aligned; padding is zero and marked invalid. View 1 has its masked steps'
    features set to 0 (they stay valid). ``generator`` must live on hist's device."""
    if not 1 <= crop_min <= crop_max:
        raise ValueError(f"two_views: need 1 <= crop_min ({crop_min}) <= crop_max ({crop_max})")
    if not 0.0 <= mask_fraction <= 1.0:
        raise ValueError(f"two_views: mask_fraction {mask_fraction} is not in [0, 1]")
    lengths = lengths.to(device=hist.device, dtype=torch.long).clamp(max=hist.shape[1])
    start1, crop1 = random_crops(lengths, crop_min, crop_max, generator)
    start2, crop2 = random_crops(lengths, crop_min, crop_max, generator)
    width = min(crop_max, hist.shape[1])
    steps = torch.arange(width, device=hist.device)

    def crop_view(start, crop):
        valid = steps[None] < crop[:, None]  # [B, L]
        index = (start[:, None] + steps[None]).clamp(max=hist.shape[1] - 1)
        x = torch.gather(hist, 1, index[..., None].expand(-1, -1, hist.shape[2]))
        return x.masked_fill(~valid[..., None], 0.0), valid

    x1, valid1 = crop_view(start1, crop1)
    x2, valid2 = crop_view(start2, crop2)
    # Mask exactly k = ⌈fraction·crop⌉ valid steps of view 1: rank random scores, padding last.
    scores = torch.rand(valid1.shape, generator=generator, device=hist.device)
    scores = scores.masked_fill(~valid1, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)
    masked = rank < masked_step_count(crop1, mask_fraction)[:, None]
    x1 = x1.masked_fill(masked[..., None], 0.0)
    return x1, valid1, x2, valid2
