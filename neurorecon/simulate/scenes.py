"""Procedural scenes: vocabulary, sampling, rendering, captions and COCO-style annotations.

Every scene is a background plus 1-3 objects; each object has a category (with a distinctive silhouette),
a colour, a size and a position. Captions and instance annotations are generated from the scene description,
so they are true by construction. Later stages import the vocabulary constants to build question-answer data.
"""

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CATEGORIES",
    "CATEGORY_IDS",
    "SUPERCATEGORIES",
    "SHAPES",
    "CATEGORY_SHAPES",
    "PLURALS",
    "COLORS",
    "BACKGROUNDS",
    "BACKGROUND_PHRASES",
    "POSITIONS",
    "POSITION_CENTERS",
    "SIZES",
    "sample_scene",
    "render_scene",
    "scene_captions",
    "coco_categories",
]

#: Object categories (COCO category id = index + 1).
CATEGORIES = ("ball", "box", "tree", "house", "car", "star", "fish", "cup")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(CATEGORIES)}
SUPERCATEGORIES = {"ball": "sports", "box": "object", "tree": "plant", "house": "building", "car": "vehicle",
                   "star": "shape", "fish": "animal", "cup": "kitchen"}
#: The silhouette of each category (``attributes.shape`` of an instance).
CATEGORY_SHAPES = {"ball": "circle", "box": "square", "tree": "triangle", "house": "pentagon", "car": "rectangle",
                   "star": "star", "fish": "ellipse", "cup": "trapezoid"}
SHAPES = tuple(CATEGORY_SHAPES[c] for c in CATEGORIES)
PLURALS = {"ball": "balls", "box": "boxes", "tree": "trees", "house": "houses", "car": "cars", "star": "stars",
           "fish": "fish", "cup": "cups"}
#: Named object colours and their RGB values.
COLORS = {"red": (220, 30, 30), "green": (40, 170, 40), "blue": (30, 70, 225), "yellow": (240, 220, 30),
          "orange": (245, 140, 20), "purple": (140, 50, 180), "pink": (250, 130, 190), "white": (245, 245, 245)}
BACKGROUNDS = ("grass", "room", "beach", "night", "plain")
#: Background -> (prepositional phrase, noun phrase) used by captions.
BACKGROUND_PHRASES = {"grass": ("on the grass", "a grassy field"), "room": ("in a room", "a room"),
                      "beach": ("on the beach", "a beach"), "night": ("at night", "a night sky"),
                      "plain": ("on a plain background", "a plain background")}
POSITIONS = ("left", "right", "top", "bottom", "center")
#: Canonical object centre (x, y) of each position, as fractions of the image (y points down).
POSITION_CENTERS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
                    "center": (0.5, 0.5)}
SIZES = ("small", "large")
_SIZE_FRACTION = {"small": 0.2, "large": 0.36}  # object extent as a fraction of the image side
_WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "center": "in the center"}
_WHERE_IMAGE = {"left": "on the left side of the image", "right": "on the right side of the image",
                "top": "at the top of the image", "bottom": "at the bottom of the image",
                "center": "in the center of the image"}
_NUMBERS = {1: "one", 2: "two", 3: "three"}
_OUTLINE = (25, 25, 25)
_DETAIL = {"trunk": (110, 70, 35), "wheel": (30, 30, 30)}


def coco_categories():
    """COCO ``categories`` entries (id, name, supercategory)."""
    return [dict(id=CATEGORY_IDS[c], name=c, supercategory=SUPERCATEGORIES[c]) for c in CATEGORIES]


def sample_scene(rng):
    """Draw a random scene description.

    Parameters
    ----------
    rng : numpy.random.Generator

    Returns
    -------
    dict
        ``background`` and ``objects`` (list of dicts with ``category``, ``color``, ``size``, ``position``,
        ``center`` (x, y fractions) and ``extent`` (fraction of the image side)). Objects have distinct positions
        and are listed large first (the drawing order), so none is fully hidden.
    """
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    positions = rng.choice(len(POSITIONS), size=n, replace=False)
    objects = []
    for p in positions:
        pos = POSITIONS[p]
        size = SIZES[int(rng.integers(2))]
        cx, cy = np.asarray(POSITION_CENTERS[pos]) + rng.uniform(-0.03, 0.03, 2)
        objects.append(dict(category=CATEGORIES[int(rng.integers(len(CATEGORIES)))],
                            color=list(COLORS)[int(rng.integers(len(COLORS)))], size=size, position=pos,
                            center=(round(float(cx), 4), round(float(cy), 4)),
                            extent=round(float(_SIZE_FRACTION[size] * rng.uniform(0.92, 1.08)), 4)))
    objects.sort(key=lambda o: -o["extent"])
    return dict(background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], objects=objects)


