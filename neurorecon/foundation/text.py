"""The demo language corpus: captions plus descriptions and question-answer pairs templated from annotations.

Everything is true by construction (it is read off the scene annotations: category, colour, size, position,
background). The language model of the demo is pretrained on this text of the training images only.
"""

from collections import Counter

from ..simulate.scenes import BACKGROUND_PHRASES, PLURALS

__all__ = ["scene_texts", "corpus", "longest_caption", "WHERE"]

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
    parts = [f"a {_obj(i)} {WHERE[i['attributes']['position']]}" for i in inst]
    n = len(inst)
    desc = f"The image shows {_count_phrase(n, 'object', 'objects')} {prep}: " + "; ".join(parts) + "."
    texts.append(desc)
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


def corpus(annotations, ids):
    """Texts of the given image ids, in id order (one list entry per text)."""
    return [t for i in ids for t in scene_texts(annotations[int(i)])]


def longest_caption(annotation):
    """The most detailed caption of an image (the longest; first on ties): the demo's text-to-image prompt."""
    caps = annotation["captions"]
    return max(caps, key=len)
