"""Devices and dtypes, one rule for every stage.

- The device comes from the stage's :class:`accelerate.Accelerator` (:func:`stage_device`); ``auto`` in a
  config means CUDA when available, else the CPU.
- Frozen foundation parts are loaded in the configured dtype (``float16``/``bfloat16`` on GPUs, ``float32`` in
  the CPU demo); trainable parts stay ``float32`` and run under ``accelerator.autocast()``.
- Whatever is sampled or evaluated after training is moved and cast explicitly: :func:`to_module` puts an input
  on a module's device and in its floating dtype, :func:`cast_module` moves a trained module to a device and dtype.
"""

import torch

__all__ = ["resolve_device", "torch_dtype", "module_device", "module_dtype", "to_module", "cast_module",
           "stage_device", "check_precision", "as_buffer", "DTYPES"]

#: Config names of the supported floating dtypes.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device):
    """``None``/``auto`` → ``cuda`` if available else ``cpu``; anything else (``cpu``, ``cuda:1``, a
    :class:`torch.device`) as a string."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def torch_dtype(name):
    """The torch dtype of a config name (``float32``, ``float16``, ``bfloat16``) or of a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: expected one of {', '.join(DTYPES)}") from None


def as_buffer(values, dtype=None):
    """A module buffer made from an array or a CPU tensor, created on torch's default device like every factory
    function: a model built inside ``with torch.device(d)`` (e.g. on a GPU, or the fake CUDA of the device tests)
    then has all its tensors on ``d``."""
    return torch.as_tensor(values, dtype=dtype, device=torch.get_default_device())


def _first_tensor(module):
    for t in module.parameters():
        return t
    for t in module.buffers():
        return t
    return None


def module_device(module):
    """The device of a module's first parameter (or buffer); CPU for a module without tensors."""
    t = _first_tensor(module)
    return t.device if t is not None else torch.device("cpu")


def module_dtype(module):
    """The dtype of a module's first floating parameter (float32 for a module without one)."""
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def to_module(x, module):
    """``x`` (a tensor or a numpy array) on ``module``'s device, floating inputs in the module's dtype."""
    x = torch.as_tensor(x)
    return x.to(module_device(module), module_dtype(module) if x.is_floating_point() else None)


def _on(t, device):
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def cast_module(module, device, dtype=None):
    """Move a (trained) module to ``device`` and, if given, a floating ``dtype``; returns it in eval mode.

    A module already there is left as it is (no copy; this is also what lets modules built on a fake device pass
    through, see ``tests/test_devices.py``)."""
    device = torch.device(resolve_device(device))
    dtype = None if dtype is None else torch_dtype(dtype)
    tensors = list(module.parameters()) + list(module.buffers())
    if not all(_on(t, device) for t in tensors):
        module = module.to(device)
    if dtype is not None and any(t.is_floating_point() and t.dtype != dtype for t in tensors):
        module = module.to(dtype)
    return module.eval()


def stage_device(accelerator):
    """The device every tensor of a stage goes to: the accelerator's (one rule for every stage)."""
    return str(accelerator.device)


def check_precision(frozen_dtype, mixed_precision, where):
    """Refuse a training autocast in the other 16-bit format than the frozen weights (fp16 weights under bf16
    autocast, or bf16 weights under fp16): the frozen layers would see inputs of a third dtype. ``no`` and the
    matching format are fine."""
    from .errors import ConfigError

    frozen = str(torch_dtype(frozen_dtype)).replace("torch.", "")
    clash = {"float16": "bf16", "bfloat16": "fp16"}.get(frozen)
    if mixed_precision == clash:
        match = {"float16": "fp16", "bfloat16": "bf16"}[frozen]
        raise ConfigError(f"{where}: mixed_precision {mixed_precision!r} with the foundation's frozen weights in "
                          f"{frozen}; use {match!r} (or 'no'), or set the foundation's dtype to match")
