"""Released checkpoints as zoo runs, one module per source: EDM's pickles (:mod:`.edm`, through the
restricted unpickler of :mod:`.unpickle`: nothing in a file is executed) and openai's
consistency-model checkpoints: PyTorch (:mod:`.openai`) and the paper's CIFAR-10 Flax files
(:mod:`.openai_jax`, read as msgpack without JAX); :mod:`.runs` writes what all import."""

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
from zoo.importers.openai_jax import (
    JAX_DOWNLOADS,
    JAX_PRESETS,
    JaxPreset,
    import_jax_run,
    ncsnpp_state_dict,
    read_flax_checkpoint,
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
    "ADM_IMAGENET64", "ADM_LSUN256", "EDM_DOWNLOADS", "JAX_DOWNLOADS", "JAX_PRESETS",
    "OPENAI_DOWNLOADS", "OPENAI_PRESETS", "EDMNetwork", "ImportFileError", "JaxPreset",
    "OpenAIPreset", "RestrictedUnpickler", "UnsafePickleError",
    "dataset_record", "import_edm_run", "import_jax_run", "import_openai_run", "karras_sigma",
    "load_openai_state_dict", "load_strict", "ncsnpp_state_dict", "read_edm_pickle",
    "read_flax_checkpoint", "restricted_load",
    "save_weights_run", "sha256_file", "write_imported_run",
]
