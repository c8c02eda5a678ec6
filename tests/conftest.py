import os
import shutil
import subprocess
from pathlib import Path

import pytest

# As app.py does for the server, before torch is first imported: idle OpenMP threads sleep instead of spinning. On a
# shared 2-core machine a tiny ablation trained in-process took 219 s with spinning threads and 15 s without.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CHROMIUM = "/usr/bin/chromium"


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped when torch.cuda.is_available() is False)")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (browser test, kaleido PNG/SVG): installed with apt when missing and we are root,
    else the test is skipped with the reason."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{CHROMIUM} is missing and cannot be installed here (needs root and apt-get)")
    try:
        subprocess.run(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
            shell=True,
            check=True,
            timeout=600,
            capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"could not install chromium: {type(e).__name__}")
    if not Path(CHROMIUM).exists():
        pytest.skip("apt-get installed no /usr/bin/chromium")
    return CHROMIUM
