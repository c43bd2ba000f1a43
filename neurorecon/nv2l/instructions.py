"""Instruction data (LLaVA JSON) built from captions and instances, true by construction.

Every image gets six kinds of records, each a LLaVA-style dict::

    {"id": "000123_brief", "image": "nsd_image_000123.png", "image_id": 123, "type": "brief",
     "conversations": [{"from": "human", "value": "<image>\\nDescribe the image concisely."},
                       {"from": "gpt", "value": "A red ball on the grass."}]}

- ``brief``: one of :data:`BRIEF_TEMPLATES` (14) answered with one of the image's captions;
- ``detailed``: one of :data:`DETAILED_TEMPLATES` (20) answered with every object (size, colour, position),
  the background and the spatial relations;
- ``conversation``: several question-answer turns (colour, shape, count, position, presence, category);
- ``reasoning``: relations between objects (left/right/above/below, which is larger) with the reason;
- ``reconstruction``: :data:`RECONSTRUCTION_PROMPT` answered with a Stable Diffusion style prompt;
- ``concept``: ``Locating the concept of "<object>"`` answered with where the object is (normalised box
  ``[x0, y0, x1, y1]``) or that it is absent.

Choices (templates, caption, question order) come from a generator seeded by ``(seed, image id)``, so the data
are deterministic. Annotations are the prepared store's (``store.annotations[id]``): NSD-mini instances carry
``attributes`` (colour, size, shape, position) and a ``background``; COCO instances (full profile) carry only a
category and a box, so attribute questions are skipped and positions come from box centres.

The dialogue writer is pluggable: any callable ``generator(annotation, kind, rng) -> list of (question,
answer)`` with ``kind`` in ``("conversation", "reasoning")`` (for example one that asks an LLM to write the
dialogue from captions and boxes, as NV2L did with GPT-3.5); an empty list skips the record. A writer with a
``kinds`` attribute that includes ``"detailed"`` also writes the detailed descriptions (else they come from the
annotation template). The default is :class:`TemplateDialogues`. ``annotation`` is the store's dict plus
``"image_size"`` (pixels of the boxes).

The captioner is pluggable too (:func:`add_captions`): ``captioner(images, annotations) -> list of list of str``
(uint8 images (n, H, W, 3) and their annotations; e.g. BLIP-2, whose captions NV2L added to COCO's). Its captions
are appended to the annotation's before the records are built; evaluation keeps the store's (human) references.
Without one (the offline default) the store's captions are used as they are.
"""

import importlib
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..simulate.scenes import BACKGROUND_PHRASES, PLURALS, POSITION_CENTERS

__all__ = ["BRIEF_TEMPLATES", "DETAILED_TEMPLATES", "RECONSTRUCTION_PROMPT", "CONCEPT_TEMPLATE", "RECORD_TYPES",
           "NUMBER_WORDS", "WHERE", "TemplateDialogues", "annotated_categories", "scene_objects", "build_records",
           "build_instruction_data", "write_llava_json", "read_llava_json", "load_generator", "load_captioner",
           "add_captions", "qa_questions", "image_file_name"]

BRIEF_TEMPLATES = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
    "Give a one-sentence caption for the image.",
    "What is in this image? Answer in one sentence.",
    "Briefly describe what you see.",
)
DETAILED_TEMPLATES = (
    "Describe the following image in detail.",
    "Provide a detailed description of the given image.",
    "Give an elaborate explanation of the image you see.",
    "Share a comprehensive rundown of the presented image.",
    "Offer a thorough analysis of the image.",
    "Explain the various aspects of the image before you.",
    "Clarify the contents of the displayed image with great detail.",
    "Characterize the image using a well-detailed description.",
    "Break down the elements of the image in a detailed manner.",
    "Walk through the important details of the image.",
    "Portray the image with a rich, descriptive narrative.",
    "Narrate the contents of the image with precision.",
    "Analyze the image in a comprehensive and detailed manner.",
    "Illustrate the image through a descriptive explanation.",
    "Examine the image closely and share its details.",
    "Write an exhaustive depiction of the given image.",
    "What do you see in the image? Describe every object.",
    "Describe each object in the image, with its colour, size and position.",
    "List the objects in the image and describe the scene in detail.",
    "Give a detailed account of the scene shown in the image.",
)
RECONSTRUCTION_PROMPT = "Provide the corresponding Stable Diffusion prompts for the image."
CONCEPT_TEMPLATE = 'Locating the concept of "{}"'
RECORD_TYPES = ("brief", "detailed", "conversation", "reasoning", "reconstruction", "concept")
NUMBER_WORDS = {0: "no", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
                9: "nine", 10: "ten"}
WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "center": "in the center"}


def image_file_name(image_id):
    """NV2L's image file name of a 0-based 73k id."""
    return f"nsd_image_{int(image_id):06d}.png"


def _article(phrase):
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _plural(cat):
    if cat in PLURALS:
        return PLURALS[cat]
    if cat.endswith(("s", "x", "ch", "sh")):
        return cat + "es"
    if cat.endswith("y") and cat[-2:-1] not in "aeiou":
        return cat[:-1] + "ies"
    return cat + "s"


def _number(n):
    return NUMBER_WORDS.get(n, str(n))


def _count_phrase(n, cat):
    return f"{_number(n)} {cat if n == 1 else _plural(cat)}"


def _be(n):
    return "is" if n == 1 else "are"


def _join(items):
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(text):
    return text[:1].upper() + text[1:]


def _nearest_position(cx, cy):
    return min(POSITION_CENTERS, key=lambda p: (POSITION_CENTERS[p][0] - cx) ** 2 + (POSITION_CENTERS[p][1] - cy) ** 2)


def annotated_categories(annotations):
    """Every object category of a store's annotations (``store.annotations``), sorted: the concept vocabulary."""
    return sorted({i["category"] for a in annotations.values() for i in a.get("instances") or []})


def scene_objects(annotation, image_size):
    """Objects of an annotation with normalised boxes, positions and (when present) attributes.

    Parameters
    ----------
    annotation : dict
        ``store.annotations[id]``.
    image_size : int
        Side in pixels of the store images (the boxes' unit).

    Returns
    -------
    list of dict
        ``category``, ``box`` (x0, y0, x1, y1 in [0, 1]), ``center``, ``position`` and, if annotated,
        ``color``, ``size``, ``shape``; larger objects first.
    """
    out = []
    for inst in annotation.get("instances") or []:
        x, y, w, h = (float(v) / image_size for v in inst["bbox"])
        attrs = inst.get("attributes") or {}
        cx, cy = x + w / 2, y + h / 2
        obj = dict(category=str(inst["category"]), box=(x, y, x + w, y + h), center=(cx, cy), area=w * h,
                   position=attrs.get("position") or _nearest_position(cx, cy))
        for key in ("color", "size", "shape"):
            if attrs.get(key):
                obj[key] = attrs[key]
        out.append(obj)
    out.sort(key=lambda o: -o["area"])
    return out


def _desc(obj, size=False):
    words = ([obj["size"]] if size and "size" in obj else []) + ([obj["color"]] if "color" in obj else [])
    return " ".join(words + [obj["category"]])


def _unique_desc(obj, objs):
    """The shortest phrase that names ``obj`` unambiguously among ``objs`` ("ball", "red ball", "ball on the
    left")."""
    same = [o for o in objs if o["category"] == obj["category"]]
    if len(same) == 1:
        return obj["category"]
    if "color" in obj and sum(o.get("color") == obj["color"] for o in same) == 1:
        return _desc(obj)
    return f"{obj['category']} {WHERE[obj['position']]}"


def _relation(a, b):
    (ax, ay), (bx, by) = POSITION_CENTERS[a["position"]], POSITION_CENTERS[b["position"]]
    if a["position"] == b["position"]:
        (ax, ay), (bx, by) = a["center"], b["center"]
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


def _background(annotation):
    bg = annotation.get("background")
    return BACKGROUND_PHRASES.get(bg) if bg else None


def _box_text(box):
    return "[" + ", ".join(f"{min(max(v, 0.0), 1.0):.2f}" for v in box) + "]"


