"""The project's setup: a lean core with extras, dependency lists that agree, the core working without
the extras, and timm working through the compat shim."""

import os
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _names(requirements):
    """Distribution names (lower-case, '-' normalized) from requirement strings."""
    return {re.split(r"[<>=!~\[ ;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _project() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


EXTRAS = {"notebooks", "test", "hub"}


def test_environment_yml_lists_the_core_and_every_extra():
    project = _project()
    wanted = _names(project["dependencies"]).union(*(_names(v) for v in project["optional-dependencies"].values()))
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]  # the pip list is the last block of the file
    pip_lines = re.findall(r"^\s+- (.+)$", pip_section, re.M)
    listed = _names(line for line in pip_lines if not line.startswith("-e"))
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert "python=3.11" in text and "conda-forge" in text


def test_the_core_is_lean_and_the_extras_hold_the_rest():
    project = _project()
    core, extras = _names(project["dependencies"]), project["optional-dependencies"]
    assert set(extras) == EXTRAS
    assert {"torch", "numpy", "scipy", "timm", "safetensors", "plotly", "ipywidgets", "tqdm"} <= core
    heavy = {"jupyterlab", "nbval", "nbconvert", "pytest", "jupytext", "import-linter", "transformers", "pyarrow"}
    assert not core & heavy, f"in the core: {core & heavy}"
    assert {"jupyterlab"} <= _names(extras["notebooks"])
    assert {"pytest", "nbval", "nbconvert", "import-linter"} <= _names(extras["test"])
    assert {"transformers", "huggingface-hub", "pyarrow"} <= _names(extras["hub"])
    makefile = (ROOT / "Makefile").read_text()
    assert '-e ".[notebooks,test,hub]"' in makefile, "make setup installs every extra"


# A subprocess in which the extras' packages (and scikit-learn, which the core no longer lists) cannot
# be imported: the core must still import, merge, build the zoo's ViT, run the toy demo and build figures.
# (huggingface_hub comes with timm; it is blocked all the same, to show the core never needs it.)
_BLOCKED = ("jupyterlab", "jupyter_server", "nbval", "nbconvert", "nbclient", "jupytext", "importlinter", "pytest",
            "_pytest", "transformers", "huggingface_hub", "pyarrow", "sklearn", "playwright")
_CORE_ONLY = """
import sys
BLOCKED = sys.argv[1].split(",")
for name in BLOCKED:  # None in sys.modules: `import name` raises ImportError, importlib.util.find_spec gives None
    sys.modules[name] = None
"""
_CORE_ONLY += """
for name in BLOCKED:  # the block bites
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise AssertionError(f"{name} could be imported")
import torch
import swudi_lab
from swudi_lab.merge import merge
g = torch.Generator().manual_seed(0)
base = {"block.weight": torch.randn(6, 5, generator=g), "block.bias": torch.randn(6, generator=g)}
experts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
result = merge(base, experts, "swudi", kappa=13.5, progress=False, device="cpu")
assert result.state_dict["block.weight"].shape == (6, 5)
import timm
from swudi_lab.zoo import BackboneConfig, make_backbone
with torch.no_grad():
    assert make_backbone(BackboneConfig())(torch.zeros(2, 3, 32, 32)).shape[0] == 2
from swudi_lab.toy.demo import run_toy_demo
rows = run_toy_demo(n=16)
assert rows
from swudi_lab import viz
from swudi_lab.spectral import exponential, tikhonov
figs = [viz.filter_factors_figure({"exponential": exponential(300.0), "tikhonov": tikhonov(1 / 300)}),
        viz.accuracy_bar_figure({"swudi": [70.0, 71.0], "average": [60.0]}, base=50.0, experts=90.0),
        viz.pareto_figure({"swudi": (0.3, 72.0), "wudi": (2.5, 72.5)})]
assert all(type(f).__name__ == "Figure" for f in figs)
leaked = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print("core ok", len(rows))
"""


def test_the_core_works_without_the_extras():
    """``import swudi_lab``, a merge, the toy demo and figures, with every extra's package unimportable."""
    run = subprocess.run([sys.executable, "-c", _CORE_ONLY, ",".join(_BLOCKED)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "core ok" in run.stdout


def test_constraints_pin_torch_and_setup_uses_them():
    assert re.search(r"^torch==\d+\.\d+\.\d+$", (ROOT / "constraints.txt").read_text(), re.M)
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_timm_vit_builds_without_pretrained_weights():
    import torch

    import swudi_lab  # noqa: F401  (the shim runs before timm)
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, num_classes=7)
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 7)


def test_compat_shim_is_a_no_op_when_ops_exist():
    import swudi_lab.torchvision_compat as compat

    # After the first import the ops exist (declared by the shim or registered by torchvision):
    # a second call must not declare anything again.
    assert compat.ensure_torchvision_ops() == []


def test_import_timm_in_a_fresh_interpreter():
    code = "import swudi_lab, timm; print(timm.__version__)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_console_script_is_declared():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["swudi-lab"] == "swudi_lab.cli:main"
