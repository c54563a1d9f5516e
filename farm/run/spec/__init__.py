"""The sweep spec, by concern: `schema` (the pydantic models and their validators), `loading` (a YAML
file into a valid spec, or one line naming the file and field), `checks` (the files a spec names and
the memory it would need, checked before any work), `errors` (SpecError and its one-line text).

The names below are the ones callers use; import from the module itself where that reads better.
"""

from farm.run.spec.checks import check_inputs, content_digest, model_batch_sizes, resource_problem
from farm.run.spec.errors import SpecError, one_line
from farm.run.spec.loading import describe_error, load_spec
from farm.run.spec.schema import Axes, ModelSpec, SweepSpec

__all__ = ["Axes", "ModelSpec", "SpecError", "SweepSpec", "check_inputs", "content_digest", "describe_error",
           "load_spec", "model_batch_sizes", "one_line", "resource_problem"]
