"""Deliver engines: a bundle (engine + manifest.json), a verified copy on disk, a Triton model repository.

Every path out of the store checks the engine's sha256 while it streams, so a corrupt or
missing artifact is an error, never a silently broken deployment. Nothing here imports
`workers`: the dashboard builds its downloads with these functions.

- errors: ExportError (one line and an exit status) and `writing` (an OSError as one);
- folders: --out and the folders under it: a stored name refused when it would leave them, a failed delivery
  leaving no folder half-made or empty;
- engines: a stored build as delivery sees it (StoredEngine) and the manifest a bundle carries;
- streaming: the engine's bytes out of the store, checked against its sha256 as they go by;
- picking: which build `farm pull` hands out (the pick rules);
- triton: a Triton model repository of the winners, with its config.pbtxt.
"""

# What callers imported from farm.results.delivery when it was one module; new code may name the module.
from farm.results.delivery.engines import ENGINE_SUFFIX, StoredEngine, bundle_manifest, check_stored, load_engine
from farm.results.delivery.errors import ExportError, writing
from farm.results.delivery.folders import safe_folder
from farm.results.delivery.picking import pick_build, pick_key
from farm.results.delivery.streaming import artifact_problem, engine_bundle, engine_bytes, write_engine
from farm.results.delivery.triton import ORT_GRAPH_LEVELS, config_pbtxt, max_batch_size, runtime_options, triton_repository

__all__ = [
    "ENGINE_SUFFIX", "ORT_GRAPH_LEVELS", "ExportError", "StoredEngine", "artifact_problem", "bundle_manifest", "check_stored",
    "config_pbtxt", "engine_bundle",
    "engine_bytes", "load_engine", "max_batch_size", "pick_build", "pick_key", "runtime_options", "safe_folder", "triton_repository",
    "write_engine", "writing",
]
