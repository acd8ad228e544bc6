"""The ``zoo`` command line, one module per command: ``plugins``, ``train``, ``sample``, ``bench``,
``edit``, and the weights in and out (``import-edm``, ``import-openai``, ``export``,
``import-safetensors``); what they share is in :mod:`zoo.cli.common`. Importing the package
registers every command on :func:`main`."""

from zoo.cli import (  # noqa: F401 - registers the commands
    bench,
    edit,
    import_export,
    plugins,
    sample,
    train,
    tune,
)
from zoo.cli.bench import training_jobs
from zoo.cli.common import main

__all__ = ["main", "training_jobs"]
