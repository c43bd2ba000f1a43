"""The simulated brain: image features, a tuned cortical sheet, subject anatomy, the common surface and noise.

Cortical sheet
    Each hemisphere is a sheet with coordinates (u, v) in [0, 1]^2. Along u: early retinotopic areas V1, V2, V3,
    hV4 (``EARLY_BANDS``), then mid areas (colour and shape tuned, ``u`` in [0.45, 0.65)), then high areas
    (object category, object count and scene, position invariant). Along v: dorsal (v < 0.5, lower visual field)
    to ventral (upper field). The left hemisphere represents the right visual field and vice versa.
Tuning
    Every sheet point has a weight vector over the image features: early points a Gaussian receptive field over
    the coarse feature grid (centre from polar angle = v and eccentricity = position inside the area, mirrored
    in alternate areas; size growing along u) times a smooth mix of contrast / colour / edge channels; mid points
    colour x position and shape x position weights with a coarse receptive field over the five positions; high
    points smooth random tuning to categories (stronger ventrally), object count (stronger dorsally) and
    background. Tuning fields are smooth functions of (u, v) shared by all subjects (a species template) plus a
    smaller subject-specific part.
Subjects
    Volume: an ellipsoidal brain; nsdgeneral is a cap of its outer shell around the occipital pole, and each of
    its voxels gets sheet coordinates from its angle to the pole (u) and its dorsal/ventral angle (v) through a
    subject-specific warp. Surface: a common vertex set on the sheet (the fsaverage analog) sampled with a small
    subject-specific misalignment.
"""

import numpy as np

from .scenes import BACKGROUNDS, CATEGORIES, COLORS, POSITION_CENTERS, POSITIONS, SHAPES, CATEGORY_SHAPES

__all__ = [
    "EARLY_BANDS",
    "EARLY_END",
    "MID_END",
    "PRF_LABELS",
    "STREAM_LABELS",
    "SmoothField",
    "image_features",
    "scene_features",
    "random_features",
    "Tuning",
    "Anatomy",
    "make_anatomy",
    "SurfaceLayout",
    "make_surface",
    "level_weights",
    "area_profile",
]

