"""The Runner base (workers/backends/base.py) through a real runner: ONNX Runtime on a tiny model, no mocks.

The base owns activation, the guard against use outside `with` and the checks of feeds; these
tests hold it to that through OnnxRuntimeRunner, the one runner every machine can run.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from workers.backends.base import Feeds
from workers.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeRunner
from workers.structs import BuildRequest, Engine, ModelRef, Target, TensorSpec

SHAPE = ("batch", 3, "width")  # width is dynamic: any size goes


def model() -> bytes:
    """z = x + y, both float32 of SHAPE."""
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(SHAPE)) for name in ("x", "y")]
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, list(SHAPE))
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add", inputs, [z])
    return bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


@pytest.fixture(scope="module")
def engine() -> Engine:
    request = BuildRequest(ModelRef("add", "add.onnx", None, (3, 4)), "fp32", "onnxruntime", {}, Target("cpu", "any"), (2,))
    return OnnxRuntimeBackend().build(request, model(), None)


def feeds(batch: int = 2, width: int = 4, **changes: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal((batch, 3, width)).astype(np.float32) for name in ("x", "y")}
    return arrays | changes


def test_the_manifest_describes_the_inputs(engine: Engine) -> None:
    assert engine.manifest.inputs == [TensorSpec("x", SHAPE, "float32"), TensorSpec("y", SHAPE, "float32")]


def test_runs_inside_with_at_any_batch_and_dynamic_width(engine: Engine) -> None:
    with OnnxRuntimeBackend().open(engine.data, engine.manifest) as runner:
        assert runner.is_active
        for batch, width in ((2, 4), (5, 7)):
            given = feeds(batch, width)
            (z,) = runner.infer(given)
            np.testing.assert_allclose(z, given["x"] + given["y"])
        step = runner.prepare(feeds(), data_transfers=False)  # nothing to copy on the CPU: the same step
        step()
        runner.synchronize()
        assert runner.gpu_timer() is None
    assert not runner.is_active


@pytest.mark.parametrize("call", ["infer", "prepare"])
def test_use_outside_with_is_one_error_naming_the_runner(engine: Engine, call: str) -> None:
    runner = OnnxRuntimeBackend().open(engine.data, engine.manifest)
    message = rf"^OnnxRuntimeRunner\.{call}\(\) called outside `with runner:`: the engine is not open$"
    with pytest.raises(RuntimeError, match=message):
        getattr(runner, call)(feeds())
    with runner:
        getattr(runner, call)(feeds())
    with pytest.raises(RuntimeError, match=message):  # after the `with`, as before it
        getattr(runner, call)(feeds())


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (feeds(w=np.zeros((2, 3, 4), np.float32)), "no input named 'w'; the engine's inputs: 'x', 'y'"),
        ({"x": feeds()["x"]}, "input 'y' is missing; the engine's inputs: 'x', 'y'"),
        (feeds(y=np.zeros((2, 3, 4), np.float64)), "input 'y' is float64; the engine takes float32"),
        (feeds(x=np.zeros((2, 5, 4), np.float32)), "input 'x' has shape (2, 5, 4): axis 1 must be 3 (the engine takes ('batch', 3, 'width'))"),
        (feeds(x=np.zeros((2, 3), np.float32)), "input 'x' has shape (2, 3), 2 axes; the engine takes ('batch', 3, 'width')"),
    ],
    ids=["unknown-name", "missing", "dtype", "non-batch-dim", "rank"],
)
@pytest.mark.parametrize("call", ["infer", "prepare"])
def test_bad_feeds_are_one_line_errors_naming_the_tensor(engine: Engine, given: Feeds, message: str, call: str) -> None:
    with OnnxRuntimeBackend().open(engine.data, engine.manifest) as runner:
        with pytest.raises(ValueError) as caught:
            getattr(runner, call)(given)
        assert str(caught.value) == f"OnnxRuntimeRunner: {message}"
        assert runner.infer(feeds())  # the runner is still usable after a refused feed


def test_exit_runs_when_the_body_raises(engine: Engine) -> None:
    runner = OnnxRuntimeBackend().open(engine.data, engine.manifest)
    with pytest.raises(KeyError, match="from the body"):
        with runner:
            runner.infer(feeds())
            raise KeyError("from the body")
    assert not runner.is_active and runner._session is None
    with runner:  # closed cleanly: it opens again
        assert runner.infer(feeds())


def test_entering_an_active_runner_again_is_refused(engine: Engine) -> None:
    with OnnxRuntimeBackend().open(engine.data, engine.manifest) as runner:
        with pytest.raises(RuntimeError, match="OnnxRuntimeRunner is already active"):
            with runner:
                pass
        assert runner.is_active  # the refused entry did not close the open one
        assert runner.infer(feeds())


class FailsAfterTheSession(OnnxRuntimeRunner):
    """Opens its session, then fails: what a runner with a second resource does when that one cannot be made."""

    def __init__(self, *args: object, cleanup_fails: bool = False) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.cleanup_fails = cleanup_fails
        self.opened: list[object] = []
        self.deactivated = 0

    def _activate(self) -> None:
        super()._activate()
        self.opened.append(self._session)
        raise OSError("the second resource could not be made")

    def _deactivate(self) -> None:
        self.deactivated += 1
        super()._deactivate()
        if self.cleanup_fails:
            raise RuntimeError("and closing failed too")


def test_a_half_failed_activation_is_deactivated(engine: Engine) -> None:
    runner = FailsAfterTheSession(engine.data, engine.manifest)
    with pytest.raises(OSError, match="the second resource could not be made"):
        with runner:
            pytest.fail("the body must not run")
    assert runner.opened and runner.opened[0] is not None  # it got half-way: the session existed
    assert runner.deactivated == 1 and runner._session is None and not runner.is_active
    with pytest.raises(RuntimeError, match="called outside `with runner:`"):
        runner.infer(feeds())


def test_the_activation_error_wins_over_a_cleanup_error(engine: Engine) -> None:
    runner = FailsAfterTheSession(engine.data, engine.manifest, cleanup_fails=True)
    with pytest.raises(OSError, match="the second resource could not be made") as caught:
        runner.activate()
    assert caught.value.__notes__ == ["FailsAfterTheSession: closing it after the failure also failed: RuntimeError('and closing failed too')"]
    assert not runner.is_active


def test_an_engine_that_cannot_load_leaves_the_runner_closed(engine: Engine) -> None:
    runner = OnnxRuntimeBackend().open(b"not an onnx model", engine.manifest)
    with pytest.raises(Exception, match="(?i)protobuf|parse|load"):
        with runner:
            pytest.fail("the body must not run")
    assert not runner.is_active and runner._session is None