class TemplateDialogues:
    """The default dialogue generator: template questions whose answers are read off the annotation.

    Parameters
    ----------
    n_turns : int
        Turns of a ``conversation`` record (fewer if the image offers fewer questions).
    """

    def __init__(self, n_turns=4):
        self.n_turns = int(n_turns)

    def __call__(self, annotation, kind, rng):
        objs = scene_objects(annotation, annotation.get("image_size", 1))
        if not objs:
            return []
        if kind == "conversation":
            return self.conversation(annotation, objs, rng)
        if kind == "reasoning":
            return self.reasoning(annotation, objs, rng)
        raise ValueError(f"unknown dialogue kind {kind!r}: expected 'conversation' or 'reasoning'")

    def questions(self, annotation, objs, rng):
        """Every question the template knows for this image, as (type, question, answer)."""
        n = len(objs)
        pool = [("count", "How many objects are in the image?",
                 f"There {_be(n)} {_count_phrase(n, 'object')} in the image.")]
        for o in objs:
            where = WHERE[o["position"]]
            if "color" in o:
                pool.append(("color", f"What colour is the object {where}?", f"The object {where} is {o['color']}."))
            if "shape" in o:
                pool.append(("shape", f"What shape is the object {where}?",
                             f"The object {where} is {_article(o['shape'])}."))
            pool.append(("category", f"What is the object {where}?", f"It is {_article(_desc(o))}."))
            name = _unique_desc(o, objs)
            if "size" in o and "color" in o:
                pool.append(("size", f"Is the {name} small or large?", f"The {name} is {o['size']}."))
            if not name.endswith(where):
                pool.append(("position", f"Where is the {name}?", f"The {name} is {where}."))
        counts = {}
        for o in objs:
            counts[o["category"]] = counts.get(o["category"], 0) + 1
        cat = sorted(counts)[int(rng.integers(len(counts)))]
        pool.append(("count", f"How many {_plural(cat)} are there?",
                     f"There {_be(counts[cat])} {_count_phrase(counts[cat], cat)}."))
        vocab = annotation.get("categories") or []
        absent = [c for c in vocab if c not in counts]
        if absent:
            c = absent[int(rng.integers(len(absent)))]
            pool.append(("presence", f"Is there {_article(c)} in the image?", f"No, there is no {c} in the image."))
        o = objs[int(rng.integers(n))]
        pool.append(("presence", f"Is there {_article(o['category'])} in the image?",
                     f"Yes, there is {_article(_desc(o))} {WHERE[o['position']]}."))
        bg = _background(annotation)
        if bg:
            pool.append(("background", "What is the background of the image?", f"The background is {bg[1]}."))
        return pool

    def conversation(self, annotation, objs, rng):
        pool = self.questions(annotation, objs, rng)
        order = rng.permutation(len(pool))[: self.n_turns]
        return [(pool[i][1], pool[i][2]) for i in order]

    def reasoning(self, annotation, objs, rng):
        bg = _background(annotation)
        bg_prep = f" {bg[0]}" if bg else ""
        if len(objs) == 1:
            o = objs[0]
            size = f" {o['size']}" if "size" in o else ""
            return [("What is the main subject of this image, and where is it?",
                     f"The main subject is {_article((size + ' ' + _desc(o)).strip())}{bg_prep}. It is the only object "
                     f"in the image and it is {WHERE[o['position']]}.")]
        i, j = rng.choice(len(objs), size=2, replace=False)
        a, b = objs[int(i)], objs[int(j)]
        na, nb = _unique_desc(a, objs), _unique_desc(b, objs)
        turns = [(f"What is the spatial relationship between the {na} and the {nb}?",
                  f"The {na} is {_relation(a, b)} the {nb}, because the {na} is {WHERE[a['position']]} of the image "
                  f"and the {nb} is {WHERE[b['position']]}.")]
        if "size" in a and "size" in b and a["size"] != b["size"]:
            big, small = (a, b) if a["size"] == "large" else (b, a)
            nbig, nsmall = _unique_desc(big, objs), _unique_desc(small, objs)
            turns.append((f"Which is bigger, the {na} or the {nb}?",
                          f"The {nbig} is bigger: it is large, while the {nsmall} is small."))
        return turns


