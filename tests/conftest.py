import os

import pytest


def pytest_configure(config):
    # Tests never touch the user's dataset cache.
    os.environ.setdefault("ZOO_DATA_DIR", str(config.rootpath / ".pytest_cache" / "zoo-data"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("ZOO_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set ZOO_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Each test sees the installed plugins only, whatever an earlier test registered."""
    import zoo.plugins

    zoo.plugins.reset()
    yield
    zoo.plugins.reset()
