"""Where swudi_lab reads and writes (swudi_lab.config.paths): environment first, read at call time."""

from pathlib import Path

import pytest

from swudi_lab.config import paths

ROOT = Path(__file__).resolve().parents[1]
VARS = (paths.ENV_DATA, paths.ENV_CACHE, paths.ENV_RESULTS, paths.ENV_DOWNLOADS)


@pytest.fixture
def clean_env(monkeypatch):
    for v in VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_checkout_defaults(clean_env):
    assert paths.checkout_root() == ROOT
    assert paths.data_dir() == ROOT / "data"
    assert paths.pretrained_dir() == ROOT / "data" / "pretrained"
    assert paths.release_dir() == ROOT / "data" / "zoo_release"
    assert paths.tasks_cache_dir() == ROOT / "data" / "cache" / "tasks"
    assert paths.zoo_dir() == ROOT / "data" / "zoo"
    assert paths.results_dir() == Path("results") and paths.demo_results_dir() == Path("results/demo")
    assert paths.bench_results_dir() == Path("results/bench")


def test_environment_wins_and_is_read_at_call_time(clean_env, tmp_path):
    clean_env.setenv(paths.ENV_DATA, str(tmp_path / "d"))
    assert paths.pretrained_dir() == tmp_path / "d" / "pretrained"
    assert paths.zoo_dir() == tmp_path / "d" / "zoo"  # the cache follows an explicit data directory
    clean_env.setenv(paths.ENV_CACHE, str(tmp_path / "c"))
    clean_env.setenv(paths.ENV_RESULTS, str(tmp_path / "r"))
    clean_env.setenv(paths.ENV_DOWNLOADS, str(tmp_path / "tv"))
    assert paths.zoo_dir() == tmp_path / "c"
    assert paths.demo_results_dir() == tmp_path / "r" / "demo"
    assert paths.downloads_dir() == tmp_path / "tv"
    clean_env.setenv(paths.ENV_CACHE, "")  # empty counts as unset
    assert paths.zoo_dir() == tmp_path / "d" / "zoo"


def test_outside_a_checkout_the_platform_directories(clean_env, tmp_path):
    clean_env.setattr(paths, "_PACKAGE", tmp_path / "site-packages" / "swudi_lab")
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.checkout_root() is None
    assert paths.data_dir() == tmp_path / "share" / "swudi_lab"
    assert paths.zoo_dir() == tmp_path / "cache" / "swudi_lab" / "zoo"
    assert paths.downloads_dir() == tmp_path / "cache" / "swudi_lab" / "torchvision"


def test_the_zoo_follows_the_environment(clean_env, tmp_path):
    from swudi_lab.zoo import ZooCacheError, load_zoo

    clean_env.setenv(paths.ENV_DATA, str(tmp_path / "data"))  # no release pack there
    clean_env.setenv(paths.ENV_CACHE, str(tmp_path / "zoo"))
    with pytest.raises(ZooCacheError, match=str(tmp_path / "zoo" / "seed3")):
        load_zoo(seed=3)
    assert paths.data_dir() == tmp_path / "data"
