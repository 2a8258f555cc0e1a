"""One base class for "what you gave me cannot work": the experiments' CLIs print these as one
``error: ...`` line and exit 2. Any other exception is a bug and keeps its traceback.

Subclasses: :class:`jnn.data.DataError` (data files), :class:`jnn.checkpoints.CheckpointError`
(checkpoint folders), :class:`jnn.vgg_weights.WeightFileError` (weight files) and the argument
checks of every public function (shapes, label ranges, finiteness, sizes).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input to a public entry point. The message is one line: what was wrong, what to do.

    A ``ValueError`` subclass, so ``except ValueError`` in user code keeps working.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
