"""``make dryrun``: the full profile at real sizes on this machine, measured stage by stage.

1. random weights in the real formats (:mod:`neurorecon.dryrun.weights`) and a raw NSD tree at real geometry
   (:mod:`neurorecon.dryrun.nsd`) under ``$NEURORECON_HOME/dryrun/``;
2. one run-config YAML (``dryrun/dryrun.yaml``: ``shared`` paths, device cpu, dtype bfloat16; every stage with
   1-2 training steps, 2 test images, 2 sampling steps);
3. loading the foundation at real size, preparing the tree (1 and 2 sessions: how memory grows with trials) and
   each stage's data loading on both stores (:mod:`neurorecon.dryrun.loading`);
4. notebooks 01-08 in the full profile through the runner (``neurorecon.runner.reproduce``), each training step
   measured by :mod:`neurorecon.dryrun.probe`.

Printed and written to ``benchmarks/dryrun.csv``, per stage and training loop: wall time, peak resident memory of
the process that ran it (the notebook kernel; also its peak private memory, without memory-mapped files), trainable and frozen parameters, FLOPs of one training step,
its achieved FLOP/s as a fraction of this machine's matmul FLOP/s (measured in the same run), and the GPU-hours
the paper's recipe implies at ``SUSTAINED_TFLOPS``.
"""

import csv
import dataclasses
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from .. import paths
from .loading import LOADERS, loading_code, parse_loading

__all__ = ["run_dryrun", "write_run_config", "matmul_tflops", "RECIPES", "SUSTAINED_TFLOPS", "main"]

#: Sustained throughput assumed for the GPU-hour estimates: an A100 (bf16 dense peak 312 TFLOP/s) at 40 % model
#: FLOP utilisation, a usual figure for diffusion and LLM fine-tuning with gradient checkpointing.
SUSTAINED_TFLOPS = 125.0
GPU = "A100 bf16 at 40% of its 312 TFLOP/s peak"

#: The papers' training recipes as samples seen per training loop (the probe's ``desc``): (samples, source).
RECIPES = {
    "encoding": (100_000 * 64, "our full config: 100k steps x 64 (the paper pretrains on UK Biobank maps)"),
    "pretrain": (80 * 67_000, "NeuroPictor: 80 epochs x ~67k (subject, image) pairs"),
    "pretrain-mask": (20 * 67_000, "NeuroPictor: 20 epochs with CFG masking"),
    "refine": (160 * 9_000, "NeuroPictor: 160 epochs x ~9k pairs, one subject"),
    "refine-mask": (20 * 9_000, "NeuroPictor: ~20 epochs with CFG masking, one subject"),
    "vit3d": (30 * 100_000, "NV2L: 30 epochs x ~100k single trials (subjects 1, 2, 5, 7)"),
    "stage1": (2 * 100_000, "NV2L: 1 epoch, ~100k trials x 2 instruction types (assumed)"),
    "stage2": (6 * 100_000, "NV2L: 1 epoch, ~100k trials x 6 instruction types (assumed)"),
}
#: Llama-3-8B has 32 decoder layers; the dry run's LLM has fewer, so LLM FLOPs are scaled per layer.
LLM_LAYERS_REAL = 32
#: The subjects of the dry run's NSD tree (NV2L's four; NeuroPictor's full recipe pretrains on all eight).
DRY_SUBJECTS = [1, 2, 5, 7]
NOTEBOOK_STAGES = {"01": "data", "02": "foundation", "03": "encoding", "04": "pretrain", "05": "refine",
                   "06": "language", "07": "reconstruction", "08": "figures"}


def matmul_tflops(dtype="float32", n=2048, reps=4):
    """This machine's matrix-multiply throughput (TFLOP/s) at the current torch thread count."""
    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12


