"""Every test runs on 8 faked CPU devices, so the sharded paths are exercised on a laptop."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
from jaxgen import runtime  # noqa: E402

runtime.setup()

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxgen import config as config_lib  # noqa: E402


@pytest.fixture
def smoke_config():
    """configs/vae_mnist.py:smoke, unlocked copy with no progress bar and no plots."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vae_mnist_cfg", os.path.join(os.path.dirname(__file__), "..",
                                                                                "configs", "vae_mnist.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config("smoke")
    c.unlock()
    c.output.progress = False
    c.output.plots = False
    return c


def pytest_report_header(config):
    return f"jax {jax.__version__}, {jax.device_count()} devices ({jax.devices()[0].platform})"


__all__ = ["config_lib"]
