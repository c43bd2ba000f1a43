"""One config dataclass per stage, loaded from YAML with profiles ``smoke``, ``demo`` and ``full``.

Every stage's YAML file ships in ``neurorecon/configs/<stage>.yaml`` and has the shape::

    defaults:        # values shared by every profile
      key: value
    smoke: {...}     # overrides for the smoke profile (CI)
    demo: {...}      # overrides for the demo profile (laptop CPU, NSD-mini)
    full: {...}      # overrides for the full profile (real NSD, real weights, GPUs)

A user's own YAML goes on top: either a file of that same shape, or one **run config** for a whole run (a
``shared`` section plus one section per stage, see :func:`load_config`), which every notebook's ``config_file``
and ``make reproduce CONFIG=...`` accept. Unknown keys and values of the wrong type are errors that name the file,
the section and the key; every section of every file read is validated on each load.
"""

import dataclasses
import hashlib
import json
import os
import types
import typing
from pathlib import Path

import yaml

from .errors import ConfigError

__all__ = ["PROFILES", "STAGE_CONFIGS", "SHARED", "StageConfig", "load_config", "config_from_dict", "default_profile",
           "default_config_file", "config_source", "config_class", "is_run_config", "quality_checks"]

PROFILES = ("smoke", "demo", "full")
_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def default_profile():
    """The profile named by ``$NEURORECON_PROFILE`` (default ``demo``)."""
    profile = os.environ.get("NEURORECON_PROFILE", "demo")
    if profile not in PROFILES:
        raise ConfigError(f"NEURORECON_PROFILE={profile!r}: expected one of {', '.join(PROFILES)}")
    return profile


@dataclasses.dataclass
class StageConfig:
    """Base class of stage configs: subclasses set ``STAGE`` (YAML name) and ``NOTEBOOK``."""

    STAGE: typing.ClassVar[str] = ""
    NOTEBOOK: typing.ClassVar[str] = ""

    #: Bumped when the stage's code changes what it writes for the same config values, so that artifacts made by
    #: the older code are not reused (part of :meth:`digest` when non-zero; 0 leaves digests as they were).
    RECIPE: typing.ClassVar[int] = 0

    profile: str = "demo"

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    def digest(self):
        """A short hash of the resolved values: a stage is 'complete with the same config' when it matches."""
        values = self.to_dict()
        if self.RECIPE:
            values["_recipe"] = self.RECIPE
        blob = json.dumps(values, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _type_ok(value, tp):
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False
        if not args or args[-1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value) if args else True
        if origin is tuple:
            return len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))
        return all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        kt, vt = typing.get_args(tp) or (typing.Any, typing.Any)
        return isinstance(value, dict) and all(_type_ok(k, kt) and _type_ok(v, vt) for k, v in value.items())
    return isinstance(value, tp)


def _type_name(tp):
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def config_from_dict(cls, values, source="<dict>"):
    """Build ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Parameters
    ----------
    cls : type
        A :class:`StageConfig` subclass.
    values : dict
        Field values.
    source : str
        Where the values came from (used in error messages).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} for the {cls.STAGE or cls.__name__} config; "
            f"expected keys are {', '.join(names)}"
        )
    for key, value in values.items():
        tp = hints[key]
        if isinstance(value, list) and typing.get_origin(tp) is tuple:
            values[key] = value = tuple(value)
        if not _type_ok(value, tp):
            raise ConfigError(
                f"{source}: key {key!r} expected a value of type {_type_name(tp)}, "
                f"found {value!r} ({type(value).__name__})"
            )
    return cls(**values)


#: Config class of every section a run config may hold, as "module:Class" (imported only when needed).
STAGE_CONFIGS = {
    "simulate": "neurorecon.simulate.config:SimConfig",
    "data": "neurorecon.data.stage:DataConfig",
    "foundation": "neurorecon.foundation.config:FoundationConfig",
    "encoding": "neurorecon.encoding.stage:EncodingConfig",
    "pretrain": "neurorecon.neuropictor.stage:PretrainConfig",
    "refine": "neurorecon.neuropictor.stage:RefineConfig",
    "language": "neurorecon.nv2l.stage:LanguageConfig",
    "reconstruction": "neurorecon.evaluation.reconstruction:ReconstructionConfig",
    "evaluation": "neurorecon.evaluation.config:EvaluationConfig",
    "figures": "neurorecon.evaluation.paper_figures:FiguresConfig",
}
SHARED = "shared"
_STAGE_FILE_KEYS = ("defaults", *PROFILES)


def config_class(section):
    """The :class:`StageConfig` subclass of a run-config section (``data``, ``foundation``, ...)."""
    import importlib

    module, name = STAGE_CONFIGS[section].split(":")
    return getattr(importlib.import_module(module), name)


def quality_checks(profile, check_results=None):
    """Whether a notebook asserts the quality of its results (losses fall, real fMRI beats shuffled, ...): in every
    profile but ``smoke`` (whose models train for seconds), unless ``check_results`` says otherwise (False for the
    plumbing runs: the dry run and the tiny full-profile chain, whose models are random or barely trained)."""
    return profile != "smoke" if check_results is None else bool(check_results)


def default_config_file():
    """The run config named by ``$NEURORECON_CONFIG`` (set by ``make reproduce CONFIG=...``), or None."""
    return os.environ.get("NEURORECON_CONFIG") or None


def config_source(cfg):
    """The user's YAML file a config was loaded with (None: the shipped defaults only)."""
    return getattr(cfg, "_source", None)


