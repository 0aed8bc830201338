"""The ``launch`` command: argument parsing (``main.py``), ``launch up`` (``up.py``),
its live display (``view.py``) and ``launch demo`` (``demo.py``)."""
