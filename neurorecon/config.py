"""One config dataclass per stage, loaded from YAML with profiles ``smoke``, ``demo`` and ``full``.

Every stage's YAML file ships in ``neurorecon/configs/<stage>.yaml`` and has the shape::

    defaults:        # values shared by every profile
      key: value
    smoke: {...}     # overrides for the smoke profile (CI)
    demo: {...}      # overrides for the demo profile (laptop CPU, NSD-mini)
    full: {...}      # overrides for the full profile (real NSD, real weights, GPUs)

Unknown keys and values of the wrong type are errors that name the file and the key.
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

__all__ = ["PROFILES", "StageConfig", "load_config", "config_from_dict", "default_profile"]

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

    profile: str = "demo"

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_yaml(self):
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    def digest(self):
        """A short hash of the resolved values: a stage is 'complete with the same config' when it matches."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
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


def load_config(cls, profile=None, path=None, overrides=None):
    """Load a stage config for a profile.

    Parameters
    ----------
    cls : type
        The stage's :class:`StageConfig` subclass.
    profile : str, optional
        ``smoke``, ``demo`` or ``full`` (default: ``$NEURORECON_PROFILE`` or ``demo``).
    path : str or Path, optional
        A YAML file of the same shape as the shipped one, applied on top of it (a user's own settings,
        for example the local paths of real NSD and real weights).
    overrides : dict, optional
        Last-applied values (notebook parameters, command-line flags).

    Returns
    -------
    StageConfig
    """
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
    shipped = _CONFIG_DIR / f"{cls.STAGE}.yaml"
    values = {}
    for source in [shipped] + ([Path(path)] if path else []):
        data = _read_yaml(source)
        bad = sorted(set(data) - {"defaults", *PROFILES})
        if bad:
            raise ConfigError(
                f"{source}: unknown top-level key(s) {', '.join(bad)}; expected defaults, {', '.join(PROFILES)}"
            )
        for section in ("defaults", profile):
            part = data.get(section) or {}
            if not isinstance(part, dict):
                raise ConfigError(f"{source}: section {section!r} must be a mapping")
            config_from_dict(cls, {**values, **part, "profile": profile}, f"{source} [{section}]")
            values.update(part)
    values.update(overrides or {})
    values["profile"] = profile
    return config_from_dict(cls, values, f"{cls.STAGE} config overrides" if overrides else str(shipped))
