"""How a child process comes to exist: the start methods and the launch lock.

``spawn.py`` dispatches a :class:`~launch.ProcessSpec` to its start method (a fresh
interpreter, a fork of the launcher, or a fork of the preloaded forkserver) under the
launch lock (``lock.py``); ``process.py`` holds the handles the rest of launch waits on
and signals; ``interpreter.py`` builds the child's command line; ``forkserver.py`` runs
the preloaded server.
"""
