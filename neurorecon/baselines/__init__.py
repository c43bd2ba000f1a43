"""Baselines shared by the evaluation (notebook 07): the Takagi & Nishimoto-style ridge decoder into the
foundation diffusion model (:mod:`.ridge`)."""

from .ridge import (Ridge, RidgeReconstructor, fit_ridge, fit_ridge_reconstructor, fit_subject_ridge, roi_columns,
                    training_samples)

__all__ = ["Ridge", "RidgeReconstructor", "fit_ridge", "fit_ridge_reconstructor", "fit_subject_ridge",
           "roi_columns", "training_samples"]
