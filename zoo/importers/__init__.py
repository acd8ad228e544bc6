"""Released checkpoints as zoo runs, one module per source: EDM's pickles (:mod:`.edm`, through the
restricted unpickler of :mod:`.unpickle`: nothing in a file is executed) and openai's
consistency-model checkpoints (:mod:`.openai`); :mod:`.runs` writes what both import."""

from zoo.files import UnsafePickleError, sha256_file
from zoo.importers.edm import (
    EDM_DOWNLOADS,
    EDMNetwork,
    import_edm_run,
    read_edm_pickle,
    restricted_load,
)
from zoo.importers.openai import (
    ADM_IMAGENET64,
    ADM_LSUN256,
    OPENAI_DOWNLOADS,
    OPENAI_PRESETS,
    OpenAIPreset,
    import_openai_run,
    karras_sigma,
    load_openai_state_dict,
)
from zoo.importers.runs import (
    ImportFileError,
    dataset_record,
    load_strict,
    save_weights_run,
    write_imported_run,
)
from zoo.importers.unpickle import RestrictedUnpickler

__all__ = [
    "ADM_IMAGENET64", "ADM_LSUN256", "EDM_DOWNLOADS", "OPENAI_DOWNLOADS", "OPENAI_PRESETS",
    "EDMNetwork", "ImportFileError", "OpenAIPreset", "RestrictedUnpickler", "UnsafePickleError",
    "dataset_record", "import_edm_run", "import_openai_run", "karras_sigma",
    "load_openai_state_dict", "load_strict", "read_edm_pickle", "restricted_load",
    "save_weights_run", "sha256_file", "write_imported_run",
]