#: Boundaries along u of V1, V2, V3 and hV4.
EARLY_BANDS = (0.0, 0.15, 0.27, 0.37, 0.45)
EARLY_END, MID_END = 0.45, 0.65
PRF_LABELS = {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"}
STREAM_LABELS = {1: "early", 2: "midventral", 3: "midlateral", 4: "midparietal", 5: "ventral", 6: "lateral",
                 7: "parietal"}
_N_HIGH = len(CATEGORIES) + 3 + len(BACKGROUNDS)  # category counts, object count one-hot, background one-hot


class SmoothField:
    """A smooth random vector field on the sheet: a sum of random low-frequency plane waves.

    Parameters
    ----------
    rng : numpy.random.Generator
    n_fields : int
        Output dimension.
    n_comp : int
        Number of plane waves.
    max_freq : float
        Largest spatial frequency (cycles per sheet).
    """

    def __init__(self, rng, n_fields, n_comp=16, max_freq=2.0):
        self.freq = rng.uniform(-max_freq, max_freq, (n_comp, 2))
        self.phase = rng.uniform(0, 2 * np.pi, n_comp)
        self.coef = rng.normal(0, np.sqrt(2.0 / n_comp), (n_comp, n_fields))

    def basis(self, u, v):
        """(N, n_comp) plane waves at the points."""
        return np.cos(2 * np.pi * (np.outer(u, self.freq[:, 0]) + np.outer(v, self.freq[:, 1])) + self.phase)

    def __call__(self, u, v):
        """(N, n_fields) field values (about unit variance) at the points."""
        return self.basis(u, v) @ self.coef


def image_features(brick, grid):
    """Low-level features of images on a coarse grid, standardised over the images.

    Parameters
    ----------
    brick : numpy.ndarray
        (n, S, S, 3) uint8 images.
    grid : int
        Grid side; S must be a multiple of it.

    Returns
    -------
    numpy.ndarray
        (n, grid * grid, 6) float32: luminance contrast, mean R, G, B, horizontal and vertical edge energy per
        cell (row-major cells).
    """
    img = brick.astype(np.float32) / 255.0
    n, S = img.shape[:2]
    c = S // grid
    lum = img @ np.array([0.299, 0.587, 0.114], np.float32)
    gx = np.abs(np.diff(lum, axis=2, append=lum[:, :, -1:]))
    gy = np.abs(np.diff(lum, axis=1, append=lum[:, -1:, :]))

    def cells(a):
        return a.reshape(n, grid, c, grid, c, *a.shape[3:]).swapaxes(2, 3).reshape(n, grid * grid, c * c,
                                                                                   *a.shape[3:])

    feats = np.concatenate([cells(lum).std(2)[..., None], cells(img).mean(2),
                            cells(gx).mean(2)[..., None], cells(gy).mean(2)[..., None]], axis=2)
    return ((feats - feats.mean(0)) / (feats.std(0) + 1e-6)).astype(np.float32)


def scene_features(scenes):
    """Object-level features of scene descriptions.

    Returns
    -------
    dict
        ``colpos`` (n, n_colors, 5) and ``shapepos`` (n, n_shapes, 5): colour / shape at each position weighted by
        size (small 0.6, large 1); ``high`` (n, 16): category counts, object-count one-hot (1, 2, 3), background
        one-hot.
    """
    n = len(scenes)
    colors, pos = list(COLORS), list(POSITIONS)
    colpos = np.zeros((n, len(colors), len(pos)), np.float32)
    shapepos = np.zeros((n, len(SHAPES), len(pos)), np.float32)
    high = np.zeros((n, _N_HIGH), np.float32)
    for i, sc in enumerate(scenes):
        for o in sc["objects"]:
            w = 1.0 if o["size"] == "large" else 0.6
            p = pos.index(o["position"])
            colpos[i, colors.index(o["color"]), p] += w
            shapepos[i, SHAPES.index(CATEGORY_SHAPES[o["category"]]), p] += w
            high[i, CATEGORIES.index(o["category"])] += 1
        high[i, len(CATEGORIES) + len(sc["objects"]) - 1] = 1
        high[i, len(CATEGORIES) + 3 + BACKGROUNDS.index(sc["background"])] = 1
    return dict(colpos=colpos, shapepos=shapepos, high=high)


def random_features(rng, n, grid):
    """Random feature vectors (resting-state 'spontaneous' inputs) with the shapes of the image features."""
    return dict(low=rng.normal(size=(n, grid * grid, 6)).astype(np.float32),
                colpos=rng.normal(size=(n, len(COLORS), len(POSITIONS))).astype(np.float32),
                shapepos=rng.normal(size=(n, len(SHAPES), len(POSITIONS))).astype(np.float32),
                high=rng.normal(size=(n, _N_HIGH)).astype(np.float32))


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x / 0.025))


def level_weights(u):
    """(N, 3) weights of the low, mid and high feature levels along u (smooth transitions, small leaks)."""
    mid = _sig(u - EARLY_END) * _sig(MID_END - u)
    return np.stack([_sig(EARLY_END - u) + 0.1, mid + 0.25 * (1 - mid), _sig(u - MID_END) + 0.05], 1)


def area_profile(u, values):
    """Interpolate a per-level value (early, mid, high) smoothly along u."""
    e, m, h = values
    return np.interp(u, [0, EARLY_END - 0.05, EARLY_END + 0.05, MID_END - 0.05, MID_END + 0.05, 1],
                     [e, e, m, m, h, h])


def _zscore(x):
    return (x - x.mean(0)) / (x.std(0) + 1e-8)


