"""Metric networks of the MindEye protocol, loaded only from local weight files.

=============  =====================  ===========================================  ====  ===================
metric         network                layer                                        px    score
=============  =====================  ===========================================  ====  ===================
AlexNet(2)     torchvision AlexNet    ``features.4``                               256   two-way
AlexNet(5)     torchvision AlexNet    ``features.11``                              256   two-way
Inception      torchvision Inc.-v3    ``avgpool`` (2048)                           342   two-way
CLIP           OpenAI CLIP ViT-L/14   image embedding (768), CLIP normalisation    224   two-way
EffNet-B       torchvision EffNet-B1  ``avgpool`` (1280)                           255   correlation distance
SwAV           SwAV ResNet-50         ``avgpool`` (2048)                           224   correlation distance
demo-CLIP      the foundation CLIP    ``fm.image_embeds`` (smoke/demo only)        own   two-way
=============  =====================  ===========================================  ====  ===================

Architectures come from torchvision (constructed with ``weights=None``) and open_clip; their weights are read
from the files named in ``neurorecon/configs/evaluation.yaml`` and nothing is downloaded. A metric whose file is
not set is *unavailable* (:attr:`MetricNetworks.unavailable` holds the message naming the config key, recorded
in the stage's ``protocol.json`` and shown by notebook 07); it is never replaced by another network. A file that
is set but does not exist, or that does not hold the expected weights, raises :class:`neurorecon.errors.DataError`
(a typo in a path must not turn into a quietly shorter table).

ImageNet-normalised inputs for the torchvision networks; Inception-v3 is built with ``transform_input=True`` as
torchvision does for its pretrained weights (MindEye's ``inception_v3(weights=DEFAULT)``). The demo CLIP is
reported as ``demo-CLIP``, never as ``CLIP``.
"""

import dataclasses
import warnings
from pathlib import Path
from typing import Callable

import torch

from ..devices import resolve_device
from ..errors import DataError
from .images import ANTIALIAS, protocol_resize

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD", "NETWORK_SPECS", "MetricNetwork",
           "MetricNetworks", "load_metric_networks", "load_state_dict", "build_network", "demo_clip_network"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

#: config key → (what the file must hold, input px, {metric: (node, score)}) in report order.
NETWORK_SPECS = {
    "alexnet": ("a torchvision AlexNet state_dict (IMAGENET1K_V1, alexnet-owt-7be5be79.pth)", 256,
                {"AlexNet(2)": ("features.4", "two_way"), "AlexNet(5)": ("features.11", "two_way")}),
    "inception": ("a torchvision Inception-v3 state_dict (IMAGENET1K_V1, inception_v3_google-0cc3c7bd.pth)", 342,
                  {"Inception": ("avgpool", "two_way")}),
    "clip": ("an OpenAI CLIP ViT-L/14 open_clip checkpoint", 224, {"CLIP": ("embed", "two_way")}),
    "efficientnet": ("a torchvision EfficientNet-B1 state_dict (IMAGENET1K_V2, efficientnet_b1-c27df63c.pth)", 255,
                     {"EffNet-B": ("avgpool", "corr_distance")}),
    "swav": ("a SwAV ResNet-50 state_dict (swav_800ep_pretrain.pth.tar)", 224, {"SwAV": ("avgpool",
                                                                                       "corr_distance")}),
}


@dataclasses.dataclass
class MetricNetwork:
    """One feature network and the metrics computed from its outputs.

    Attributes
    ----------
    key : str
        Config key (``alexnet``, ...) or ``demo_clip``.
    metrics : dict
        Metric name → (output node, score): score ``two_way`` or ``corr_distance``.
    size : int
        Input side (px) images are resized to.
    forward : callable
        Float images (n, 3, size, size) in [0, 1] → dict node → Tensor (normalisation included).
    source : str
        The weight file (or model) the network was loaded from.
    embedding : bool
        A CLIP image embedding (usable for retrieval and CLIP-S).
    device : str
    """

    key: str
    metrics: dict
    size: int
    forward: Callable
    source: str
    embedding: bool = False
    device: str = "cpu"

    @torch.no_grad()
    def features(self, images, batch_size=32, antialias=ANTIALIAS):
        """Flattened float32 features per metric: dict metric name → ndarray (n, d)."""
        out = {name: [] for name in self.metrics}
        for i in range(0, len(images), batch_size):
            x = protocol_resize(images[i:i + batch_size], self.size, antialias).to(self.device)
            res = self.forward(x)
            for name, (node, _) in self.metrics.items():
                out[name].append(res[node].float().flatten(1).cpu())
        return {name: torch.cat(v).numpy() for name, v in out.items()}


