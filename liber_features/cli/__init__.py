"""The ``liber`` command line (click): one module per group of commands, ``main`` registers them.

The only part of ``liber_features`` allowed to import ``encoders`` (the torch side).
"""
