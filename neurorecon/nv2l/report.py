"""Small helpers that turn the language stage's artifacts into tables and text for notebook 06."""

import json

import numpy as np
import pandas as pd
import torch

from .concepts import gradcam, voxel_map
from .encoder import test_voxels
from .instructions import read_llava_json, scene_objects

__all__ = ["load_outputs", "record_counts", "format_record", "dialogues", "concept_maps", "encoder_table",
           "ablation_table", "multi_object_image"]


def load_outputs(folder):
    """The tables and JSON files a complete language stage folder holds, as a dict."""
    return dict(train=read_llava_json(folder / "sft_data_tr.json"), test=read_llava_json(folder / "sft_data_te.json"),
                encoder=pd.read_csv(folder / "encoder_test.csv"), captions=pd.read_csv(folder / "captions_test.csv"),
                qa=pd.read_csv(folder / "qa_test.csv"), concepts=pd.read_csv(folder / "concept_ablation.csv"),
                losses=json.loads((folder / "losses.json").read_text()),
                notes=json.loads((folder / "notes.json").read_text()))


def record_counts(records):
    """Records and turns per instruction type."""
    df = pd.DataFrame(dict(type=[r["type"] for r in records], turns=[len(r["conversations"]) // 2 for r in records]))
    return df.groupby("type").agg(records=("turns", "size"), turns=("turns", "sum"))


def format_record(record):
    """A LLaVA record as readable text."""
    lines = [f"[{record['type']}] {record['image']}"]
    for turn in record["conversations"]:
        who = "human" if turn["from"] == "human" else "  gpt"
        lines.append(f"  {who}: {turn['value']}".replace("\n", " "))
    return "\n".join(lines)


def dialogues(llava, store, subject, test_records, n=3, max_new_tokens=32):
    """Multi-turn chats with the brain LLaVA on a subject's test fMRI, the questions of each image's
    ``conversation`` record, next to the ground-truth answers.

    Returns
    -------
    pandas.DataFrame
        ``image_id``, ``turn``, ``question``, ``brain``, ``truth``.
    """
    x, ids = test_voxels(store, subject)
    convs = {r["image_id"]: r["conversations"] for r in test_records if r["type"] == "conversation"}
    rows = []
    picks = [k for k, i in enumerate(ids) if int(i) in convs][:n]
    for k in picks:
        conv = convs[int(ids[k])]
        questions = [t["value"].replace("<image>\n", "") for t in conv[0::2]]
        chat = llava.chat(x[k:k + 1], questions, max_new_tokens)[0]
        for t, ((q, a), truth) in enumerate(zip(chat, conv[1::2])):
            rows.append(dict(image_id=int(ids[k]), turn=t + 1, question=q, brain=a, truth=truth["value"]))
    return pd.DataFrame(rows)


def concept_maps(encoder, fm, store, subject, image_id, prompt="a {}"):
    """GradCAM voxel maps of every category present in a test image, from the subject's fMRI of it.

    Returns
    -------
    concepts : list of str
    maps : ndarray (n_concepts, V)
    """
    x, ids = test_voxels(store, subject)
    k = int(np.flatnonzero(ids == image_id)[0])
    concepts = sorted({o["category"] for o in scene_objects(store.annotations[int(image_id)],
                                                            store.meta["image_size"])})
    text = fm.text_embeds([prompt.format(c) for c in concepts]).float().cpu()
    xs = torch.from_numpy(np.repeat(x[k:k + 1], len(concepts), 0))
    return concepts, voxel_map(encoder, gradcam(encoder, xs, text)).numpy()


def multi_object_image(store, subject, preferred=(), min_categories=2):
    """A test image of the subject with at least ``min_categories`` object categories (the first of
    ``preferred`` that qualifies, else the first such test image, else the first test image)."""
    ids = [int(i) for i in store.subject(subject).test_image_ids]
    size = store.meta["image_size"]

    def ok(i):
        return len({o["category"] for o in scene_objects(store.annotations[i], size)}) >= min_categories

    for i in list(preferred) + ids:
        if int(i) in ids and ok(int(i)):
            return int(i)
    return ids[0]


def encoder_table(encoder_df):
    """Per-subject ViT3D retrieval and latent correlation, plus the mean."""
    df = encoder_df.set_index("subject")
    df.loc["mean"] = df.mean()
    return df


def ablation_table(concepts_df):
    """Mean evidence drop when the located vs random voxels are removed, per subject and overall."""
    g = concepts_df.groupby("subject")
    df = pd.DataFrame(dict(cases=g.size(), drop_located=g.drop_located.mean(), drop_random=g.drop_random.mean(),
                           located_beats_random=g.apply(lambda d: (d.drop_located > d.drop_random).mean(),
                                                        include_groups=False)))
    df.loc["all"] = [len(concepts_df), concepts_df.drop_located.mean(), concepts_df.drop_random.mean(),
                     (concepts_df.drop_located > concepts_df.drop_random).mean()]
    return df
