"""Root pytest configuration: names available to the package's docstring examples."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace['torch'] = torch