@dataclasses.dataclass
class MetricNetworks:
    """The metric networks of one configuration.

    Attributes
    ----------
    available : list of MetricNetwork
    unavailable : dict
        Metric name → "unavailable (looked for ...)" message, for every metric that could not be loaded.
    batch_size : int
    antialias : bool
    """

    available: list
    unavailable: dict
    batch_size: int = 32
    antialias: bool = ANTIALIAS

    @property
    def metric_names(self):
        """Every metric (available or not) in report order."""
        names = [m for net in self.available for m in net.metrics] + list(self.unavailable)
        order = [m for spec in NETWORK_SPECS.values() for m in spec[2]]
        order.insert(order.index("CLIP") + 1, "demo-CLIP")
        return sorted(names, key=lambda m: order.index(m) if m in order else len(order))

    @property
    def embedder(self):
        """The CLIP image-embedding network (``CLIP`` preferred over ``demo-CLIP``), or None."""
        nets = [n for n in self.available if n.embedding]
        return next((n for n in nets if "CLIP" in n.metrics), nets[0] if nets else None)

    def sources(self):
        """Metric name → weight file (or model) it was computed with."""
        return {m: n.source for n in self.available for m in n.metrics}


def load_state_dict(path, what):
    """A state_dict from a ``.safetensors`` file or a ``torch.save`` file (unwrapping ``state_dict``/``model``).

    Raises
    ------
    DataError
        If the file cannot be read as a state_dict.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported with its path
        raise DataError(path, what, f"an unreadable file ({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(path, what, f"a {type(sd).__name__} that is not a mapping of tensors")
    return sd


def _load_strict(model, sd, path, what, optional_prefixes=()):
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(optional_prefixes)]
    if unexpected:
        raise DataError(path, what, f"unexpected keys {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
    if missing:
        raise DataError(path, what, f"a state_dict without {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    return model


def _torchvision_model(key, path):
    import torchvision.models as tvm

    what = NETWORK_SPECS[key][0]
    sd = load_state_dict(path, what)
    optional = ()
    if key == "alexnet":
        model = tvm.alexnet(weights=None)
    elif key == "inception":
        model = tvm.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    elif key == "efficientnet":
        model = tvm.efficientnet_b1(weights=None)
    elif key == "swav":  # torch.hub's swav resnet50: strip "module.", load non-strictly (fc stays unused)
        model = tvm.resnet50(weights=None)
        sd = {k.replace("module.", "", 1): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith(("projection_head", "prototypes"))}
        optional = ("fc.",)
    else:
        raise ValueError(f"unknown torchvision metric network {key!r}")
    try:
        return _load_strict(model, sd, path, what, optional)
    except RuntimeError as err:  # size mismatches
        raise DataError(path, what, f"mismatched tensors ({str(err).splitlines()[-1].strip()})") from err


def _normalise(x, mean, std):
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def build_network(key, path, device="cpu", clip_model="ViT-L-14-quickgelu", clip_config=None):
    """Load one metric network from its local file (see :data:`NETWORK_SPECS`).

    Parameters
    ----------
    key : str
        ``alexnet``, ``inception``, ``efficientnet``, ``swav`` or ``clip``.
    path : str or Path
        The weight file (must exist).
    device : str
    clip_model, clip_config : str, str or None
        open_clip model name / JSON model config of the CLIP checkpoint.

    Returns
    -------
    MetricNetwork
    """
    what, size, metrics = NETWORK_SPECS[key]
    device = resolve_device(device)
    if key == "clip":
        from ..foundation.load import load_open_clip

        try:
            clip, _ = load_open_clip(clip_model, str(path), clip_config, device=device)
        except Exception as err:  # noqa: BLE001
            raise DataError(path, what + f" for open_clip model {clip_model!r}",
                            f"a file open_clip cannot load ({type(err).__name__}: {err})") from err
        vis = clip.visual.image_size
        vis = int(vis[0] if isinstance(vis, (tuple, list)) else vis)  # 224 for ViT-L/14

        def forward(x):
            return {"embed": clip.encode_image(_normalise(x, CLIP_MEAN, CLIP_STD))}

        return MetricNetwork(key, dict(metrics), vis, forward, str(path), embedding=True, device=device)
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _torchvision_model(key, path).eval().requires_grad_(False)
    with warnings.catch_warnings():  # "nodes traced in eval mode are a subsequence of train mode's": expected
        warnings.simplefilter("ignore", UserWarning)
        extractor = create_feature_extractor(model, return_nodes=sorted({node for node, _ in metrics.values()}))
    extractor = extractor.eval().to(device)

    def forward(x):
        return extractor(_normalise(x, IMAGENET_MEAN, IMAGENET_STD))

    return MetricNetwork(key, dict(metrics), size, forward, str(path), device=device)


def demo_clip_network(fm, name="demo-CLIP"):
    """The foundation's CLIP image embedding (``fm.image_embeds(..., normalize=False)``) as a metric network,
    resized to that CLIP's own input size, reported under ``name`` (never ``CLIP``)."""
    clip = fm.extras.get("clip_image")
    vis = getattr(getattr(clip, "visual", None), "image_size", None) or fm.extras.get("clip_image_size")
    vis = int(vis[0] if isinstance(vis, (tuple, list)) else vis) if vis else int(fm.image_size)

    def forward(x):
        return {"embed": fm.image_embeds(x, normalize=False)}

    source = f"foundation CLIP of profile {fm.profile} ({fm.names.get('clip', 'fm.image_embeds')})"
    return MetricNetwork("demo_clip", {name: ("embed", "two_way")}, vis, forward, source, embedding=True,
                         device=str(fm.device))