class Tuning:
    """Feature tuning of the sheet: a shared template plus a subject-specific part.

    Parameters
    ----------
    seed : int
        Simulation seed (the template depends only on it).
    grid : int
        Side of the low-level feature grid.
    subject : int, optional
        Adds the subject-specific part (30% of the template's strength) when given.
    """

    def __init__(self, seed, grid, subject=None):
        self.grid = grid
        fields = self._fields(np.random.default_rng([seed, 7]))
        if subject is not None:
            own = self._fields(np.random.default_rng([seed, 8, subject]))
            fields = {k: (f, own[k]) for k, f in fields.items()}
        else:
            fields = {k: (f, None) for k, f in fields.items()}
        self.fields = fields

    @staticmethod
    def _fields(rng):
        return dict(chan=SmoothField(rng, 6), color=SmoothField(rng, len(COLORS)),
                    shape=SmoothField(rng, len(SHAPES)), high=SmoothField(rng, _N_HIGH, max_freq=3.0))

    def _field(self, name, u, v):
        shared, own = self.fields[name]
        return shared(u, v) + (0.3 * own(u, v) if own is not None else 0.0)

    def receptive_fields(self, u, v, hemi):
        """Early receptive-field centres (x, y as image fractions, y down) and sizes at sheet points."""
        bands = np.asarray(EARLY_BANDS)
        idx = np.clip(np.searchsorted(bands, u, side="right") - 1, 0, len(bands) - 2)
        a = np.clip((u - bands[idx]) / (bands[idx + 1] - bands[idx]), 0, 1)
        a = np.where(idx % 2 == 1, 1 - a, a)  # eccentricity reverses at each area border
        ecc = 0.03 + 0.6 * a ** 1.5
        theta = (v - 0.5) * np.pi  # v=0: lower vertical meridian, v=1: upper
        side = np.where(hemi == 0, 1.0, -1.0)  # left hemisphere sees the right visual field
        x = 0.5 + side * ecc * np.cos(theta)
        y = 0.5 - ecc * np.sin(theta)
        sigma = 0.07 + 0.2 * np.clip(u / EARLY_END, 0, 1) + 0.1 * ecc
        return x, y, sigma

    def responses(self, feats, u, v, hemi):
        """Noise-free responses at sheet points, z-scored over the given images.

        Parameters
        ----------
        feats : dict
            ``low`` (n, grid*grid, 6) plus the keys of :func:`scene_features`.
        u, v : numpy.ndarray
            (N,) sheet coordinates.
        hemi : numpy.ndarray
            (N,) 0 = left, 1 = right hemisphere.

        Returns
        -------
        numpy.ndarray
            (n, N) float32, zero mean and unit variance per point over the n images.
        """
        g = self.grid
        centres = (np.arange(g) + 0.5) / g
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        x, y, sigma = self.receptive_fields(u, v, hemi)
        rf = np.exp(-((cx.ravel()[None] - x[:, None]) ** 2 + (cy.ravel()[None] - y[:, None]) ** 2)
                    / (2 * sigma[:, None] ** 2))
        rf /= rf.sum(1, keepdims=True)
        colour = 0.4 + 1.0 * np.clip(u / EARLY_END, 0, 1)
        chan = np.array([1.0, 0, 0, 0, 0.5, 0.5]) + 0.5 * self._field("chan", u, v)
        chan[:, 1:4] *= colour[:, None]
        n = len(feats["high"])
        w_low = (rf[:, :, None] * chan[:, None, :]).reshape(len(u), -1).astype(np.float32)
        low = feats["low"].reshape(n, -1) @ w_low.T

        theta = (v - 0.5) * np.pi
        side = np.where(hemi == 0, 1.0, -1.0)
        px, py = np.array([POSITION_CENTERS[p] for p in POSITIONS]).T
        mx, my = 0.5 + side * 0.22 * np.cos(theta), 0.5 - 0.22 * np.sin(theta)
        rfp = np.exp(-((px[None] - mx[:, None]) ** 2 + (py[None] - my[:, None]) ** 2) / (2 * 0.2 ** 2))
        rfp /= rfp.sum(1, keepdims=True)
        wc = (self._field("color", u, v)[:, :, None] * rfp[:, None, :]).reshape(len(u), -1).astype(np.float32)
        ws = (self._field("shape", u, v)[:, :, None] * rfp[:, None, :]).reshape(len(u), -1).astype(np.float32)
        mid = feats["colpos"].reshape(n, -1) @ wc.T + feats["shapepos"].reshape(n, -1) @ ws.T

        wh = self._field("high", u, v)
        nc = len(CATEGORIES)
        wh[:, :nc] = wh[:, :nc] * (0.4 + v[:, None]) + 0.3 * np.sign(wh[:, :nc]) * v[:, None]
        wh[:, nc:nc + 3] *= (1.4 - v[:, None])
        wh[:, nc + 3:] *= (0.4 + v[:, None])
        high = feats["high"] @ wh.T.astype(np.float32)

        lw = level_weights(u).astype(np.float32)
        total = lw[:, 0] * _zscore(low) + lw[:, 1] * _zscore(mid) + lw[:, 2] * _zscore(high)
        return _zscore(total).astype(np.float32)


