"""The bad-input corpus's shared outputs: one ``Shared`` per module (tests/bad_inputs/corpus.py)."""
import pytest

from tests.bad_inputs.corpus import Shared


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Built on first use, per module: a ``-k`` selection builds only what its rows need."""
    return Shared(tmp_path_factory.mktemp("corpus-shared"))
