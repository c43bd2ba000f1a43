"""The one figure writer every stage and notebook uses."""

from pathlib import Path

import matplotlib.pyplot as plt

__all__ = ["savefig"]


def savefig(fig, path, dpi=110, pdf=False, close=False):
    """Save ``fig`` as a PNG at ``path`` and return that path.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or Path
        The PNG to write.
    dpi : int
    pdf : bool
        Also write a PDF beside it (same name, ``.pdf``), as the figures stage does for the papers' figures.
    close : bool
        Close the figure afterwards (a stage drawing many figures); notebooks leave it open so it shows inline.
    """
    path = Path(path)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    if pdf:
        fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    if close:
        plt.close(fig)
    return path
