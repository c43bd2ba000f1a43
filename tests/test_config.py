import dataclasses
from typing import Optional

import pytest

from neurorecon.config import PROFILES, StageConfig, config_from_dict, default_profile, load_config
from neurorecon.data.stage import DataConfig
from neurorecon.errors import ConfigError


@dataclasses.dataclass
class ToyConfig(StageConfig):
    STAGE = "data"
    nsd_root: Optional[str] = None
    simulate: bool = True
    sim_seed: int = 0
    betas_format: str = "hdf5"
    subjects: list[int] = dataclasses.field(default_factory=list)
    coco_root: Optional[str] = None
    flatmap: Optional[str] = None
    image_size: Optional[int] = None
    manifest: Optional[str] = None


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_profiles_load(profile):
    cfg = load_config(DataConfig, profile)
    assert cfg.profile == profile
    assert cfg.subjects == ([1, 2] if profile == "smoke" else list(range(1, 9)))  # full: NeuroPictor pretrains on 8
    assert cfg.simulate is (profile != "full")


def test_unknown_key_names_file_and_key(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("demo:\n  subjetcs: [1]\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml.*subjetcs"):
        load_config(DataConfig, "demo", path=user)


def test_wrong_type_is_rejected(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("defaults:\n  sim_seed: 'zero'\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml \[defaults\]: key .sim_seed. expected a value of type int"):
        load_config(DataConfig, "demo", path=user)
    with pytest.raises(ConfigError, match="subjects"):
        config_from_dict(ToyConfig, {"subjects": [1, "two"]})
    with pytest.raises(ConfigError, match="simulate"):
        config_from_dict(ToyConfig, {"simulate": 1})


def test_unknown_section_and_profile(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("prod:\n  sim_seed: 1\n")
    with pytest.raises(ConfigError, match="prod"):
        load_config(DataConfig, "demo", path=user)
    with pytest.raises(ConfigError, match="unknown profile"):
        load_config(DataConfig, "huge")


def test_user_file_and_overrides_apply_in_order(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("defaults:\n  sim_seed: 5\nfull:\n  nsd_root: /data/nsd\n")
    cfg = load_config(DataConfig, "full", path=user, overrides={"image_size": 128})
    assert (cfg.sim_seed, cfg.nsd_root, cfg.image_size, cfg.subjects) == (5, "/data/nsd", 128, list(range(1, 9)))
    assert load_config(DataConfig, "demo", path=user).nsd_root is None


def test_digest_tracks_values():
    a, b = load_config(DataConfig, "demo"), load_config(DataConfig, "demo", overrides={"sim_seed": 1})
    assert a.digest() == load_config(DataConfig, "demo").digest()
    assert a.digest() != b.digest()


def test_default_profile_from_environment(monkeypatch):
    assert default_profile() == "demo"
    monkeypatch.setenv("NEURORECON_PROFILE", "smoke")
    assert load_config(DataConfig).profile == "smoke"
    monkeypatch.setenv("NEURORECON_PROFILE", "nope")
    with pytest.raises(ConfigError, match="NEURORECON_PROFILE"):
        default_profile()


# --- one run config for a whole run ---------------------------------------------------------------------------------
from neurorecon.config import STAGE_CONFIGS, config_class, config_source  # noqa: E402

RUN = """
shared:
  nsd_root: /data/nsd
  device: cuda
  dtype: bfloat16
  sd_path: /models/sd21
data:
  subjects: [1, 2, 3, 4, 5, 6, 7, 8]
foundation:
  llm_path: /models/llama
pretrain:
  steps: 7
"""


def test_run_config_gives_each_stage_its_section_and_the_shared_keys_it_has(tmp_path):
    run = tmp_path / "my_run.yaml"
    run.write_text(RUN)
    data = load_config(DataConfig, "full", path=run)
    assert (data.nsd_root, data.subjects) == ("/data/nsd", [1, 2, 3, 4, 5, 6, 7, 8])
    assert config_source(data) == str(run)
    found = load_config(config_class("foundation"), "full", path=run)
    assert (found.device, found.dtype, found.sd_path, found.llm_path) == ("cuda", "bfloat16", "/models/sd21",
                                                                          "/models/llama")
    pre = load_config(config_class("pretrain"), "full", path=run)
    assert pre.steps == 7 and not hasattr(pre, "nsd_root")  # a shared key goes only where it is a setting
    # the shipped per-profile values still apply below the run config
    assert load_config(config_class("pretrain"), "smoke", path=run).steps == 7
    assert load_config(config_class("refine"), "full", path=run).digest() == \
        load_config(config_class("refine"), "full").digest()


@pytest.mark.parametrize("text, match", [
    ("pretrain:\n  stpes: 3\n", r"my_run\.yaml \[pretrain\]: unknown key\(s\) stpes"),
    ("shared:\n  nsd_rot: /x\n", r"my_run\.yaml \[shared\]: unknown key\(s\) nsd_rot"),
    ("pretrian:\n  steps: 3\n", r"my_run\.yaml: unknown top-level key\(s\) pretrian"),
    ("shared:\n  dtype: 16\n", r"my_run\.yaml \[foundation\]: key 'dtype' expected a value of type str"),
    ("refine:\n  profile: demo\n", r"my_run\.yaml \[refine\]: key 'profile' is not a setting"),
    ("data: [1, 2]\n", r"my_run\.yaml: section 'data' must be a mapping"),
])
def test_run_config_errors_name_file_section_and_key(tmp_path, text, match):
    run = tmp_path / "my_run.yaml"
    run.write_text(text)
    with pytest.raises(ConfigError, match=match):  # whichever stage loads it: every section is checked
        load_config(DataConfig, "demo", path=run)


def test_every_profile_section_is_validated_on_every_load(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("demo:\n  sim_seed: 1\nfull:\n  nsd_roots: /data\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml \[full\]: unknown key\(s\) nsd_roots"):
        load_config(DataConfig, "demo", path=user)  # a typo in full: fails in a demo run too
    user.write_text("smoke:\n  profile: full\n")
    with pytest.raises(ConfigError, match=r"\[smoke\]: key 'profile' is not a setting"):
        load_config(DataConfig, "smoke", path=user)


@pytest.mark.parametrize("section", list(STAGE_CONFIGS))
@pytest.mark.parametrize("profile", PROFILES)
def test_every_shipped_config_loads_in_every_profile(section, profile):
    cls = config_class(section)
    assert cls.STAGE == section
    cfg = load_config(cls, profile)
    assert cfg.profile == profile and config_source(cfg) is None


def test_neurorecon_config_environment_variable_is_the_default_file(tmp_path, monkeypatch):
    run = tmp_path / "env_run.yaml"
    run.write_text("data:\n  sim_seed: 3\n")
    monkeypatch.setenv("NEURORECON_CONFIG", str(run))
    assert load_config(DataConfig, "demo").sim_seed == 3
    monkeypatch.delenv("NEURORECON_CONFIG")
    assert load_config(DataConfig, "demo").sim_seed == 0


@pytest.mark.parametrize("section", list(STAGE_CONFIGS))
def test_dataclass_defaults_are_the_shipped_yaml_defaults(section):
    """A config built in code (``Cls()``) means what the shipped YAML's ``defaults`` section says."""
    import yaml as _yaml

    from neurorecon.config import _CONFIG_DIR

    cls = config_class(section)
    shipped = _yaml.safe_load((_CONFIG_DIR / f"{section}.yaml").read_text()).get("defaults") or {}
    made = cls().to_dict()
    differ = {k: (made[k], v) for k, v in shipped.items()
              if (list(made[k]) if isinstance(made[k], tuple) else made[k]) != v}
    assert not differ, f"{cls.__name__}: dataclass default vs {section}.yaml defaults: {differ}"
