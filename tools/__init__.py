"""The command-line tools (python tools/<name>.py ...); a package so that tests import them as ``from tools import <name>``."""
