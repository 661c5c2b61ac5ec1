import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def runner():
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """family -> a tiny random checkpoint (written by transformers), loaded in float32; built once."""
    pytest.importorskip("transformers")
    from ctxprobe.runner import load_model
    from tiny_models import save_tiny

    built = {}

    def get(family):
        if family not in built:
            path, _ = save_tiny(tmp_path_factory.mktemp(family), family, max_shard_size="2MB")
            built[family] = load_model(path, device="cpu", dtype="float32")
        return built[family]

    return get
