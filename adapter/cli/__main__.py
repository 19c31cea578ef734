"""``python -m adapter.cli``: the ``miso-adapter`` program."""

from adapter.cli import run

if __name__ == "__main__":  # pragma: no cover
    run()
