"""jnn.features: the frozen-feature pipeline the VGG transfer and its benchmark share."""

import numpy as np
import pytest

from jnn import features
from jnn.errors import InputError


def test_extract_features_pads_the_last_batch_and_keeps_order():
    images = np.arange(10 * 28 * 28, dtype=np.uint8).reshape(10, 28, 28)
    seen = []

    def extract(batch):
        seen.append(batch.shape)
        return batch.reshape(len(batch), -1)[:, :3].astype(np.float32)

    feats, timing = features.extract_features(extract, images, batch_size=4)
    assert seen == [(4, 28, 28)] * 3  # 10 images: 3 batches, the last padded (one compile)
    np.testing.assert_array_equal(feats, images.reshape(10, -1)[:, :3].astype(np.float32))
    assert timing["images_timed"] == 8 and timing["images_per_s"] > 0


@pytest.mark.parametrize("images, batch", [(np.zeros((0, 28, 28), np.uint8), 4), (None, 0)])
def test_extract_features_refuses_nothing_to_do(images, batch):
    images = np.zeros((3, 28, 28), np.uint8) if images is None else images
    with pytest.raises(InputError, match="batch size >= 1"):
        features.extract_features(lambda b: b, images, batch)


def test_make_extractor_refuses_a_block_vgg16_does_not_have():
    with pytest.raises(InputError, match="blocks 1..5"):
        features.make_extractor({}, "keras", 32, last_block=6)
