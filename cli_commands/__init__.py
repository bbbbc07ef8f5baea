"""The commands of ``cdrl-bench`` (the app itself is ``cli.py``): ``models`` for one model, ``suites`` for a
benchmark suite, ``common`` for the options and first steps they share."""
