"""Bridges from autofocus-d2 models to other libraries' APIs (each an optional dependency).

``autofocus_d2.integrations.sahi``: :class:`AutoFocusSahiModel`, the SAHI ``DetectionModel`` of any
autofocus-d2 model (needs ``pip install sahi``).
"""