def _read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(data).__name__}")
    return data


def _mapping(data, section, source):
    part = data.get(section)
    if part is None:
        return {}
    if not isinstance(part, dict):
        raise ConfigError(f"{source}: section {section!r} must be a mapping, found {type(part).__name__}")
    if "profile" in part:
        raise ConfigError(f"{source} [{section}]: key 'profile' is not a setting: the profile is chosen by the "
                          "caller (make reproduce PROFILE=..., a notebook's profile parameter, NEURORECON_PROFILE)")
    return dict(part)


def _stage_file_sections(cls, data, source):
    """Validate every section of a per-stage file (``defaults`` and each profile merged on it); return them."""
    bad = sorted(set(data) - set(_STAGE_FILE_KEYS))
    if bad:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(bad)}; expected {', '.join(_STAGE_FILE_KEYS)}"
                          f" (a stage file), or {SHARED} and stage names (a run config)")
    sections = {s: _mapping(data, s, source) for s in _STAGE_FILE_KEYS}
    config_from_dict(cls, dict(sections["defaults"]), f"{source} [defaults]")
    for profile in PROFILES:  # every profile checked on every load: a typo in full: fails in CI, not on a cluster
        config_from_dict(cls, {**sections["defaults"], **sections[profile], "profile": profile}, f"{source} [{profile}]")
    return sections


def is_run_config(data):
    """True if a parsed YAML mapping is a run config (``shared`` and stage sections) rather than a stage file."""
    return bool(data) and set(data) <= {SHARED, *STAGE_CONFIGS} and not set(data) & set(_STAGE_FILE_KEYS)


def _field_names(cls):
    return {f.name for f in dataclasses.fields(cls)} - {"profile"}


def _run_config_values(cls, data, source, profile):
    """The values a run config gives stage ``cls``: its ``shared`` keys that ``cls`` has, then its own section.
    Every section and every shared key is validated (each section against its stage's config class)."""
    bad = sorted(set(data) - {SHARED, *STAGE_CONFIGS})
    if bad:
        raise ConfigError(f"{source}: unknown section(s) {', '.join(bad)}; a run config has '{SHARED}' and the "
                          f"stage sections {', '.join(STAGE_CONFIGS)}")
    shared = _mapping(data, SHARED, source)
    classes = {s: (cls if cls.STAGE == s else config_class(s)) for s in STAGE_CONFIGS}
    known = set().union(*(_field_names(c) for c in classes.values()))
    unknown = sorted(set(shared) - known)
    if unknown:
        raise ConfigError(f"{source} [{SHARED}]: unknown key(s) {', '.join(unknown)}: no stage has such a setting")
    mine = {}
    for section, c in classes.items():
        own = {k: v for k, v in shared.items() if k in _field_names(c)}
        own.update(_mapping(data, section, source))
        config_from_dict(c, {**own, "profile": profile}, f"{source} [{section}]")
        if c is cls:
            mine = own
    return mine


def load_config(cls, profile=None, path=None, overrides=None):
    """Load a stage config for a profile.

    Parameters
    ----------
    cls : type
        The stage's :class:`StageConfig` subclass.
    profile : str, optional
        ``smoke``, ``demo`` or ``full`` (default: ``$NEURORECON_PROFILE`` or ``demo``).
    path : str or Path, optional
        A user's YAML applied on top of the shipped one (default: ``$NEURORECON_CONFIG``, if set). Either a
        **run config** for a whole run -- a ``shared`` section whose keys apply to every stage that has a setting
        of that name (``nsd_root``, ``device``, ``dtype``, the weight paths, ...) and one section per stage
        (``data``, ``foundation``, ..., see :data:`STAGE_CONFIGS`), each a flat mapping of that stage's keys --
        or a file of the shipped per-stage shape (``defaults``/``smoke``/``demo``/``full``). Every section of
        either is validated on every load, so a typo anywhere is an error naming the file, section and key.
    overrides : dict, optional
        Last-applied values (notebook parameters, command-line flags).

    Returns
    -------
    StageConfig
        With the user's file recorded (:func:`config_source`).
    """
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
    path = path or default_config_file()
    shipped = _CONFIG_DIR / f"{cls.STAGE}.yaml"
    sections = _stage_file_sections(cls, _read_yaml(shipped), shipped)
    values = {**sections["defaults"], **sections[profile]}
    if path:
        data = _read_yaml(path)
        if is_run_config(data):
            values.update(_run_config_values(cls, data, path, profile))
        else:
            user = _stage_file_sections(cls, data, path)
            values.update({**user["defaults"], **user[profile]})
    source = path or shipped
    if overrides:
        if "profile" in overrides:
            raise ConfigError(f"{cls.STAGE} config overrides: 'profile' is not a setting (pass profile=...)")
        values.update(overrides)
        source = f"{cls.STAGE} config overrides on {source}"
    cfg = config_from_dict(cls, {**values, "profile": profile}, str(source))
    object.__setattr__(cfg, "_source", str(path) if path else None)
    return cfg
