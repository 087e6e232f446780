"""``python -m robustfl`` is the ``robustfl`` command."""

from robustfl.cli import main

main()
