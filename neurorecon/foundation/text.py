"""The demo language corpus: captions plus descriptions and question-answer pairs templated from annotations.

Everything is true by construction (it is read off the scene annotations: category, colour, size, position,
background). The language model of the demo is pretrained on this text of the training images only, plus
(``lm_grounded`` in the foundation config) chats about random synthetic scenes that are described in the chat
itself (:func:`grounded_chats`): a large LLM answers a question from what its context says, and a tiny LM
pretrained on image texts alone does not learn to (``docs/nv2l.md``, "Demo sizes").
"""

from collections import Counter

import numpy as np

from ..simulate.scenes import (BACKGROUND_PHRASES, BACKGROUNDS, CATEGORIES, CATEGORY_SHAPES, COLORS, PLURALS,
                               POSITION_CENTERS, POSITIONS, SIZES)

__all__ = ["scene_texts", "corpus", "longest_caption", "WHERE", "synthetic_scene", "scene_description",
           "grounded_chats", "lookup_questions"]

#: Position → phrase.
WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "center": "in the center"}
_NUM = {1: "one", 2: "two", 3: "three", 4: "four"}


def _obj(inst, size=True):
    a = inst["attributes"]
    return " ".join(([a["size"]] if size else []) + [a["color"], inst["category"]])


def _count_phrase(n, noun, plural):
    return f"{_NUM.get(n, n)} {noun if n == 1 else plural}"


def scene_texts(annotation):
    """All templated texts of one image: its captions, a detailed description and question-answer pairs.

    Parameters
    ----------
    annotation : dict
        ``store.annotations[id]`` (``captions``, ``instances`` with ``category`` and ``attributes``,
        ``background``).

    Returns
    -------
    list of str
    """
    inst = annotation["instances"]
    bg = annotation.get("background", "plain")
    prep, noun = BACKGROUND_PHRASES.get(bg, (f"on a {bg} background", f"a {bg} background"))
    texts = list(annotation["captions"])
    n = len(inst)
    texts.append(scene_description(annotation))
    texts.append(f"Question: how many objects are in the image? Answer: there {'is' if n == 1 else 'are'} "
                 f"{_count_phrase(n, 'object', 'objects')}.")
    texts.append(f"Question: what is the background? Answer: {noun}.")
    counts = Counter(i["category"] for i in inst)
    for cat, k in sorted(counts.items()):
        texts.append(f"Question: how many {PLURALS.get(cat, cat + 's')} are there? Answer: "
                     f"{_count_phrase(k, cat, PLURALS.get(cat, cat + 's'))}.")
    for i in inst:
        a = i["attributes"]
        texts.append(f"Question: what colour is the {i['category']} {WHERE[a['position']]}? Answer: it is "
                     f"{a['color']}.")
        texts.append(f"Question: where is the {a['color']} {i['category']}? Answer: {WHERE[a['position']]}.")
        texts.append(f"Question: what is {WHERE[a['position']]}? Answer: a {_obj(i)}.")
    return texts


def scene_description(annotation):
    """One sentence naming every object of an annotation with its size, colour and position."""
    inst = annotation["instances"]
    bg = annotation.get("background", "plain")
    prep = BACKGROUND_PHRASES.get(bg, (f"on a {bg} background", None))[0]
    parts = [f"a {_obj(i)} {WHERE[i['attributes']['position']]}" for i in inst]
    return f"The image shows {_count_phrase(len(inst), 'object', 'objects')} {prep}: " + "; ".join(parts) + "."


def synthetic_scene(rng, max_objects=3):
    """A random NSD-mini-like annotation (1 to ``max_objects`` objects at distinct positions; boxes in [0, 1])."""
    n = int(rng.integers(1, max_objects + 1))
    inst = []
    for p in rng.choice(len(POSITIONS), n, replace=False):
        cat, size = CATEGORIES[int(rng.integers(len(CATEGORIES)))], SIZES[int(rng.integers(len(SIZES)))]
        (cx, cy), f = POSITION_CENTERS[POSITIONS[p]], (0.2 if size == "small" else 0.36)
        inst.append(dict(category=cat, bbox=[cx - f / 2, cy - f / 2, f, f],
                         attributes=dict(color=list(COLORS)[int(rng.integers(len(COLORS)))], size=size,
                                         shape=CATEGORY_SHAPES[cat], position=POSITIONS[p])))
    return dict(captions=[], instances=inst, background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
                categories=list(CATEGORIES), image_size=1)


def grounded_chats(n, seed=0, n_turns=4):
    """Chats in the brain LLaVA's format whose first turn describes a random scene in words (where the LLaVA has
    the image) and whose questions (the instruction data's templates) are answered from that description.

    Pretraining on them teaches the demo LM to answer from its context, which a pretrained LLM can do and which
    the brain LLaVA needs: the answer to "What colour is the object on the left?" is in the image tokens, not in
    the question. The scenes are random, not NSD-mini's, so the answers cannot be memorised.

    Parameters
    ----------
    n : int
        Chats.
    seed : int
    n_turns : int
        Question-answer turns per chat.

    Returns
    -------
    list of str
    """
    from ..nv2l.instructions import TemplateDialogues, scene_objects
    from ..nv2l.llava import BOT, HUMAN

    rng, gen = np.random.default_rng(seed), TemplateDialogues(n_turns)
    out = []
    for _ in range(int(n)):
        scene = synthetic_scene(rng)
        turns = gen.conversation(scene, scene_objects(scene, 1), rng)
        out.append(" ".join((HUMAN + (scene_description(scene) + "\n" if k == 0 else "") + q + BOT + a)
                            for k, (q, a) in enumerate(turns)))
    return out


def lookup_questions(n, seed=0):
    """Held-out context-lookup probes: (prompt, kind, answer word) for the colour and the shape of one object of a
    random scene described in the prompt, in the brain LLaVA's chat format (the prompt ends before the answer)."""
    from ..nv2l.instructions import scene_objects
    from ..nv2l.llava import BOT, HUMAN

    rng, out = np.random.default_rng(seed), []
    for _ in range(int(n)):
        scene = synthetic_scene(rng)
        objs = scene_objects(scene, 1)
        o = objs[int(rng.integers(len(objs)))]
        where, desc = WHERE[o["position"]], scene_description(scene)
        for kind, q, word in (("color", f"What colour is the object {where}?", o["color"]),
                              ("shape", f"What shape is the object {where}?", o["shape"])):
            out.append((HUMAN + desc + "\n" + q + BOT.rstrip(), kind, word))
    return out


def corpus(annotations, ids):
    """Texts of the given image ids, in id order (one list entry per text)."""
    return [t for i in ids for t in scene_texts(annotations[int(i)])]


def longest_caption(annotation):
    """The most detailed caption of an image (the longest; first on ties): the demo's text-to-image prompt."""
    caps = annotation["captions"]
    return max(caps, key=len)