def _stage_sections(n_test=2, sample_steps=2):
    """Every stage's dry-run settings: real model sizes (the full profile's), tiny step counts."""
    # checkpoints are not kept: the full profile keeps them (to train on), which here would leave 3.8 + 7.6 + 16 GB
    # of encoder, pretraining and refinement state (weights and AdamW moments) on the disk and fill it
    few = dict(n_eval=n_test, n_figure=n_test, num_inference_steps=sample_steps, eval_batch=n_test, ckpt_every=0,
               keep_checkpoints=False)
    return dict(
        # session 1 only, and of it the first 32 trials per subject (2 test trials each): the rest of the 750 would
        # cost notebook 04 hours of VAE encoding on a CPU (4.5-9 s per 512-px image)
        data=dict(simulate=False, subjects=DRY_SUBJECTS, max_sessions=1, max_trials=32),
        foundation=dict(n_eval=n_test, eval_seeds=1, sample_steps=sample_steps),
        encoding=dict(steps=2, batch_size=2, ckpt_every=0, eval_batch=4, keep_checkpoints=False),
        pretrain=dict(few, steps=2, batch_size=1, eval_subjects=[1]),
        refine=dict(few, steps=2, mask_steps=1, batch_size=1, control_scales=[1.0]),
        language=dict(enc_steps=2, enc_batch=2, stage1_steps=1, stage1_batch=1, stage2_steps=1, stage2_batch=1,
                      eval_subjects=[1], n_dialogues=1, caption_tokens=8, qa_tokens=4, meteor=False,
                      caption_tokenizer="simple", concept_random_draws=1, concept_map_images=1, ckpt_every=0,
                      concept_source="annotated"),  # a random LLM extracts no concept: Grad-CAM would never run
        reconstruction=dict(subjects=[1], n_eval=n_test, num_inference_steps=sample_steps, batch_size=n_test,
                            sweep_n=n_test, control_scales=[1.0], guidance_scales=[5.0], betas=[0.93],
                            strengths=[0.8], samplers=[f"ddim:{sample_steps}"], nv2l_prompt_tokens=8,
                            concept_images=1, concept_random_draws=1),
        figures=dict(n_show=n_test),
        evaluation=dict(device="cpu", batch_size=n_test, caption_meteor=False, caption_tokenizer="simple",
                        retrieval_size=n_test, retrieval_draws=2),
    )


def write_run_config(path, weights_paths, nsd_root, dtype="bfloat16", metric_paths=None):
    """The one run-config YAML of the dry run (``shared`` + one section per stage); returns its path.

    ``metric_paths``: the evaluation's metric-network files (:func:`~neurorecon.dryrun.weights.write_metric_weights`);
    its CLIP metric then reads the foundation's CLIP ViT-L/14 file, as the evaluation config says to."""
    shared = dict(nsd_root=str(nsd_root), device="cpu", dtype=dtype,
                  **{k: v for k, v in weights_paths.items() if v is not None})
    doc = dict(shared=shared, **_stage_sections())
    if metric_paths:
        doc["evaluation"].update(metric_paths, clip=weights_paths["clip_l_checkpoint"],
                                 clip_model=weights_paths["clip_l_model"])
    path = Path(path)
    path.write_text("# neurorecon dry run (make dryrun): the full profile with random real-size weights and a\n"
                    "# real-geometry NSD tree; tiny step counts. Written by neurorecon.dryrun.run.\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return path


def _stage_class(stage):
    from importlib import import_module

    from ..runner import STAGE_CONFIGS

    spec = dict(STAGE_CONFIGS, evaluation="neurorecon.evaluation.config:EvaluationConfig")[stage]
    module, cls = spec.split(":")
    return getattr(import_module(module), cls)


def per_stage_files(run_yaml, folder):
    """Old-shape per-stage YAMLs (``full:`` section) from the run config, for a runner without ``config_file``:
    each stage gets its section plus the ``shared`` keys it has a field for (the run config's rule)."""
    doc = yaml.safe_load(Path(run_yaml).read_text())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for stage, section in doc.items():
        if stage == "shared":
            continue
        fields = {f.name for f in dataclasses.fields(_stage_class(stage))}
        values = {k: v for k, v in doc["shared"].items() if k in fields}
        values.update(section or {})
        out[stage] = folder / f"{stage}.yaml"
        out[stage].write_text(yaml.safe_dump({"full": values}, sort_keys=False))
    return out


class PeakSampler(threading.Thread):
    """Polls every descendant process's VmHWM (peak resident set) and RssAnon (private memory) and keeps the largest
    per label: ``peaks`` and ``anon_peaks``. Resident sets count the pages of memory-mapped files too (the store's
    arrays, the images being written), which the kernel can write back and drop; private memory it cannot."""

    def __init__(self, interval=0.5):
        super().__init__(daemon=True)
        self.interval, self.label, self._stop = interval, None, threading.Event()
        self.peaks, self.anon_peaks = {}, {}

    @staticmethod
    def _status_gb(pid, key="VmHWM:"):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1]) / 2**20
        except OSError:
            return 0.0
        return 0.0

    def run(self):
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            label = self.label
            if label:
                try:
                    kids = me.children(recursive=True)
                except psutil.Error:
                    kids = []
                for peaks, key in ((self.peaks, "VmHWM:"), (self.anon_peaks, "RssAnon:")):
                    peak = max([self._status_gb(p.pid, key) for p in kids] or [0.0])
                    peaks[label] = max(peaks.get(label, 0.0), peak)
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()


