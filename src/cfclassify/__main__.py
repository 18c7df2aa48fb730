"""``python -m cfclassify``: the same as the ``cfclassify`` command."""

from .cli import main

main()