def qa_questions(annotation, image_size, rng=None):
    """Evaluation questions of a test image: (type, question, answer word) for count, colour and shape.

    Colour and shape are asked about one object named by its position (positions are distinct in NSD-mini
    scenes, so the question is unambiguous); types whose attribute is not annotated are skipped.
    """
    objs = scene_objects(annotation, image_size)
    if not objs:
        return []
    rng = rng if rng is not None else np.random.default_rng(0)
    out = [("count", "How many objects are in the image?", _number(len(objs)))]
    o = objs[int(rng.integers(len(objs)))]
    where = WHERE[o["position"]]
    if "color" in o:
        out.append(("color", f"What colour is the object {where}?", o["color"]))
    if "shape" in o:
        out.append(("shape", f"What shape is the object {where}?", o["shape"]))
    return out


def _detailed_answer(annotation, objs):
    bg = _background(annotation)
    n = len(objs)
    head = f"The image shows {bg[1]} with" if bg else "The image shows"
    parts = [f"{head} {_count_phrase(n, 'object')}."]
    for o in objs:
        parts.append(_cap(f"{_article(_desc(o, size=True))} is {WHERE[o['position']]}."))
    for a, b in zip(objs, objs[1:]):
        na, nb = _unique_desc(a, objs), _unique_desc(b, objs)
        parts.append(f"The {na} is {_relation(a, b)} the {nb}.")
    return " ".join(parts)


def _reconstruction_answer(annotation, objs, caption):
    bg = _background(annotation)
    items = [caption.rstrip(". ")] + [_desc(o, size=True) for o in objs] + ([bg[1]] if bg else [])
    return ", ".join(items + ["high quality"])


def _concept_answer(annotation, objs, concept):
    hits = [o for o in objs if o["category"] == concept]
    if not hits:
        return f"There is no {concept} in the image."
    where = [f"{WHERE[o['position']]} {_box_text(o['box'])}" for o in hits]
    return _cap(f"{_count_phrase(len(hits), concept)} {_be(len(hits))} in the image: {_join(where)}.")


def _record(image_id, kind, turns, index=0):
    conv = []
    for k, (q, a) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" + q) if k == 0 else q})
        conv.append({"from": "gpt", "value": a})
    return {"id": f"{int(image_id):06d}_{kind}{index or ''}", "image": image_file_name(image_id), "image_id": int(image_id),
            "type": kind, "conversations": conv}


def build_records(image_id, annotation, image_size, generator=None, seed=0, categories=(), types=RECORD_TYPES,
                  n_conversations=1):
    """All instruction records of one image (deterministic in ``seed`` and ``image_id``).

    Parameters
    ----------
    image_id : int
    annotation : dict
        ``store.annotations[image_id]``.
    image_size : int
        Pixels of the boxes.
    generator : callable, optional
        Dialogue generator (default :class:`TemplateDialogues`).
    seed : int
    categories : sequence of str
        Category vocabulary (absent-object questions and negative concept records draw from it).
    types : sequence of str
        Record types to build.
    n_conversations : int
        ``conversation`` records per image, each a dialogue drawn with its own generator (the first one as with
        a single record; ids ``<image>_conversation``, ``<image>_conversation1``, ...).

    Returns
    -------
    list of dict
    """
    if int(n_conversations) < 1:
        raise ConfigError(f"n_conversations {n_conversations!r}: expected an integer >= 1")
    generator = generator or TemplateDialogues()
    ann = dict(annotation, image_size=image_size, categories=list(categories))
    objs = scene_objects(ann, image_size)
    captions = [c for c in ann.get("captions") or [] if c.strip()]
    out = []
    for kind in types:
        rng = np.random.default_rng([int(seed), int(image_id), RECORD_TYPES.index(kind)])
        if kind == "brief":
            if captions:
                out.append(_record(image_id, kind, [(BRIEF_TEMPLATES[rng.integers(len(BRIEF_TEMPLATES))],
                                                     captions[int(rng.integers(len(captions)))])]))
        elif kind == "detailed" and "detailed" in getattr(generator, "kinds", ()):
            turns = generator(ann, kind, rng)
            if turns:
                out.append(_record(image_id, kind, turns))
        elif kind == "detailed":
            if objs:
                out.append(_record(image_id, kind, [(DETAILED_TEMPLATES[rng.integers(len(DETAILED_TEMPLATES))],
                                                     _detailed_answer(ann, objs))]))
        elif kind == "conversation":
            for k in range(int(n_conversations)):
                turns = generator(ann, kind, rng if k == 0 else np.random.default_rng(
                    [int(seed), int(image_id), RECORD_TYPES.index(kind), k]))
                if turns:
                    out.append(_record(image_id, kind, turns, k))
        elif kind == "reasoning":
            turns = generator(ann, kind, rng)
            if turns:
                out.append(_record(image_id, kind, turns))
        elif kind == "reconstruction":
            if captions:
                out.append(_record(image_id, kind, [(RECONSTRUCTION_PROMPT, _reconstruction_answer(
                    ann, objs, captions[int(rng.integers(len(captions)))]))]))
        elif kind == "concept":
            present = sorted({o["category"] for o in objs})
            absent = [c for c in categories if c not in present]
            if present or absent:
                negative = bool(absent) and (not present or rng.random() < 0.25)
                pool = absent if negative else present
                concept = pool[int(rng.integers(len(pool)))]
                out.append(_record(image_id, kind, [(CONCEPT_TEMPLATE.format(concept),
                                                     _concept_answer(ann, objs, concept))]))
        else:
            raise ConfigError(f"unknown instruction type {kind!r}: expected one of {', '.join(RECORD_TYPES)}")
    return out