def _circle(cx, cy, r, n=20, a0=0.0, a1=2 * np.pi):
    t = np.linspace(a0, a1, n, endpoint=a1 - a0 < 2 * np.pi - 1e-9)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _parts(category):
    """Polygons of a silhouette in unit coordinates ([-1, 1]^2, y down) as (points, role) pairs."""
    if category == "ball":
        return [(_circle(0, 0, 1, 28), "main")]
    if category == "box":
        return [(_rect(-0.85, -0.85, 0.85, 0.85), "main"), (_rect(-0.15, -0.85, 0.15, 0.85), "dark")]
    if category == "tree":
        return [(_rect(-0.15, 0.35, 0.15, 1.0), "trunk"), (np.array([[0, -1], [-0.8, 0.45], [0.8, 0.45]]), "main")]
    if category == "house":
        return [(_rect(-0.75, -0.15, 0.75, 1.0), "main"), (np.array([[-0.95, -0.1], [0, -1], [0.95, -0.1]]), "dark"),
                (_rect(-0.15, 0.45, 0.15, 1.0), "dark")]
    if category == "car":
        cabin = np.array([[-0.55, -0.1], [-0.35, -0.55], [0.35, -0.55], [0.55, -0.1]])
        return [(_rect(-1, -0.1, 1, 0.45), "main"), (cabin, "main"), (_circle(-0.55, 0.5, 0.28, 14), "wheel"),
                (_circle(0.55, 0.5, 0.28, 14), "wheel")]
    if category == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return [(np.stack([r * np.cos(t), r * np.sin(t)], 1), "main")]
    if category == "fish":
        body = np.stack([-0.2 + 0.75 * np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False)),
                         0.45 * np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False))], 1)
        return [(np.array([[0.45, 0], [1, -0.5], [1, 0.5]]), "main"), (body, "main"),
                (_circle(-0.6, -0.1, 0.09, 8), "dark")]
    if category == "cup":
        outer = _circle(0.45, 0.05, 0.45, 10, -np.pi / 2, np.pi / 2)
        inner = _circle(0.45, 0.05, 0.25, 10, -np.pi / 2, np.pi / 2)[::-1]
        return [(np.concatenate([outer, inner]), "main"),
                (np.array([[-0.7, -0.8], [0.5, -0.8], [0.35, 0.9], [-0.55, 0.9]]), "main")]
    raise ValueError(f"unknown category {category!r}")


