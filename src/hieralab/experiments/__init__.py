"""Experiments that compose tasks (they sit above ``tasks/``, which never import each other): ``study``."""