def build_instruction_data(annotations, image_ids, image_size, generator=None, seed=0, types=RECORD_TYPES,
                           n_conversations=1):
    """Records of many images, in image order then type order.

    Parameters
    ----------
    annotations : dict
        ``store.annotations``.
    image_ids : sequence of int
    image_size : int
    generator, seed, types, n_conversations : see :func:`build_records`.
    """
    categories = annotated_categories(annotations)
    out = []
    for image_id in image_ids:
        out += build_records(int(image_id), annotations[int(image_id)], image_size, generator, seed, categories,
                             types, n_conversations)
    return out


def write_llava_json(records, path):
    """Write records as a LLaVA JSON list."""
    Path(path).write_text(json.dumps(records, indent=1))
    return Path(path)


def read_llava_json(path):
    """Read a LLaVA JSON list written by :func:`write_llava_json` (checks its shape)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, "a LLaVA JSON list of records", f"{type(err).__name__}: {err}") from err
    if not isinstance(data, list) or not all(isinstance(r, dict) and "conversations" in r and "image_id" in r
                                             for r in data):
        raise DataError(path, "a list of records with 'image_id' and 'conversations'")
    return data


def _import(spec, key):
    if ":" not in str(spec):
        raise ConfigError(f"{key} {spec!r}: expected 'package.module:callable'")
    module, name = str(spec).split(":", 1)
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key} {spec!r}: cannot import it ({err})") from err


def load_generator(spec, n_turns=4):
    """The dialogue generator named by a config value: ``"template"`` or ``"package.module:callable"``."""
    if spec in (None, "", "template"):
        return TemplateDialogues(n_turns)
    return _import(spec, "dialogue_generator")


def load_captioner(spec):
    """The captioner named by a config value: ``None`` (the store's captions only) or
    ``"package.module:callable"``."""
    return None if spec in (None, "", "none") else _import(spec, "captioner")


def add_captions(annotations, image_ids, get_images, captioner, batch_size=32):
    """Annotations of ``image_ids`` with the captioner's captions appended to their own (new dicts).

    Parameters
    ----------
    annotations : dict
        ``store.annotations``.
    image_ids : sequence of int
    get_images : callable
        ``ids -> uint8 images (n, H, W, 3)`` (e.g. ``store.get_images``).
    captioner : callable
        ``captioner(images, annotations) -> list of list of str``.
    batch_size : int

    Returns
    -------
    dict
        ``annotations`` with the captioned images' entries replaced.
    """
    out = dict(annotations)
    ids = [int(i) for i in image_ids]
    for a in range(0, len(ids), batch_size):
        chunk = ids[a:a + batch_size]
        caps = captioner(get_images(np.asarray(chunk)), [annotations[i] for i in chunk])
        if len(caps) != len(chunk) or not all(isinstance(c, (list, tuple)) for c in caps):
            raise ConfigError(f"captioner returned {type(caps).__name__} of length {len(caps)} for {len(chunk)} "
                              "images: expected one list of captions per image")
        for i, c in zip(chunk, caps):
            out[i] = dict(annotations[i], captions=list(annotations[i].get("captions") or [])
                          + [str(t) for t in c if str(t).strip()])
    return out

