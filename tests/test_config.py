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
    assert cfg.subjects == ([1, 2] if profile == "smoke" else [1, 2, 5, 7] if profile == "full" else list(range(1, 9)))
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
    assert (cfg.sim_seed, cfg.nsd_root, cfg.image_size, cfg.subjects) == (5, "/data/nsd", 128, [1, 2, 5, 7])
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
