"""Train or evaluate a jaxgen model.

    python launch.py --config=configs/vae_mnist.py:mnist_5k --workdir=runs/vae
    python launch.py --config=configs/gan_celeba.py --workdir=runs/celeba --config.data.path=/data/img_align_celeba
    python launch.py --config=configs/vae_mnist.py:smoke --workdir=/tmp/smoke --config.train.steps=40
    python launch.py --config=configs/vae_mnist.py --workdir=runs/vae --mode=eval
    python launch.py --config=configs/gan_mnist.py --workdir=runs/gan_mnist --mode=sample --config.sample.num=10000

Running the same command on the same workdir resumes from the newest checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':variant'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, images and the resolved config go.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"],
                  "train (resumes if the workdir has checkpoints), eval (the newest checkpoint -> eval.json) or "
                  "sample (the newest checkpoint -> sample.num samples as .npz and PNG grids).")
flags.DEFINE_bool("jax_distributed", False, "Call jax.distributed.initialize() first (multi-host runs).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from jaxgen import runtime  # noqa: PLC0415 (after flag parsing, before JAX starts)

    runtime.setup(distributed=FLAGS.jax_distributed)
    from jaxgen.training import loop  # noqa: PLC0415

    run = {"train": loop.train_and_evaluate, "eval": loop.evaluate_checkpoint, "sample": loop.sample_checkpoint}
    run[FLAGS.mode](FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