def _child(code, sampler, label, env=None):
    """Run ``code`` in a fresh Python; returns (seconds, peak GB, return code, last output lines)."""
    sampler.label = label
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    seconds = time.time() - t0
    time.sleep(sampler.interval * 2)
    sampler.label = None
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-12:]
    return seconds, sampler.peaks.get(label, 0.0), proc.returncode, tail, sampler.anon_peaks.get(label, 0.0)


def _load_code(paths_json, dtype):
    return (f"import json, time; from neurorecon.foundation.load import load_from_paths\n"
            f"p = json.load(open({str(paths_json)!r}))\n"
            f"t = time.time(); fm = load_from_paths(p, 'full', 'cpu', {dtype!r}); print('loaded', time.time() - t)\n")


def _prepare_code(root, out, sessions):
    return (f"from neurorecon.data.preparation import prepare\n"
            f"prepare({str(root)!r}, {str(out)!r}, subjects={DRY_SUBJECTS}, image_size=None, progress=False,"
            f" max_sessions={sessions})\n")


def _setup_steps(dry, root):
    """(label, code, store folder it needs or writes) of the loading / preparation / data-loading measurements:
    the foundation loaded once, the tree prepared with 1 and 2 sessions (750 and 1,500 trials per subject), and
    each stage's data loading on both stores (how it grows when the trials double)."""
    steps = [("load foundation (bf16)", _load_code(dry / "paths.json", "bfloat16"), None)]
    for n in (1, 2):
        folder = dry / f"prepare-{n}"
        steps.append((f"prepare {n} session(s) x 4 subjects", _prepare_code(root, folder, n), folder))
        steps += [(f"load data: {stage}, {n} session(s) x 4 subjects ({LOADERS[stage][0]})",
                   loading_code(folder, stage), folder) for stage in LOADERS]
    return steps


def _steps_to_run(steps, kept):
    """The steps whose measurement is not ``kept``, plus a kept preparation whose store a data-loading step to
    run needs and that is no longer on disk."""
    need = {folder for label, _, folder in steps if label not in kept and label.startswith("load data")}
    return [s for s in steps if s[0] not in kept or
            (s[0].startswith("prepare") and s[2] in need and not (s[2] / "store.json").is_file())]


def _run_notebooks(run_yaml, files, sampler, probe_dir, log, start=None):
    """Notebooks 01-08, full profile, through the runner; returns {notebook prefix: (status, seconds)}."""
    from .. import runner
    from .probe import ENV

    status = {}
    current = {}

    def on_log(line):
        log(line)
        for prefix in NOTEBOOK_STAGES:
            if line.startswith("[run ]") and f" {prefix}_" in line:
                current.update(prefix=prefix, t0=time.time())
                sampler.label = f"nb{prefix}"
                os.environ[ENV] = str(probe_dir / f"probe-{prefix}.jsonl")
        if line.startswith(("[done]", "[FAIL]", "[skip]")) and current.get("prefix"):
            status[current["prefix"]] = (line.split()[0].strip("[]"), time.time() - current["t0"])
            current.clear()

    kwargs = dict(profile="full", log=on_log, force=False, start=start)
    if "config_file" in inspect.signature(runner.reproduce).parameters:
        kwargs["config_file"] = str(run_yaml)
        if "check_results" in inspect.signature(runner.reproduce).parameters:
            kwargs["check_results"] = False  # random weights: the notebooks' quality assertions cannot hold
        try:
            rc = runner.reproduce(**kwargs)
        except Exception as err:  # e.g. nbclient's DeadKernelError when the kernel is killed (out of memory)
            on_log(f"[FAIL] runner stopped: {type(err).__name__}: {err}")
            rc = 1
    else:
        log("runner.reproduce has no config_file argument yet: running each notebook with papermill, passing "
            "per-stage files derived from the run config (same rule: section + the shared keys it has)")
        rc = _papermill_fallback(files, on_log, start)
    os.environ.pop(ENV, None)
    sampler.label = None
    return status, rc


