"""When training saves: by time (at least every `checkpoint_every` seconds), at the end, and on SIGINT/SIGTERM.

A checkpoint records where in an epoch it was taken (completed epochs, steps done in the next one, torch's
random state and the epoch's running loss sums), so a run stopped anywhere and resumed ends with the weights
of an uninterrupted one: batches are a function of (seed, epoch), and the dropout stream is restored.
Saving every epoch made short epochs write a model and Adam state per epoch (84 ms with fsync; 57.8 GB for
the default run); by time, a short job writes its final checkpoint and little else.
"""

from __future__ import annotations

import signal
import threading
from time import monotonic
from types import FrameType

from kdbench.errors import KdbenchError

DEFAULT_EVERY_S = 60.0


class TrainingStopped(KeyboardInterrupt):
    """Raised after a stop signal once the state is saved: rerunning the same command continues."""


class CheckpointPolicy:
    """Due when at least `every_s` seconds passed since the last save (or since training started)."""

    def __init__(self, every_s: float = DEFAULT_EVERY_S):
        if not every_s >= 0:
            raise KdbenchError(f"--checkpoint-every {every_s}: give seconds >= 0 (0 saves at every step)")
        self.every_s = float(every_s)
        self.last = monotonic()

    def due(self) -> bool:
        """True when a save is due by time."""
        return monotonic() - self.last >= self.every_s

    def saved(self) -> None:
        """Restart the interval."""
        self.last = monotonic()


class StopSignals:
    """Turns SIGINT/SIGTERM into a request that the loop honours after the current step (then saves).

    A second SIGINT while a stop is pending interrupts at once. Handlers can only be installed from the main
    thread; elsewhere (a thread pool) signals keep their default behaviour.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def load_weights(model, state: dict, path: object, arch: str) -> None:
    """`model.load_state_dict(state)`, or one line saying how the checkpoint's weights differ from its config.

    A checkpoint whose config and weights disagree (edited, or written by a method that replaced a layer)
    would otherwise end in load_state_dict's many-line RuntimeError.
    """
    try:
        model.load_state_dict(state)
        return
    except (RuntimeError, TypeError, AttributeError):
        pass
    have = model.state_dict()
    state = state if isinstance(state, dict) else {}
    missing = [k for k in have if k not in state]
    extra = [k for k in state if k not in have]
    shapes = [f"{k} {tuple(getattr(state[k], 'shape', ()))} vs {tuple(have[k].shape)}" for k in have
              if k in state and tuple(getattr(state[k], "shape", ())) != tuple(have[k].shape)]
    parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
             for what, keys in (("missing", missing), ("unexpected", extra), ("other shapes:", shapes)) if keys]
    raise KdbenchError(f"{path}: its weights do not fit the {arch} its config names ({'; '.join(parts) or 'values'}): "
                       "the checkpoint was edited, or written by a method that replaced a layer of the model; "
                       "retrain the job (delete its run folder and rerun)")
