"""Roost's data files (the model catalog; icons), read with ``importlib.resources``.

Installed, this folder is the package ``roost.assets``; in a checkout, an editable install maps it
the same way, and the frozen bundle carries it at ``roost/assets``.
"""
