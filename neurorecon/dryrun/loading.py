"""Peak memory of each stage's data loading (``make dryrun``): the loaders the stages call, on a prepared store.

Each measurement runs in a fresh Python (:func:`loading_code`): imports the loader, opens the store, resets the kernel's
peak-RSS counter (``/proc/self/clear_refs``), calls the stage's loader, then prints one JSON line: the trials per
subject, the peak resident memory above what the process held before loading (``peak_gb``; memory-mapped pages
that were read count too, although the page cache shares them between processes) and the private (anonymous)
memory still held after it (``held_gb``: what every training process keeps).
"""

__all__ = ["LOADERS", "loading_code", "parse_loading"]

#: stage -> (what is measured, imports, the loading itself: run with ``store`` open and ``np`` imported)
LOADERS = {
    "encoding": ("flat maps of every subject (pretraining_arrays) and one batch of 64",
                 "from neurorecon.encoding.data import StackedMaps, pretraining_arrays\n",
                 "arrays, _ = pretraining_arrays(store, store.subjects)\n"
                 "data = StackedMaps(arrays)\n"
                 "data.batch(np.random.default_rng(0).integers(0, len(data), 64))\n"),
    "pretrain": ("repetition-averaged flat maps of every subject (subject_pairs)",
                 "from neurorecon.neuropictor.data import subject_pairs\n",
                 "data = [subject_pairs(store, s, 'average') for s in store.subjects]\n"),
    "language": ("single trials on the common grid of every subject (training_trials)",
                 "from neurorecon.nv2l.encoder import training_trials\n",
                 "data = training_trials(store, store.subjects)\n"),
    "reconstruction": ("test maps and volumes of every subject (repetition means)", "",
                       "data = [(store.subject(s).test_flat, store.subject(s).test_common) for s in store.subjects]\n"),
}

_STATUS = ("def _status(key):\n"
           "    for line in open('/proc/self/status'):\n"
           "        if line.startswith(key):\n"
           "            return int(line.split()[1]) / 2 ** 20\n"
           "    return 0.0\n")


def loading_code(store_folder, stage):
    """Python source measuring ``stage``'s data loading on the store at ``store_folder`` (see the module)."""
    _, imports, body = LOADERS[stage]
    return ("import json\nimport numpy as np\nfrom neurorecon.data import open_store\n" + imports + _STATUS +
            f"store = open_store({str(store_folder)!r})\n"
            "trials = int(np.mean([len(store.subject(s).train_image_ids) for s in store.subjects]))\n"
            "before, anon = _status('VmRSS:'), _status('RssAnon:')\n"
            "open('/proc/self/clear_refs', 'w').write('5')  # peak RSS := current RSS\n"
            + body +
            "print(json.dumps(dict(trials=trials, peak_gb=round(_status('VmHWM:') - before, 3),\n"
            "                      held_gb=round(_status('RssAnon:') - anon, 3))))\n")


def parse_loading(lines):
    """The JSON record of a :func:`loading_code` run from its output lines (None if it printed none)."""
    import json

    for line in reversed(lines):
        if line.startswith("{"):
            return json.loads(line)
    return None
