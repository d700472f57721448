"""Transforms on ``(image, target)`` pairs (specs/data.md §3).

``image`` is a (3, H, W) float tensor; ``target`` is the dict of ``CocoDetection``. Every
transform returns a new target dict and never modifies its input in place.

Randomness: a random transform draws from the ``torch.Generator`` it was built with, or,
when none is given, from torch's global generator. With ``DataLoader(num_workers > 0)``
leave ``generator=None``: each worker then draws from its own global generator, which the
DataLoader seeds from its base seed; a generator passed here would be copied into every
worker and give every worker the same draws.
"""
import torch
import torch.nn.functional as F

#: ImageNet statistics for RGB images in [0, 1] (torchvision pretrained backbones).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Caffe-style backbones (MSRA/detectron weights): BGR images in [0, 255] minus this mean,
#: given in B, G, R order, std 1 (maskrcnn-benchmark ``INPUT.PIXEL_MEAN`` with ``TO_BGR255``).
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)
CAFFE_STD = (1.0, 1.0, 1.0)

_BOX_KEYS = ("boxes", "ignore_boxes")


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self):
        return f"Compose({self.transforms!r})"


class Resize:
    """Scale the shorter side to ``min_size``, capping the longer side at ``max_size``.

    Args:
        min_size: int, or a tuple of ints to choose from uniformly at random per call
            (multi-scale training).
        max_size: int cap on the longer side; None for no cap.
        generator: optional ``torch.Generator`` for the choice of ``min_size``.

    The output size is ``(int(H * s + 0.5), int(W * s + 0.5))`` with
    ``s = min(min_size / min(H, W), max_size / max(H, W))``; the image is resized bilinearly
    (antialiased when shrinking). Boxes are scaled by the exact per-axis factors
    ``sx = W' / W``, ``sy = H' / H``, so they stay aligned with the pixels; ``scale_factor``
    in the target is multiplied by ``(sx, sy)``.
    """

    def __init__(self, min_size, max_size=None, *, generator=None):
        self.min_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        if not self.min_sizes or any(int(s) <= 0 for s in self.min_sizes):
            raise ValueError(f"min_size: expected positive ints, got {min_size!r}")
        if max_size is not None and max_size <= 0:
            raise ValueError(f"max_size: expected a positive int or None, got {max_size!r}")
        self.max_size = max_size
        self.generator = generator

    def __call__(self, image, target):
        height, width = image.shape[-2:]
        new_h, new_w = self.output_size(height, width, self._choose_min_size())
        if (new_h, new_w) == (height, width):  # bilinear resampling to the same size is the identity
            resized = image.clone()
        else:
            resized = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                                    antialias=new_h < height or new_w < width)[0]
        sx, sy = new_w / width, new_h / height
        target = scale_boxes(target, sx, sy)
        old_sx, old_sy = target.get("scale_factor", (1.0, 1.0))
        target["scale_factor"] = (old_sx * sx, old_sy * sy)
        return resized, target

    def output_size(self, height, width, min_size):
        """(H', W') ints for an input of (height, width) and a chosen ``min_size``."""
        scale = min_size / min(height, width)
        if self.max_size is not None:
            scale = min(scale, self.max_size / max(height, width))
        return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))

    def _choose_min_size(self):
        if len(self.min_sizes) == 1:
            return self.min_sizes[0]
        index = torch.randint(len(self.min_sizes), (1,), generator=self.generator).item()
        return self.min_sizes[index]

    def __repr__(self):
        return f"Resize(min_size={self.min_sizes}, max_size={self.max_size})"


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``: x1' = W - x2, x2' = W - x1.

    Toggles ``target["flipped"]``.
    """

    def __init__(self, p=0.5, *, generator=None):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = p
        self.generator = generator

    def __call__(self, image, target):
        if torch.rand((), generator=self.generator).item() >= self.p:
            return image, dict(target)
        return hflip(image, target)

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """``(image - mean) / std`` per channel; boxes unchanged. Defaults: ImageNet RGB in [0, 1].

    ``to_bgr255``: first turn the (3, H, W) RGB image in [0, 1] into BGR in [0, 255]
    (``image[[2, 1, 0]] * 255``), as Caffe-style backbones expect; ``mean``/``std`` are then in
    B, G, R order and 0-255 units. ``Normalize.for_style`` gives the normalisation of a
    ``backbone.style`` (specs/model.md §1.1).
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, *, to_bgr255=False):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self.to_bgr255 = bool(to_bgr255)
        if (self.std <= 0).any():
            raise ValueError(f"std: expected positive values, got {std!r}")

    @classmethod
    def for_style(cls, style):
        """The input normalisation of ``backbone.style``: "pytorch" is ``Normalize()``
        (RGB in [0, 1], ImageNet mean/std); "caffe" is BGR in [0, 255] minus ``CAFFE_MEAN_BGR``,
        std 1."""
        if style == "pytorch":
            return cls()
        if style == "caffe":
            return cls(CAFFE_MEAN_BGR, CAFFE_STD, to_bgr255=True)
        raise ValueError(f"backbone.style: expected pytorch or caffe, got {style!r}")

    def __call__(self, image, target):
        mean = self.mean.to(image.device, image.dtype)
        std = self.std.to(image.device, image.dtype)
        if self.to_bgr255:
            image = image.flip(-3) * 255.0
        return (image - mean) / std, dict(target)

    def __repr__(self):
        bgr = ", to_bgr255=True" if self.to_bgr255 else ""
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}{bgr})"


def hflip(image, target):
    """Mirror (3, H, W) ``image`` and the (N, 4) xyxy boxes of ``target`` left-right."""
    width = image.shape[-1]
    target = dict(target)
    for key in _BOX_KEYS:
        if key in target:
            boxes = target[key]
            target[key] = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    target["flipped"] = not target.get("flipped", False)
    return image.flip(-1), target


def scale_boxes(target, sx, sy):
    """A copy of ``target`` with its (N, 4) xyxy boxes multiplied by (sx, sy, sx, sy)."""
    target = dict(target)
    for key in _BOX_KEYS:
        if key in target:
            factor = torch.tensor([sx, sy, sx, sy], dtype=target[key].dtype, device=target[key].device)
            target[key] = target[key] * factor
    return target


def to_original_coordinates(boxes, target):
    """Map (D, 4) xyxy boxes predicted on the transformed image back to the original image.

    Undoes ``flipped`` (in transformed coordinates) and ``scale_factor`` recorded in
    ``target``, then clips to ``orig_size``. Returns a new (D, 4) tensor of the same dtype.
    """
    orig_h, orig_w = target["orig_size"]
    sx, sy = target.get("scale_factor", (1.0, 1.0))
    if target.get("flipped", False):
        width = orig_w * sx
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    factor = torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)
    boxes = boxes / factor
    limits = torch.tensor([orig_w, orig_h, orig_w, orig_h], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(boxes.clamp(min=0), limits)
