"""pytest glue. trial's TestCase.mktemp() makes paths relative to the working directory,
so under pytest the session runs in a scratch directory instead of the checkout."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratch_working_directory(tmp_path_factory):
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("trial"))
    yield
    os.chdir(previous)
