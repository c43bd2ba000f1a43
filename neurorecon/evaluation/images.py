"""Image handling of the evaluation protocol: float images in [0, 1], bilinear resizes on tensors, no crop.

torchvision changed the default ``antialias`` of tensor ``Resize`` in 0.17 (``True`` since; ``False`` with a
warning before). The MindEye code base ran under torchvision 0.15/0.16, so its resizes were not antialiased:
:data:`ANTIALIAS` is ``False`` and every resize here passes it explicitly (the config key ``antialias`` can
change it; :func:`protocol_settings` records what was used). Antialiasing only matters when shrinking (NSD's 425 px
stimuli to 224–342 px); NSD-mini's 32–64 px images are only ever enlarged.
"""

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

__all__ = ["ANTIALIAS", "as_float_images", "protocol_resize", "protocol_settings", "to_uint8"]

#: ``antialias`` of tensor Resize used by the protocol (see the module docstring).
ANTIALIAS = False


def as_float_images(images):
    """uint8 (n, H, W, 3) arrays, float (n, H, W, 3) arrays in [0, 1] or float (n, 3, H, W) tensors in [0, 1]
    → float32 tensor (n, 3, H, W) in [0, 1] (no resize).

    Raises
    ------
    ValueError
        If the array is not a batch of RGB images.
    """
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected float images (n, 3, H, W), got a tensor of shape {tuple(x.shape)}")
        return x
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected images (n, H, W, 3), got an array of shape {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    return x.float() / 255.0 if a.dtype == np.uint8 else x.float()


def protocol_resize(images, size, antialias=ANTIALIAS):
    """Bilinear resize of float images (n, 3, H, W) to (size, size) with torchvision's tensor ``resize``.

    NSD and NSD-mini images are square, so this equals MindEye's ``transforms.Resize(size)``.
    """
    x = as_float_images(images)
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return TF.resize(x, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=antialias)


def protocol_settings(antialias=ANTIALIAS):
    """What the resizes do, for reports: a dict."""
    import torchvision

    return dict(resize="torchvision.transforms.functional.resize, bilinear, on tensors, no centre crop",
                antialias=bool(antialias), torchvision=torchvision.__version__)


def to_uint8(images):
    """Float (n, 3, H, W) in [0, 1] → uint8 (n, H, W, 3) numpy."""
    x = as_float_images(images)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