def load_metric_networks(cfg, fm=None, only=None):
    """Every metric network a config names; the ones whose key is not set are listed as unavailable.

    Parameters
    ----------
    cfg : EvaluationConfig
    fm : Foundation, optional
        For ``demo-CLIP`` (when ``cfg.demo_clip``).
    only : iterable of str, optional
        Restrict to these config keys (``alexnet``, ..., ``demo_clip``).

    Returns
    -------
    MetricNetworks

    Raises
    ------
    DataError
        A configured weight file does not exist (or does not hold the expected weights).
    """
    available, unavailable = [], {}
    for key, (what, _, metrics) in NETWORK_SPECS.items():
        if only is not None and key not in only:
            continue
        path = getattr(cfg, key)
        if not path:
            msg = (f"unavailable (looked for {what}: evaluation.yaml key '{key}' is not set for profile "
                   f"{cfg.profile})")
        elif not Path(path).expanduser().is_file():
            raise DataError(Path(path).expanduser(), f"{what} (evaluation config key '{key}', profile "
                            f"{cfg.profile})", "no such file; fix the path or set the key to null to report "
                            f"{', '.join(metrics)} as unavailable")
        else:
            available.append(build_network(key, Path(path).expanduser(), cfg.device, cfg.clip_model,
                                           cfg.clip_config))
            continue
        unavailable.update({m: msg for m in metrics})
    if cfg.demo_clip and (only is None or "demo_clip" in only):
        if fm is not None:
            available.append(demo_clip_network(fm))
        else:
            unavailable["demo-CLIP"] = ("unavailable (looked for the foundation stage's CLIP: no Foundation "
                                        "given; run notebooks/02_foundation_models.ipynb)")
    return MetricNetworks(available, unavailable, cfg.batch_size, cfg.antialias)
