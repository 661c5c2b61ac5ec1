import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()