class Anatomy:
    """One subject's functional volume.

    Attributes
    ----------
    shape : tuple of int
        (X, Y, Z).
    brain, general : numpy.ndarray
        Boolean masks of the brain and of nsdgeneral.
    index : numpy.ndarray
        (N, 3) voxel indices of nsdgeneral voxels (in ``np.nonzero(general)`` order).
    u, v, hemi : numpy.ndarray
        Sheet coordinates and hemisphere of the nsdgeneral voxels.
    prf, streams : numpy.ndarray
        int16 label volumes (-1 outside the brain).
    prf_vals, stream_vals : numpy.ndarray
        The labels of the nsdgeneral voxels.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _labels(u, v):
    bands = np.asarray(EARLY_BANDS)
    area = np.searchsorted(bands, u, side="right") - 1  # 0..3 early, 4+ beyond
    ventral = v >= 0.5
    prf = np.where(area < 4, 2 * area + 1 + (~ventral), 0)
    prf = np.where((area == 3) & ~ventral, 0, prf)  # hV4 is ventral only
    third = np.where(v >= 0.6, 0, np.where(v >= 0.3, 1, 2))
    streams = np.where(u < EARLY_END, 1, np.where(u < MID_END, 2 + third, 5 + third))
    return prf, streams


def make_anatomy(cfg, rng, shape=None):
    """Draw one subject's volume, brain mask, nsdgeneral slab, sheet coordinates and ROI labels.

    Parameters
    ----------
    cfg : SimConfig
    rng : numpy.random.Generator
    shape : tuple of int, optional
        The (X, Y, Z) volume; default ``cfg.volume_shape`` with a random change of up to ``cfg.volume_jitter``.

    Returns
    -------
    Anatomy
    """
    j = cfg.volume_jitter
    if shape is None:
        shape = tuple(int(s + rng.integers(-j, j + 1)) for s in cfg.volume_shape)
    shape = tuple(int(s) for s in shape)
    axes = [(np.arange(s) - (s - 1) / 2) / ((s - 1) / 2) for s in shape]
    xn, yn, zn = np.meshgrid(*axes, indexing="ij")
    radii = rng.uniform(0.86, 0.96, 3)
    rho = np.sqrt((xn / radii[0]) ** 2 + (yn / radii[1]) ** 2 + (zn / radii[2]) ** 2)
    wobble = 1 + 0.04 * np.cos(3 * np.arctan2(zn, xn) + rng.uniform(0, 2 * np.pi))
    rho = rho * wobble
    brain = rho <= 1.0
    d = np.stack([xn / radii[0], yn / radii[1], zn / radii[2]]) / np.maximum(rho, 1e-6)
    alpha = np.arccos(np.clip(-d[1], -1, 1))  # angle from the occipital pole (posterior, -y)
    shell = brain & (rho > 0.55)
    target = int(rng.integers(*cfg.nsdgeneral_voxels))
    order = np.argsort(np.where(shell, alpha, np.inf), axis=None, kind="stable")[:target]
    general = np.zeros(shape, bool)
    general.flat[order] = True
    general &= shell
    index = np.argwhere(general)
    a = alpha[general]
    dx, dz = d[0][general], d[2][general]
    hemi = (xn[general] >= 0).astype(np.int8)  # RAS: negative x is the left hemisphere
    v = (np.pi / 2 - np.arctan2(dz, np.abs(dx))) / np.pi  # 0 dorsal .. 1 ventral
    gamma = rng.uniform(0.85, 1.2)
    u = (np.argsort(np.argsort(a, kind="stable"), kind="stable") / max(len(a) - 1, 1)) ** gamma  # angle quantile
    u = np.clip(u + 0.03 * np.sin(2 * np.pi * v + rng.uniform(0, 2 * np.pi)) * u * (1 - u) * 4, 0, 1)
    v = np.clip(v + 0.04 * np.sin(2 * np.pi * u + rng.uniform(0, 2 * np.pi)), 0, 1)
    prf_vals, stream_vals = _labels(u, v)
    prf = np.where(brain, 0, -1).astype(np.int16)
    streams = prf.copy()
    prf[general] = prf_vals
    streams[general] = stream_vals
    return Anatomy(shape=shape, brain=brain, general=general, index=index, u=u, v=v, hemi=hemi, prf=prf,
                   streams=streams, prf_vals=prf_vals.astype(np.int16), stream_vals=stream_vals.astype(np.int16))


class SurfaceLayout:
    """The common surface (fsaverage analog) and its flat map.

    Attributes
    ----------
    u, v : list of numpy.ndarray
        Per hemisphere, the sheet coordinates of its vertices.
    shape : tuple of int
        Flat map (H, W).
    pixel, hemi, vertex : numpy.ndarray
        For every in-mask pixel: flat index ``row * W + col``, hemisphere (0 lh, 1 rh), nearest vertex.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)