def _papermill_fallback(files, log, start=None):
    import papermill as pm

    from ..runner import notebooks

    out_dir = paths.home() / "executed" / "full"
    out_dir.mkdir(parents=True, exist_ok=True)
    for nb in notebooks():
        prefix = nb.name[:2]
        if start and prefix < str(start)[:2]:
            continue
        stage = NOTEBOOK_STAGES[prefix]
        params = dict(profile="full", config_file=str(files[stage]))
        if prefix == "07":
            params["evaluation_file"] = str(files["evaluation"])
        log(f"[run ] {nb.name} (profile full)")
        t0 = time.time()
        try:
            pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params, kernel_name="python3",
                                cwd=str(nb.parent), progress_bar=False)
        except pm.PapermillExecutionError as err:
            log(f"--- {err.ename}: {str(err.evalue)[:2000]}")
            log("\n".join(err.traceback[-4:]) if err.traceback else "")
            log(f"[FAIL] {nb.name} after {time.time() - t0:.0f} s")
            return 1
        log(f"[done] {nb.name} in {time.time() - t0:.0f} s")
    return 0


def _probe_rows(probe_dir, prefix):
    """Per training loop of a notebook: its records, the first one (FLOPs) to the last (time, memory).

    A loop is a run of records of one process and name that starts at step 0 (or where the name changes), so
    loops that share a name (the concept ensemble's extra ViT3Ds) stay apart as "ViT3D", "ViT3D #2", ...; of a
    loop run by several processes (a failed notebook and its rerun) the last one is kept. A loop that its rerun
    resumed from a finished checkpoint took no step there, so its first run's records stay."""
    path = probe_dir / f"probe-{prefix}.jsonl"
    if not path.is_file():
        return []
    loops, seen = [], {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        prev = loops[-1] if loops else None
        if prev is None or rec.get("step") == 0 or prev["pid"] != rec["pid"] or prev["base"] != rec["desc"]:
            k = seen[(rec["pid"], rec["desc"])] = seen.get((rec["pid"], rec["desc"]), 0) + 1
            loops.append(dict(pid=rec["pid"], base=rec["desc"], name=rec["desc"] if k == 1 else f"{rec['desc']} #{k}",
                              recs=[]))
        loops[-1]["recs"].append(dict(rec, desc=loops[-1]["name"]))
    latest = {loop["name"]: loop for loop in loops}  # later runs replace earlier ones, in first-seen order
    return [loop["recs"] for loop in latest.values()]


def _recipe(stage, desc):
    """(RECIPES key, samples, source) of a training loop from its stage and progress-bar name (Nones if none)."""
    d = desc.lower()
    if stage in ("pretrain", "refine"):
        key = stage + ("-mask" if "mask" in d else "")  # "refine (CFG mask)"
    elif stage == "language":
        key = "vit3d" if "vit3d" in d else "stage1" if "stage 1" in d else "stage2" if "stage 2" in d else None
    else:
        key = stage if stage in RECIPES else None
    return (key, *RECIPES[key]) if key else (None, None, None)


def _llm_scale(rec, llm_layers):
    """FLOPs of the step with the LLM's decoder layers scaled to Llama-3-8B's 32 (None if no LLM layers)."""
    by = rec.get("flops_by_module", {})
    layer_names = [n for n in by if n.rsplit(".", 1)[-1].isdigit() and ".layers." in n and n.count(".layers.") == 1]
    if not layer_names:
        return None
    per_layer = sum(by[n] for n in layer_names) / llm_layers
    return rec["flops"] + per_layer * (LLM_LAYERS_REAL - llm_layers)


def _rows(status, peaks, probe_dir, tflops, llm_layers, anon_peaks=None):
    rows = []
    for prefix, stage in NOTEBOOK_STAGES.items():
        st, seconds = status.get(prefix, ("not run", None))
        base = dict(stage=stage, notebook=prefix, status=st, wall_s=None if seconds is None else round(seconds, 1),
                    peak_gb=round(peaks.get(f"nb{prefix}", 0.0), 2) or None,
                    peak_anon_gb=round((anon_peaks or {}).get(f"nb{prefix}", 0.0), 2) or None)
        loops = _probe_rows(probe_dir, prefix)
        if not loops:
            rows.append(dict(base, loop="-"))
        for recs in loops:
            first, last = recs[0], recs[-1]
            step_s = last["seconds"] if len(recs) > 1 else first["seconds"]
            flops = first.get("flops")
            peak = tflops["bfloat16" if first["mixed_precision"] == "bf16" else "float32"]
            achieved = flops / step_s / 1e12 if flops and step_s else None
            key, samples, source = _recipe(stage, first["desc"])
            real = _llm_scale(first, llm_layers) if stage == "language" else None
            per_sample = (real or flops or 0) / first["batch_size"]
            # an LLM loop whose decoder layers the FLOP counter did not resolve (LoRA with gradient checkpointing)
            # has no 8B figure: its 2-layer FLOPs would understate the recipe's GPU-hours 16-fold
            unscaled = stage == "language" and "llava" in first["desc"].lower() and real is None
            gpu_h = (per_sample * samples / (SUSTAINED_TFLOPS * 1e12) / 3600
                     if samples and flops and not unscaled else None)
            rows.append(dict(base, loop=first["desc"], steps=len(recs), batch=first["batch_size"],
                             precision=first["mixed_precision"], trainable_M=round(first["trainable"] / 1e6, 1),
                             frozen_M=round(first["frozen"] / 1e6, 1), step_peak_gb=last["peak_rss_gb"],
                             tflop_per_step=round(flops / 1e12, 3) if flops else None,
                             step_s=round(step_s, 1), achieved_tflops=round(achieved, 4) if achieved else None,
                             frac_of_matmul=round(achieved / peak, 3) if achieved else None,
                             tflop_per_step_8b=round(real / 1e12, 3) if real else None,
                             recipe_samples=samples, recipe=source,
                             gpu_hours=round(gpu_h, 1) if gpu_h else None))
    return rows


COLUMNS = ["stage", "notebook", "status", "wall_s", "peak_gb", "peak_anon_gb", "loop", "steps", "batch", "precision",
           "trainable_M", "frozen_M", "step_peak_gb", "tflop_per_step", "step_s", "achieved_tflops", "frac_of_matmul",
           "tflop_per_step_8b", "recipe_samples", "gpu_hours", "recipe"]


SETUP_COLUMNS = ["step", "seconds", "peak_gb", "peak_anon_gb", "rc", "note"]


def _table(rows, columns):
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), "-+-".join("-" * w for w in widths)] + [line(x) for x in cells])