def _draw_background(draw, kind, R, rng):
    jitter = rng.integers(-12, 13, 3)

    def c(rgb):
        return tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(rgb, jitter))

    if kind == "grass":
        h = int(R * rng.uniform(0.45, 0.6))
        draw.rectangle([0, 0, R, h], fill=c((135, 195, 235)))
        draw.rectangle([0, h, R, R], fill=c((70, 150, 60)))
    elif kind == "room":
        h = int(R * rng.uniform(0.65, 0.75))
        draw.rectangle([0, 0, R, h], fill=c((225, 205, 170)))
        draw.rectangle([0, h, R, R], fill=c((150, 100, 60)))
        draw.rectangle([0, h - R // 40, R, h], fill=c((240, 240, 230)))
    elif kind == "beach":
        h1, h2 = int(R * rng.uniform(0.3, 0.4)), int(R * rng.uniform(0.5, 0.58))
        draw.rectangle([0, 0, R, h1], fill=c((150, 205, 240)))
        draw.rectangle([0, h1, R, h2], fill=c((40, 110, 180)))
        draw.rectangle([0, h2, R, R], fill=c((230, 210, 150)))
    elif kind == "night":
        draw.rectangle([0, 0, R, R], fill=c((15, 20, 50)))
        for x, y in rng.integers(0, R, (12, 2)):
            draw.ellipse([x, y, x + R // 100 + 1, y + R // 100 + 1], fill=(230, 230, 200))
    elif kind == "plain":
        draw.rectangle([0, 0, R, R], fill=c((128, 128, 128)))
    else:
        raise ValueError(f"unknown background {kind!r}")


def render_scene(scene, size, rng, supersample=4):
    """Draw a scene at ``supersample`` times the resolution and downsample it (antialiased).

    Parameters
    ----------
    scene : dict
        From :func:`sample_scene`.
    size : int
        Output side in pixels.
    rng : numpy.random.Generator
        Drives background jitter and pixel noise.
    supersample : int
        Drawing resolution factor.

    Returns
    -------
    image : numpy.ndarray
        (size, size, 3) uint8.
    polygons : list of list of numpy.ndarray
        Per object, its polygons in output pixel coordinates.
    """
    R = size * supersample
    img = Image.new("RGB", (R, R))
    draw = ImageDraw.Draw(img)
    _draw_background(draw, scene["background"], R, rng)
    width = max(1, supersample // 2)
    polygons = []
    for obj in scene["objects"]:
        cx, cy = obj["center"]
        half = obj["extent"] / 2
        main = COLORS[obj["color"]]
        colors = {"main": main, "dark": tuple(int(v * 0.6) for v in main), **_DETAIL}
        polys = []
        for pts, role in _parts(obj["category"]):
            frac = np.stack([cx + pts[:, 0] * half, cy + pts[:, 1] * half], 1)
            draw.polygon([tuple(p) for p in frac * R], fill=colors[role], outline=_OUTLINE, width=width)
            polys.append(frac * size)
        polygons.append(polys)
    small = np.asarray(img.reduce(supersample), dtype=np.float32)  # box-filter downsampling (antialiased)
    small += 3.0 * rng.standard_normal(small.shape, dtype=np.float32)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8), polygons


def _article(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items):
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _desc(obj, size=False):
    words = ([obj["size"]] if size else []) + [obj["color"], obj["category"]]
    return _article(" ".join(words))


def _grouped(objs):
    """Colour+category phrases with identical ones merged ("two yellow cups")."""
    counts = {}
    for o in objs:
        counts[(o["color"], o["category"])] = counts.get((o["color"], o["category"]), 0) + 1
    return [f"{_NUMBERS[c]} {col} {PLURALS[cat]}" if c > 1 else _article(f"{col} {cat}")
            for (col, cat), c in counts.items()]


def _relation(a, b):
    """Spatial relation of a to b from the canonical positions, or None."""
    (ax, ay), (bx, by) = POSITION_CENTERS[a["position"]], POSITION_CENTERS[b["position"]]
    if abs(ax - bx) > 0.1:
        return "to the left of" if ax < bx else "to the right of"
    if abs(ay - by) > 0.1:
        return "above" if ay < by else "below"
    return None


def scene_captions(scene, rng, n=5):
    """``n`` varied captions that are all true of the scene.

    Parameters
    ----------
    scene : dict
        From :func:`sample_scene`.
    rng : numpy.random.Generator
        Picks the templates and their order.
    n : int
        Number of captions (at most 7).

    Returns
    -------
    list of str
    """
    objs = scene["objects"]
    bg_prep, bg_noun = BACKGROUND_PHRASES[scene["background"]]
    k = len(objs)
    counts = {}
    for o in objs:
        counts[o["category"]] = counts.get(o["category"], 0) + 1
    by_cat = [(_NUMBERS[c] + " " + PLURALS[cat]) if c > 1 else _article(cat) for cat, c in counts.items()]
    if k >= 2:
        def name(o):  # the shortest phrase naming o unambiguously, or None
            for size in (False, True):
                if [_desc(p, size) for p in objs].count(_desc(o, size)) == 1:
                    return _desc(o, size)
            return None

        pairs = [(a, b) for a in objs for b in objs if a is not b
                 and ((name(a) and name(b)) or _desc(a, True) == _desc(b, True))]
        a, b = pairs[int(rng.integers(len(pairs)))]
        if name(a) and name(b):
            relation = f"{name(a)} {_relation(a, b)} {name(b)} {bg_prep}"
        else:  # two identical objects
            relation = f"one {a['color']} {a['category']} is {_relation(a, b)} the other {bg_prep}"
        counted = f"{_NUMBERS[k]} objects {bg_prep}: {_join(_grouped(objs))}"
    else:
        relation = f"{_desc(objs[0], True)} {_WHERE_IMAGE[objs[0]['position']]}"
        counted = f"a single {objs[0]['color']} {objs[0]['category']} {bg_prep}"
    templates = [
        f"{_join([_desc(o, True) + ' ' + _WHERE[o['position']] for o in objs])}, {bg_prep}",
        counted,
        relation,
        f"{bg_noun} with {_join(_grouped(objs))}",
        f"{_join(by_cat)} {bg_prep}",
        f"a picture of {_join([_desc(o, True) for o in objs])} {bg_prep}",
        "there is " + _join([f"{_desc(o, True)} {_WHERE[o['position']]}" for o in objs]),
    ]
    pick = rng.permutation(len(templates))[:n]
    return [templates[i][0].upper() + templates[i][1:] + "." for i in pick]