def make_surface(n_vertices, size, rng):
    """Lay out the common vertices of both hemispheres and the flat map sampling them.

    Each hemisphere fills one half of the flat map inside an elliptical cortex mask; u runs away from the
    middle seam (V1 medial), v from top (dorsal) to bottom (ventral). Vertices sit (jittered by at most 0.2 px)
    on a random subset of mask pixels, so every vertex is the nearest vertex of at least its own pixel. With more
    vertices than mask pixels (fsaverage's 163,842 on a 256 px map), one vertex sits on every mask pixel and the
    rest lie off the map (cortex the map does not show, at random sheet positions), the map's vertices scattered
    over the hemisphere's vertex ids as on a real surface.

    Parameters
    ----------
    n_vertices : int
        Vertices per hemisphere.
    size : int
        Flat map side (even).
    rng : numpy.random.Generator

    Returns
    -------
    SurfaceLayout
    """
    from scipy.spatial import cKDTree

    H, W = size, size
    half = W // 2
    rows, cols = np.meshgrid(np.arange(H), np.arange(half), indexing="ij")
    a, b = (cols + 0.5) / half, (rows + 0.5) / H
    mask = ((a - 0.5) / 0.48) ** 2 + ((b - 0.5) / 0.48) ** 2 <= 1
    mr, mc = rows[mask], cols[mask]
    n_on = min(n_vertices, len(mr))
    us, vs, pixel, hemis, vertex = [], [], [], [], []
    for h in (0, 1):
        pick = rng.choice(len(mr), n_on, replace=False)
        pr = mr[pick] + rng.uniform(-0.2, 0.2, n_on)
        pc = mc[pick] + rng.uniform(-0.2, 0.2, n_on)
        a_v = ((pc + 0.5) / half - 0.02) / 0.96
        u = np.clip(1 - a_v if h == 0 else a_v, 0, 1)  # lh on the left half: seam at its right edge
        v = np.clip(((pr + 0.5) / H - 0.02) / 0.96, 0, 1)
        _, nearest = cKDTree(np.stack([pr, pc], 1)).query(np.stack([mr, mc], 1).astype(float))
        nearest = nearest.astype(np.int64)
        if n_vertices > n_on:
            ids = rng.permutation(n_vertices)
            uu, vv = rng.uniform(0, 1, n_vertices), rng.uniform(0, 1, n_vertices)
            uu[ids[:n_on]], vv[ids[:n_on]] = u, v
            u, v, nearest = uu, vv, ids[:n_on][nearest]
        us.append(u)
        vs.append(v)
        pixel.append(mr * W + mc + h * half)
        hemis.append(np.full(len(mr), h, np.int8))
        vertex.append(nearest)
    return SurfaceLayout(u=us, v=vs, shape=(H, W), pixel=np.concatenate(pixel).astype(np.int64),
                         hemi=np.concatenate(hemis), vertex=np.concatenate(vertex))
