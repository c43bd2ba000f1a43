"""neurorecon: NeuroPictor and Neuro-Vision to Language on the Natural Scenes Dataset, notebook first.

The package holds all logic; the numbered notebooks in ``notebooks/`` call into it. See the README.
"""

__version__ = "0.1.0"

from . import artifacts, config, errors, paths  # noqa: E402

__all__ = ["__version__", "artifacts", "config", "errors", "paths"]
