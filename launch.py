"""Train or evaluate a jaxgen model.

    python launch.py --config=configs/vae_mnist.py:mnist_5k --workdir=runs/vae
    python launch.py --config=configs/gan_celeba.py --workdir=runs/celeba --config.data.path=/data/img_align_celeba
    python launch.py --config=configs/vae_mnist.py:smoke --workdir=/tmp/smoke --config.train.steps=40
    python launch.py --config=configs/vae_mnist.py:mnist_5k --workdir=runs/vae --mode=eval
    python launch.py --config=configs/gan_mnist.py --workdir=runs/gan_mnist --mode=sample --config.sample.num=10000

--config.<field>=value overrides any field of the config (after --config=...); --mode=eval and --mode=sample take
the training command's config and overrides. Running the same command on the same workdir resumes from the newest
checkpoint. The README lists every config, field and output.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, optionally with ':variant'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics, images and the resolved config go.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample"],
                  "train (resumes if the workdir has checkpoints), eval (the newest checkpoint -> eval.json) or "
                  "sample (the newest checkpoint -> sample.num samples as .npz and PNG grids).")
flags.DEFINE_bool("jax_distributed", False, "Call jax.distributed.initialize() first (multi-host runs).")
flags.DEFINE_bool("traceback", False, "Print the whole traceback of an error jaxgen raises on purpose (bad input, a "
                  "NaN, a missing dataset), not only its message; the workdir's log file has it either way.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with the config loaded at once and its mistakes as one FATAL line: a check jaxgen's
    config code makes (an unknown variant), a --config path that does not exist, a field the config file reads or
    sets, or an override sets, that the config lacks (ml_collections raises a bare AttributeError or KeyError, with
    a "Did you mean" only for near-typos; here the file's line or the override's block and its fields are named)."""
    try:
        rest = FLAGS(argv)
        _ = FLAGS.config.task  # ml_collections loads the file lazily: now, before any work, with a clear error
        return rest
    except flags.Error as e:  # as app.parse_flags_with_usage, but a check jaxgen's config code made is one line
        from jaxgen.training import workdir  # noqa: PLC0415

        cause = e.__cause__ or e.__context__
        while cause is not None and not (isinstance(cause, ValueError) and workdir.raised_on_purpose(cause)):
            cause = cause.__cause__ or cause.__context__
        sys.stderr.write(f"FATAL Flags parsing error: {cause}\n" if cause is not None else
                         f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    except OSError as e:  # the file could not be read (a wrong path)
        inner = e
        while (inner.__cause__ or inner.__context__) is not None:
            inner = inner.__cause__ or inner.__context__
        detail = " ".join(line.strip() for line in str(inner).splitlines() if line.strip())
        sys.stderr.write(f"FATAL Flags parsing error: cannot load the --config file ({detail}); paths are relative "
                         f"to the current directory\n")
        sys.exit(1)
    except (AttributeError, KeyError):
        from jaxgen import config as config_lib  # noqa: PLC0415

        error = sys.exc_info()[1]
        message = config_lib.config_file_error(error) or config_lib.unknown_override(argv[1:],
                                                                                      FLAGS["config"].parser.parse)
        if message is None:
            raise
        sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
        sys.exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from jaxgen import runtime  # noqa: PLC0415 (after flag parsing, before JAX starts)

    runtime.setup(distributed=FLAGS.jax_distributed, deterministic=bool(FLAGS.config.get("deterministic", False)))
    from jaxgen.training import loop, workdir  # noqa: PLC0415

    run = {"train": loop.train_and_evaluate, "eval": loop.evaluate_checkpoint, "sample": loop.sample_checkpoint}
    try:
        run[FLAGS.mode](FLAGS.config, FLAGS.workdir)
    except loop.RunStopped as e:  # SIGTERM or Ctrl-C: checkpointed and logged; the status the signal would give
        sys.exit(128 + e.signum)
    except (Exception, KeyboardInterrupt) as e:
        log_file = workdir.log_fatal(e)  # into log.txt too, not only on stderr
        if FLAGS.traceback or not workdir.raised_on_purpose(e):
            raise
        # Bad input, a NaN, a missing dataset ...: the message says what to do; the traceback would bury it.
        sys.stderr.write(f"FATAL {type(e).__name__}: {e}\n(its traceback: "
                         + (f"{log_file}, or " if log_file else "") + "rerun with --traceback)\n")
        sys.exit(1)


if __name__ == "__main__":
    from jaxgen import runtime  # light: no JAX yet

    runtime.console_logging()  # the config's own warnings, while the flags are parsed, in jaxgen's format
    app.run(main, flags_parser=parse_flags)
