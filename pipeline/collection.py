"""The cyclic garbage collector during a command's start-up.

Importing Beam and Theano, loading a model and building a pipeline make
about 300,000 objects that live as long as the process, and almost no
cyclic garbage; yet Python's collector walks them all again and again as
they are made: 4 full collections and about 500 young ones, 0.30-0.35 s of
a Lite0 ``classify`` (`bench/README.md`, "Start-up"). So the ``imgclass``
command (:func:`pause`, from ``pipeline.cli.run``) starts without
collections; once a run's pipeline is built, or a command that runs none is
chosen, :func:`resume` freezes what start-up made (``gc.freeze``: out of
every later collection, never freed before the process ends) and turns
collection back on. The local runner's worker processes
(``pipeline.worker``) do the same for their first seconds.

Only the first :func:`resume` of a process freezes: a later one (``watch``
runs one pipeline per window) would keep the garbage of the runs before it
for ever. Code that imports imgclass as a library never pauses, so
:func:`resume` does nothing there.
"""

from __future__ import annotations

import gc

_paused = False
_frozen = False


def pause() -> None:
    """No collections until :func:`resume` (if collection is on now)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Ends :func:`pause`: the first time, freezes the objects made so far;
    then collection is on again. Does nothing when not paused."""
    global _paused, _frozen
    if not _paused:
        return
    _paused = False
    if not _frozen:
        gc.freeze()
        _frozen = True
    gc.enable()
