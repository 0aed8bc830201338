"""One child's run, from spawn to reap, owned by one :class:`ChildRun`.

A run goes through its steps in this order, one module each; nothing outside this
package changes a child's state:

========================  ==============================================================
step                      module
========================  ==============================================================
start                     ``start.py``: build the boot frame, call the run's starter
                          (``launch._start.spawn.start_child`` by default) once, adopt
                          the :class:`~launch._start.spawn.Spawned` it returns
handshake                 ``handshake.py``: send the boot frame, wait for READY, the
                          child's exit or ``ready_timeout``
messages                  ``messages.py``: read the control socket; what each typed
                          message does to the run (times shifted by the clock offset)
supervise                 ``supervise.py``: shielded from spawn to reap: messages,
                          output, the exit, the reap
stop                      ``run.py``: what the teardown's stop ladder calls
failure                   ``failure.py``: the :class:`~launch.ChildFailed` a run's facts
                          make, dated by the child's own clock
========================  ==============================================================

The :class:`~launch.Group` holds the task tree: it starts ``ChildRun.supervise`` and
``ChildRun.start`` as tasks, applies the first-failure policy to what runs declare, and
orchestrates the teardown; :class:`~launch.Child` is the public read-only view of a run.
"""

from .run import ChildRun, Declare

__all__ = ["ChildRun", "Declare"]
