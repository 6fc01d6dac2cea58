"""Train or evaluate a jaxgen model.

    python launch.py --config=configs/vae_mnist.py:mnist_5k --workdir=runs/vae
    python launch.py --config=configs/gan_celeba.py --workdir=runs/celeba --config.data.path=/data/img_align_celeba
    python launch.py --config=configs/vae_mnist.py:smoke --workdir=/tmp/smoke --config.train.steps=40
    python launch.py --workdir=runs/vae --mode=eval
    python launch.py --workdir=runs/gan_mnist --mode=sample --config.sample.num=10000

--config.<field>=value overrides any field of the config (after --config=...). A command without --config takes
the config and overrides of the workdir's last training command (<workdir>/command.json), with its own overrides on
top. Running the same command on the same workdir resumes from the newest checkpoint. The README lists every config,
field and output.
"""

import functools
import sys

from absl import app, flags
from ml_collections import config_flags

from jaxgen import cli, runtime  # light: no JAX yet (jaxgen.cli.run sets it up)

FLAGS = flags.FLAGS
cli.check_flagfiles(FLAGS, sys.argv)  # before --config's definition reads them
config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':variant'; without it, the workdir's "
                                "last training command's (its command.json).", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, images and the resolved config go.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"],
                  "train (resumes if the workdir has checkpoints), eval (the newest checkpoint -> eval.json) or "
                  "sample (the newest checkpoint -> sample.num samples as .npz and PNG grids).")
flags.DEFINE_bool("jax_distributed", False, "Call jax.distributed.initialize() first (multi-host runs).")
flags.DEFINE_bool("traceback", False, "Print the whole traceback of an error jaxgen raises on purpose (bad input, a "
                  "NaN, a missing dataset), not only its message; the workdir's log file has it either way.")
flags.mark_flags_as_required(["workdir"])  # --config: without it, the workdir's last training command's


def main(argv):
    cli.run(FLAGS, argv)


if __name__ == "__main__":
    runtime.console_logging()  # the config's own warnings, while the flags are parsed, in jaxgen's format
    app.run(main, flags_parser=functools.partial(cli.parse_flags, FLAGS))
