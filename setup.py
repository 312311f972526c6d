"""Shim for tools that need setup.py, such as Beam's --setup_file; see setup.cfg."""

import setuptools

setuptools.setup()
