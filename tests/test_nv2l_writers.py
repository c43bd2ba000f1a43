"""Pluggable captioner and dialogue writer of the instruction data (the templates stay the offline default)."""

import numpy as np
import pytest

from neurorecon.errors import ConfigError
from neurorecon.nv2l.instructions import (DETAILED_TEMPLATES, add_captions, build_instruction_data, load_captioner,
                                          load_generator)
from test_nv2l_language import _annotations as _scene_annotations


def _annotations(n=6):
    """NSD-mini-style annotations keyed 0..n-1."""
    return {k: a for k, a in enumerate(_scene_annotations(n).values())}


def brightness_captioner(images, annotations):
    """A stand-in for BLIP-2: one caption per image, read off its pixels."""
    return [[f"A {'bright' if im.mean() > 100 else 'dark'} picture."] for im in images]


class LlmWriter:
    """A stand-in for an LLM dialogue writer that also writes the detailed descriptions."""

    kinds = ("detailed", "conversation", "reasoning")

    def __call__(self, annotation, kind, rng):
        return [(f"Tell me about it ({kind}).", f"It has {len(annotation['captions'])} captions.")]


def test_captioner_adds_captions_to_the_instruction_data():
    ann = _annotations()
    images = np.stack([np.full((8, 8, 3), 40 * i, np.uint8) for i in range(len(ann))])
    cap = load_captioner("test_nv2l_writers:brightness_captioner")
    assert load_captioner(None) is None
    more = add_captions(ann, sorted(ann), lambda ids: images[ids], cap, batch_size=4)
    for i in ann:
        assert more[i]["captions"][:-1] == ann[i]["captions"]  # appended; the store's own are untouched
        assert more[i]["captions"][-1] == ("A bright picture." if 40 * i > 100 else "A dark picture.")
        assert len(ann[i]["captions"]) == len(more[i]["captions"]) - 1
    with pytest.raises(ConfigError, match="one list of captions per image"):
        add_captions(ann, sorted(ann), lambda ids: images[ids], lambda im, a: ["x"], batch_size=4)
    with pytest.raises(ConfigError, match="cannot import"):
        load_captioner("no_such_module:f")


def test_a_dialogue_writer_can_write_detailed_descriptions_too():
    ann = _annotations()
    default = build_instruction_data(ann, sorted(ann), 64, load_generator("template"))
    written = build_instruction_data(ann, sorted(ann), 64, load_generator("test_nv2l_writers:LlmWriter")())
    det = [r for r in written if r["type"] == "detailed"]
    assert det and all(r["conversations"][1]["value"].endswith("captions.") for r in det)
    assert all(r["conversations"][0]["value"] == "<image>\nTell me about it (detailed)." for r in det)
    tmpl = [r for r in default if r["type"] == "detailed"]
    assert all(r["conversations"][0]["value"][len("<image>\n"):] in DETAILED_TEMPLATES for r in tmpl)
    # a writer without "detailed" in its kinds leaves the detailed descriptions to the template
    plain = build_instruction_data(ann, sorted(ann), 64, lambda a, k, r: [("Q?", "A.")])
    assert [r for r in plain if r["type"] == "detailed"] == tmpl
