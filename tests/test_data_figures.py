"""Notebook 01's figures on stores with few held-out images (the dry run keeps 2 test images per subject)."""

import matplotlib.pyplot as plt
import pytest

from neurorecon.data import figures as F
from neurorecon.data import open_store
from neurorecon.data.stage import store_path


@pytest.fixture(scope="module")
def store(smoke_data_home, home_set_to):
    with home_set_to(smoke_data_home):
        yield open_store(store_path("smoke"))


def test_flatmaps_with_fewer_test_images_than_panels(store):
    sub = store.subject(store.subjects[0])
    n_test = len(sub.test_image_ids)
    fig = F.plot_flatmaps(sub, store, n=n_test + 3)
    images = [ax for ax in fig.axes if ax.images and ax.get_title().startswith("nsdId")]
    assert len(images) == n_test  # one column per held-out image, not an IndexError past the last one
    plt.close(fig)
    fig = F.plot_flatmaps(sub, store, n=1)
    assert sum(ax.get_title().startswith("nsdId") for ax in fig.axes) == 1
    plt.close(fig)