def run_dryrun(csv_path=None, llm_layers=2, skip_notebooks=False, start=None, skip_setup=False, log=print):
    """Write weights + tree, measure loading and preparation, run notebooks 01-08; returns (rows, extra rows).

    ``skip_setup`` keeps the loading/preparation measurements of the last run (``dryrun_setup.csv``)."""
    import torch

    from .nsd import write_nsd_tree
    from .weights import write_metric_weights, write_weights

    home = paths.home()
    dry = home / "dryrun"
    dry.mkdir(parents=True, exist_ok=True)
    probe_dir = dry / "probe"
    probe_dir.mkdir(exist_ok=True)
    # the notebooks' figures (random weights, 2 test images) go beside the run, not into the checkout's figures/
    os.environ.setdefault("NEURORECON_FIGURES", str(dry / "figures"))
    sampler = PeakSampler()
    sampler.start()
    extra = []
    t_all = time.time()
    tflops = {d: matmul_tflops(d) for d in ("float32", "bfloat16")}
    log(f"matmul on this machine ({torch.get_num_threads()} threads): fp32 {tflops['float32']:.3f}, "
        f"bf16 {tflops['bfloat16']:.3f} TFLOP/s")
    setup_csv = Path(csv_path or (paths.repo_root() or Path.cwd()) / "benchmarks" / "dryrun.csv").with_name(
        "dryrun_setup.csv")
    old_rows = []
    if skip_setup and setup_csv.is_file():
        with open(setup_csv) as fh:
            old_rows = list(csv.DictReader(fh))
    for label, code in (
            ("weights", f"from neurorecon.dryrun.weights import write_weights\n"
                        f"write_weights({str(dry / 'weights')!r}, size='real', llm_layers={llm_layers})"),
            ("nsd tree", f"from neurorecon.dryrun.nsd import write_nsd_tree\n"
                         f"write_nsd_tree({str(dry / 'nsd')!r})")):
        sec, peak, rc, tail, _ = _child(code, sampler, label)
        log(f"{label}: {sec:.0f} s, peak {peak:.1f} GB, rc {rc}")
        if rc:
            raise RuntimeError(f"dry run: writing the {label} failed:\n" + "\n".join(tail))
        first = [r for r in old_rows if r["step"].startswith(label)]
        extra += first or [dict(step=label, seconds=round(sec, 1), peak_gb=round(peak, 2), rc=rc)]  # kept: the
        # first write's figures (this run found the files written with the same settings and reused them)
    record = write_weights(dry / "weights", size="real", llm_layers=llm_layers, log=lambda *_: None)
    root = write_nsd_tree(dry / "nsd")
    (dry / "paths.json").write_text(json.dumps(record["paths"], indent=1))
    metric_paths = write_metric_weights(dry / "weights" / "metrics", log=log)
    run_yaml = write_run_config(dry / "dryrun.yaml", record["paths"], root, metric_paths=metric_paths)
    files = per_stage_files(run_yaml, dry / "stage-configs")
    log(f"run config: {run_yaml}")
    from ..data.check import check_data

    t0 = time.time()
    problems = check_data(root, "full", subjects=DRY_SUBJECTS)  # the tree holds NV2L's four, not all eight
    extra.append(dict(step="check-data --profile full", seconds=round(time.time() - t0, 1), peak_gb=None,
                      rc=len(problems)))
    log(f"check-data --profile full: {len(problems)} problem(s) in {time.time() - t0:.1f} s" +
        "".join(f"\n  {p}" for p in problems[:10]))
    csv_path = setup_csv.with_name("dryrun.csv") if csv_path is None else Path(csv_path)
    steps = _setup_steps(dry, root)
    if skip_setup and setup_csv.is_file():
        old = [r for r in old_rows if r["step"] in {label for label, *_ in steps}]
        steps = _steps_to_run(steps, {r["step"] for r in old})
        old = [r for r in old if r["step"] not in {label for label, *_ in steps}]  # a rerun replaces its row
        extra += old
        log(f"loading/preparation: kept {len(old)} measurement(s) from {setup_csv}")
    for label, code, _ in steps:
        sec, peak, rc, tail, anon = _child(code, sampler, label)
        row = dict(step=label, seconds=round(sec, 1), peak_gb=round(peak, 2), peak_anon_gb=round(anon, 2), rc=rc)
        rec = parse_loading(tail) if label.startswith("load data") and rc == 0 else None
        if rec:  # the loader's own peak above the opened store, not the whole process's
            row.update(peak_gb=rec["peak_gb"], note=f"{rec['trials']} trials/subject; private memory held after "
                                                    f"loading {rec['held_gb']:.2f} GB")
        extra.append(row)
        log(f"{label}: {sec:.0f} s, peak {row['peak_gb']} GB, rc {rc}" + (f" ({row['note']})" if rec else "") +
            ("" if rc == 0 else "\n  " + "\n  ".join(tail)))
    status, rc = ({}, None) if skip_notebooks else _run_notebooks(run_yaml, files, sampler, probe_dir, log, start)
    sampler.stop()
    rows = _rows(status, sampler.peaks, probe_dir, tflops, llm_layers, sampler.anon_peaks)
    extra.append(dict(step="total", seconds=round(time.time() - t_all, 1),
                      peak_gb=round(max(sampler.peaks.values() or [0.0]), 2), rc=rc))
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    if not skip_notebooks:  # a set-up-only run leaves the last chain's table alone
        with open(csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    with open(setup_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=SETUP_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(extra)
    log("\n" + _table(extra, SETUP_COLUMNS))
    if not skip_notebooks:
        log("\n" + _table(rows, COLUMNS[:-1]))
    log(f"\nGPU-hours at {SUSTAINED_TFLOPS:.0f} TFLOP/s sustained ({GPU}); matmul here: fp32 "
        f"{tflops['float32']:.3f}, bf16 {tflops['bfloat16']:.3f} TFLOP/s. Written: {csv_path}")
    return rows, extra


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m neurorecon.dryrun", description=__doc__.split("\n")[0])
    ap.add_argument("--csv", default=None, help="output CSV (default benchmarks/dryrun.csv)")
    ap.add_argument("--llm-layers", type=int, default=2)
    ap.add_argument("--skip-notebooks", action="store_true", help="only weights, tree, loading and preparation")
    ap.add_argument("--start", default=None, help="first notebook (e.g. 03): earlier complete stages are reused")
    ap.add_argument("--skip-setup", action="store_true", help="keep the last run's loading/preparation figures")
    args = ap.parse_args(argv)
    rows, extra = run_dryrun(args.csv, args.llm_layers, args.skip_notebooks, args.start, args.skip_setup)
    if args.skip_notebooks:
        return 0 if all(str(r.get("rc")) in ("0", "0.0") for r in extra if r["step"] != "total") else 1
    return 0 if all(r["status"] == "done" for r in rows if r["status"] != "skip") else 1
