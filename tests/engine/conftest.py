import pytest

from tests.engine import toy_nodes


@pytest.fixture(autouse=True)
def fresh_counters():
    toy_nodes.reset()
    yield toy_nodes.RUNS


@pytest.fixture
def runs():
    return toy_nodes.RUNS
