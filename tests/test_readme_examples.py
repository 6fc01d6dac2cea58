"""The README's `myproject/*.py` examples, taken from README.md as written, train with the settings it shows."""

import json
import re
import sys
from pathlib import Path

import pytest

from jaxgen.training import loop
from tests.conftest import CONFIGS, config_module

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def myproject(tmp_path, monkeypatch):
    """tmp_path/myproject/ holding every ```python block of the README headed `# myproject/<name>.py`, importable as
    the README runs them (PYTHONPATH=. in the checkout, so `configs` imports too)."""
    blocks = re.findall(r"```python\n# (myproject/\w+\.py)\n(.*?)```", README.read_text(), flags=re.S)
    assert {name for name, _ in blocks} == {"myproject/losses.py", "myproject/vae_free_bits.py",
                                            "myproject/gan_losses.py", "myproject/regs.py", "myproject/extract.py"}
    for name, code in blocks:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(CONFIGS.parent))
    yield tmp_path / "myproject"
    for mod in [m for m in sys.modules if m == "myproject" or m.startswith("myproject.")]:
        del sys.modules[mod]


def _tiny(c, steps=2):
    c.unlock()
    c.train.steps, c.train.log_every, c.checkpoint.every, c.eval.every = steps, 1, steps, 0
    c.output.progress = c.output.plots = False
    return c


def test_the_free_bits_objective_and_its_config_train(myproject, tmp_path, one_device):
    c = _tiny(config_module(myproject / "vae_free_bits.py").get_config("smoke"))
    c.eval.extractors = ()
    assert c.objective.name == "myproject.losses:free_bits_elbo" and c.objective.free_bits == 0.25
    final = loop.train_and_evaluate(c, tmp_path / "fb")
    assert final["elbo"] < 0
    train = [json.loads(line) for line in (tmp_path / "fb" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kl_weight"] for r in train if r["split"] == "train"] == pytest.approx([0.0, 0.001])  # step / 1000
    module = config_module(myproject / "vae_free_bits.py")
    assert module.get_config("smoke,strong").objective.free_bits == 1.0  # the file's own variant, after smoke
    assert module.get_config("").data.name == "mnist"  # the shipped config's default dataset
    with pytest.raises(ValueError, match=r"unknown config variant 'strog'; choices: btcvae, conditional, fashion, "
                                         r"infovae, iwae, mnist_5k, smoke, strong, vamp"):
        module.get_config("strog")


def test_the_gan_loss_regularizer_and_extractor_examples_train(myproject, tmp_path, one_device):
    c = _tiny(config_module(CONFIGS / "gan_mnist.py").get_config("smoke"))
    c.loss.name, c.reg.name, c.reg.weight, c.model.d_norm = ("myproject.gan_losses:relativistic_average_ls",
                                                             "myproject.regs:r2", 10.0, "none")
    c.eval.extractors = ("classifier", "myproject.extract:pooled")
    c.checkpoint.best_metric = "myproject.extract:pooled/fid"
    final = loop.train_and_evaluate(c, tmp_path / "gan")
    assert final["sample_quality"]["myproject.extract:pooled"]["fid"] > 0
    train = [json.loads(line) for line in (tmp_path / "gan" / "metrics.jsonl").read_text().splitlines()
             if '"split": "train"' in line]
    assert all("relativistic_gap" in r and "r2_grad_sq" in r for r in train)
    best = json.loads((tmp_path / "gan" / "best" / "best.json").read_text())
    assert best["metric"] == "myproject.extract:pooled/fid"
