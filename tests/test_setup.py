"""The project's setup: dependency lists agree, and timm works through the compat shim."""

import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def _names(requirements):
    """Distribution names (lower-case, '-' normalized) from requirement strings."""
    return {re.split(r"[<>=!~\[ ;]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_environment_yml_lists_the_pyproject_dependencies():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"])
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:", 1)[1]  # the pip list is the last block of the file
    pip_lines = re.findall(r"^\s+- (.+)$", pip_section, re.M)
    listed = _names(line for line in pip_lines if not line.startswith("-e"))
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert "python=3.11" in text and "conda-forge" in text


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
