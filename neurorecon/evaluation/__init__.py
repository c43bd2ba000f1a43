"""The one evaluation harness of every reconstruction method: the MindEye protocol
(``docs/evaluation_protocol.md``) on NSD-mini and on real NSD.

- :mod:`.images`: float images in [0, 1], bilinear tensor resizes (antialias recorded: :data:`ANTIALIAS`);
- :mod:`.lowlevel`: PixCorr, SSIM, two-way identification (the shared :mod:`neurorecon.metrics`), correlation
  distance;
- :mod:`.retrieval`: MindEye retrieval (30 draws of 300, seed 42, both directions, mean and 95% interval);
- :mod:`.networks`: AlexNet(2/5), Inception, CLIP, EffNet-B, SwAV loaded only from local files (else
  "unavailable"), and the foundation CLIP as ``demo-CLIP``;
- :mod:`.captions`: pycocoevalcap metrics (through :mod:`neurorecon.nv2l.captions`) and CLIP-S;
- :mod:`.table`: :func:`evaluate_reconstructions` / :func:`evaluate_captions` → one tidy table,
  :func:`write_metrics` → stage metrics;
- :mod:`.io` and :mod:`.cli`: the ``.npz`` format and ``neurorecon evaluate``;
- :mod:`.reconstruction` (notebook 07, stage ``reconstruction``): every method reconstructs and is scored, with shuffled
  controls, single trials and sweeps; :mod:`.paper_figures` (notebook 08, stage ``figures``) and :mod:`.report`.
"""

import importlib

#: Public name → submodule defining it (imported on first use, so ``neurorecon --help`` stays light).
_EXPORTS = {
    "CAPTION_METRICS": "captions", "caption_metrics": "captions", "clip_score": "captions",
    "add_evaluate_parser": "cli", "EvaluationConfig": "config",
    "ANTIALIAS": "images", "as_float_images": "images", "protocol_resize": "images", "protocol_settings": "images",
    "to_uint8": "images",
    "load_ground_truth": "io", "load_reconstructions": "io", "save_reconstructions": "io",
    "correlation_distance": "lowlevel", "pixcorr": "lowlevel", "ssim": "lowlevel",
    "two_way_identification": "lowlevel",
    "MetricNetwork": "networks", "MetricNetworks": "networks", "build_network": "networks",
    "demo_clip_network": "networks", "load_metric_networks": "networks",
    "RetrievalResult": "retrieval", "mindeye_retrieval": "retrieval", "retrieval_draws": "retrieval",
    "ReconstructionConfig": "reconstruction", "run_reconstruction_stage": "reconstruction", "load_results": "reconstruction",
    "METHOD_LABELS": "reconstruction", "FiguresConfig": "paper_figures", "run_figures_stage": "paper_figures",
    "paper_table": "paper_figures", "PUBLISHED": "paper_figures",
    "COLUMNS": "table", "LOWER_IS_BETTER": "table", "evaluate_captions": "table",
    "evaluate_reconstructions": "table", "variant_label": "table", "write_metrics": "table",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
