"""Small helpers that turn the language stage's artifacts into tables and text for notebook 06."""

import json

import numpy as np
import pandas as pd
import torch

from .concepts import concept_maps as _concept_maps
from .encoder import test_voxels
from .instructions import annotated_categories, read_llava_json, scene_objects

__all__ = ["load_outputs", "record_counts", "format_record", "trained_llava", "dialogues", "concept_encoders",
           "concept_maps", "extraction_table", "encoder_table", "ablation_table", "specificity_table", "multi_object_image"]


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


def trained_llava(folder, fm):
    """The brain LLaVA a language stage saved (``folder / "brain_llava"``), on the foundation's device in its dtype.

    The foundation's own LM is released first (``fm.lm`` becomes ``None``): the saved LLaVA brings its LM again (a
    full fine-tune from ``lm/``, or its base folder plus the LoRA adapters), so keeping both would hold two copies
    of the LLM (32 GB of bf16 weights at Llama-3-8B's size), and with ``lm_copy: false`` the stage has trained
    ``fm.lm`` in place, so it is no longer the base anyway. Nothing else in the notebook needs ``fm.lm`` after this.
    """
    import gc

    from .llava import BrainLlava

    fm.lm = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return BrainLlava.from_pretrained(folder / "brain_llava", fm.device, fm.extras.get("dtype"))


def dialogues(llava, store, subject, test_records, n=3, max_new_tokens=32):
    """Multi-turn chats with the brain LLaVA on a subject's test fMRI, the questions of each image's
    ``conversation`` record, next to the ground-truth answers.

    Returns
    -------
    pandas.DataFrame
        ``image_id``, ``turn``, ``question``, ``brain``, ``truth``.
    """
    x, ids = test_voxels(store, subject)
    convs = {}
    for r in test_records:  # an image's first conversation (n_conversations may give it several)
        if r["type"] == "conversation":
            convs.setdefault(r["image_id"], r["conversations"])
    rows = []
    picks = [k for k, i in enumerate(ids) if int(i) in convs][:n]
    for k in picks:
        conv = convs[int(ids[k])]
        questions = [t["value"].replace("<image>\n", "") for t in conv[0::2]]
        chat = llava.chat(x[k:k + 1], questions, max_new_tokens)[0]
        for t, ((q, a), truth) in enumerate(zip(chat, conv[1::2])):
            rows.append(dict(image_id=int(ids[k]), turn=t + 1, question=q, brain=a, truth=truth["value"]))
    return pd.DataFrame(rows)


def concept_encoders(folder):
    """The ViT3Ds whose Grad-CAM maps the language stage averaged: ``vit3d/`` then ``vit3d_p<P>/`` (the ensemble
    over patch sizes), as the stage saved them."""
    from .vit3d import ViT3D

    extra = sorted(folder.glob("vit3d_p*"), key=lambda p: int(p.name[len("vit3d_p"):]))
    return [ViT3D.from_pretrained(p) for p in [folder / "vit3d", *extra]]


def concept_maps(encoders, fm, store, subject, image_id, cfg):
    """Concept maps (the stage's settings: ``concept_prompt``, ``concept_cam``, ``concept_contrast``) of every
    category present in a test image, from the subject's fMRI of it.

    Returns
    -------
    concepts : list of str
    maps : ndarray (n_concepts, V)
    """
    x, ids = test_voxels(store, subject)
    k = int(np.flatnonzero(ids == image_id)[0])
    concepts = sorted({o["category"] for o in scene_objects(store.annotations[int(image_id)],
                                                            store.meta["image_size"])})
    cats = annotated_categories(store.annotations)
    text = fm.text_embeds([cfg.concept_prompt.format(c) for c in cats]).float().cpu()
    xs = torch.from_numpy(np.repeat(x[k:k + 1], len(concepts), 0))
    maps = _concept_maps(encoders, xs, text[[cats.index(c) for c in concepts]], cfg.concept_cam,
                         text if cfg.concept_contrast else None)
    return concepts, maps.numpy()


def extraction_table(concepts_df):
    """The LM's concept extraction per instruction template: cases, accuracy, share unextracted."""
    from .concepts import CONCEPT_INSTRUCTIONS

    def template(q):
        return next((t for t in CONCEPT_INSTRUCTIONS if _matches(t, q)), "other")

    df = concepts_df.assign(template=concepts_df.instruction.map(template),
                            unextracted=concepts_df.extracted.isna() | concepts_df.extracted.astype(str).eq(""))
    g = df.groupby("template")
    out = pd.DataFrame(dict(cases=g.size(), accuracy=g.extracted_correct.mean(), unextracted=g.unextracted.mean()))
    out.loc["all"] = [len(df), df.extracted_correct.mean(), df.unextracted.mean()]
    return out


def _matches(template, text):
    a, _, b = template.partition("{}")
    return text.startswith(a) and text.endswith(b) and len(text) > len(a) + len(b)


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


def specificity_table(metrics):
    """The concept maps' specificity metrics (``gradcam`` rows of ``metrics.csv``) per subject and their mean."""
    keys = ["map_corr_same_image", "tuning_corr_own", "tuning_corr_other", "frac_own_gt_other", "map_high_ratio"]
    rows = metrics[(metrics.method == "gradcam") & metrics.metric.isin(keys)]
    return rows.pivot_table(index="subject", columns="metric", values="value").reindex(
        columns=[k for k in keys if k in set(rows.metric)])


def ablation_table(concepts_df):
    """Mean evidence drop when the located vs random voxels are removed, per subject and overall (cases with an
    extracted concept)."""
    d = concepts_df.dropna(subset=["drop_located"])
    d = d.assign(beats=d.drop_located > d.drop_random)
    g = d.groupby("subject")
    df = pd.DataFrame(dict(cases=g.size(), drop_located=g.drop_located.mean(), drop_random=g.drop_random.mean(),
                           located_beats_random=g.beats.mean()))
    df.loc["all"] = [len(d), d.drop_located.mean(), d.drop_random.mean(), d.beats.mean()]
    return df
