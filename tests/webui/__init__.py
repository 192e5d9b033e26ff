"""Tests of the webui extension against a fake webui (see conftest.py)."""
