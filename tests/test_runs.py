"""jnn.runs.LoadedModel.logits refuses what it cannot predict from, without a run folder: the
loaded model is built here from a small study config (the run-folder paths: test_study)."""

import jax
import numpy as np
import pytest

from jnn import runs, study
from jnn.errors import InputError


@pytest.fixture(scope="module")
def net() -> runs.LoadedModel:
    c = study.StudyConfig(hidden=(8,), activations=("relu",), epochs=1, save_at=(1,))
    model = study.network(c)
    _, params, state = model.init(jax.random.PRNGKey(0), (c.sizes[0],))
    return runs.LoadedModel(model, params, state, c, study.models(c)[0], 1)


def test_float_images_give_logits(net):
    x = np.random.default_rng(0).random((3, net.config.sizes[0]), np.float32)
    assert net.logits(x).shape == (3, net.config.sizes[-1])
    assert net.logits(x.astype(np.float64)).shape == (3, net.config.sizes[-1])


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, bool], ids=str)
def test_logits_refuse_a_non_float_dtype(net, dtype):
    """Raw uint8 pixels (0..255) or ints would run silently on unscaled values (Dense promotes
    them to float): one InputError line naming the dtype instead."""
    x = np.ones((3, net.config.sizes[0]), dtype)
    with pytest.raises(
        InputError, match=f"float images in \\[0, 1\\], got dtype {np.dtype(dtype)}"
    ) as err:
        net.logits(x)
    assert "\n" not in str(err.value)
    with pytest.raises(InputError, match="got dtype"):
        net.predict(x)
