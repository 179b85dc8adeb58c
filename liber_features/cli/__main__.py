"""``python -m liber_features.cli``: the same as the ``liber`` command."""

from liber_features.cli.main import main

main()
