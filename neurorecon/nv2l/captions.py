"""Caption metrics with pycocoevalcap, offline: BLEU-1..4, METEOR, ROUGE-L, CIDEr (SPICE reported unavailable).

``caption_scores(references, candidates)`` is the one entry point (issue 6 reuses it). Captions are tokenised
with pycocoevalcap's PTB tokenizer (Java) by default, as in the COCO caption evaluation; ``tokenizer="simple"``
lowercases and strips punctuation in Python (no JVM, for quick tests). METEOR starts a JVM (about 10-20 s on
the first call, then fast); it can be switched off by config, and its value is then NaN with that reason in
:data:`UNAVAILABLE`. Asking for the PTB tokenizer or METEOR without a Java runtime raises
:class:`~neurorecon.errors.MissingDependencyError` (never a silent switch). SPICE needs Stanford CoreNLP
jars that pycocoevalcap downloads at first use, which is impossible offline: it is always NaN with a note in
:data:`UNAVAILABLE`. CIDEr's document frequencies come from the reference set itself (pycocoevalcap's
default), so scores depend on the set of images scored together.

Scores are fractions (multiply by 100 for the papers' tables).
"""

import contextlib
import io
import math
import re
import shutil

from ..errors import MissingDependencyError

__all__ = ["METRICS", "UNAVAILABLE", "CaptionScorer", "caption_scores", "simple_tokenize", "java_available",
           "require_java"]

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
#: Why a metric may be NaN.
UNAVAILABLE = {
    "SPICE": "unavailable offline: pycocoevalcap's SPICE downloads Stanford CoreNLP 3.6.0 at first use",
    "METEOR": "switched off by config: meteor / caption_meteor is false",
}


def java_available():
    """True if a ``java`` executable is on PATH (PTB tokenizer and METEOR need it)."""
    return shutil.which("java") is not None


def require_java(what):
    """Raise :class:`~neurorecon.errors.MissingDependencyError` naming ``what`` when no ``java`` is on PATH."""
    if not java_available():
        raise MissingDependencyError(
            f"{what} needs a Java runtime and no 'java' is on PATH: install one (Debian: apt-get install "
            "default-jre-headless; conda: openjdk, as in environment.yml), or switch it off in the config "
            "(METEOR: meteor / caption_meteor: false, recorded as unavailable; tokenizer: caption_tokenizer: simple)")


def simple_tokenize(text):
    """Lowercase, drop punctuation, collapse spaces (close to the PTB tokenizer's output for plain captions)."""
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def _tokenize(captions, tokenizer):
    if tokenizer == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        data = {k: [{"caption": c} for c in v] for k, v in captions.items()}
        with contextlib.redirect_stdout(io.StringIO()):
            return PTBTokenizer().tokenize(data)
    if tokenizer == "simple":
        return {k: [simple_tokenize(c) for c in v] for k, v in captions.items()}
    raise ValueError(f"tokenizer {tokenizer!r}: expected 'ptb' or 'simple'")


class CaptionScorer:
    """Scores many caption sets with one METEOR JVM (start it once, score every method and subject).

    Use as a context manager (closes the JVM) or call :meth:`close`.

    Parameters
    ----------
    meteor : bool
        Compute METEOR (starts a JVM on first use); NaN otherwise (:data:`UNAVAILABLE` says why).
    tokenizer : {"ptb", "simple"}
        ``ptb`` (Java, the COCO standard) or ``simple`` (Python).

    Raises
    ------
    MissingDependencyError
        ``meteor`` or ``tokenizer="ptb"`` without a Java runtime.
    """

    def __init__(self, meteor=True, tokenizer="ptb"):
        if tokenizer not in ("ptb", "simple"):
            raise ValueError(f"tokenizer {tokenizer!r}: expected 'ptb' or 'simple'")
        if meteor:
            require_java("METEOR (pycocoevalcap)")
        if tokenizer == "ptb":
            require_java("the PTB tokenizer (pycocoevalcap, caption_tokenizer: ptb)")
        self.meteor = bool(meteor)
        self.tokenizer = tokenizer
        self._meteor = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        if self._meteor is not None:
            _close_meteor(self._meteor)
            self._meteor = None

    def score(self, references, candidates):
        """Corpus-level metrics of candidates against references.

        Parameters
        ----------
        references : dict or list
            Per image, a list of reference captions (dict keyed by image id, or a list aligned with
            ``candidates``).
        candidates : dict or list
            Per image, one candidate caption (str).

        Returns
        -------
        dict
            Metric name (:data:`METRICS`) → float (NaN when unavailable).
        """
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        if isinstance(references, dict):
            keys = list(references)
            refs = {i: list(references[k]) for i, k in enumerate(keys)}
            cands = {i: [candidates[k]] for i, k in enumerate(keys)}
        else:
            if len(references) != len(candidates):
                raise ValueError(f"{len(references)} reference lists but {len(candidates)} candidates")
            refs = {i: list(r) for i, r in enumerate(references)}
            cands = {i: [c] for i, c in enumerate(candidates)}
        if not refs:
            raise ValueError("no captions to score")
        if any(not r for r in refs.values()):
            raise ValueError("every image needs at least one reference caption")
        refs, cands = _tokenize(refs, self.tokenizer), _tokenize(cands, self.tokenizer)
        cands = {k: [v[0] if v and v[0] else "<empty>"] for k, v in cands.items()}
        out = {m: math.nan for m in METRICS}
        with contextlib.redirect_stdout(io.StringIO()):
            bleu, _ = Bleu(4).compute_score(refs, cands)
            out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
            out["ROUGE-L"] = float(Rouge().compute_score(refs, cands)[0])
            out["CIDEr"] = float(Cider().compute_score(refs, cands)[0])
            if self.meteor:
                if self._meteor is None:
                    from pycocoevalcap.meteor.meteor import Meteor

                    self._meteor = Meteor()
                out["METEOR"] = float(self._meteor.compute_score(refs, cands)[0])
        return out


def caption_scores(references, candidates, meteor=True, tokenizer="ptb"):
    """One-shot :meth:`CaptionScorer.score` (starts and closes its own METEOR JVM)."""
    with CaptionScorer(meteor, tokenizer) as scorer:
        return scorer.score(references, candidates)


def _close_meteor(scorer):
    proc = getattr(scorer, "meteor_p", None)
    if proc is None:
        return
    with contextlib.suppress(Exception):
        proc.stdin.close()
        proc.kill()
        proc.wait(timeout=5)
