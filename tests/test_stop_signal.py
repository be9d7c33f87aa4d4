"""StopSignal (mlm_jax/training/run.py): SIGTERM before the first step ends the run; one
whose exception Python swallowed still stops the loop at its first step."""

import signal

import pytest

from mlm_jax.training.run import Preempted, StopSignal
from tests.signals_support import SignalsItselfWhileCollected


def test_sigterm_before_the_first_step_ends_the_run_with_nothing_to_save():
    with pytest.raises(Preempted) as stopped, StopSignal():
        signal.raise_signal(signal.SIGTERM)
    assert stopped.value.step is None and stopped.value.code == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the point)
def test_a_swallowed_sigterm_before_the_first_step_stops_the_loop_at_its_first_step():
    with StopSignal() as stop:
        SignalsItselfWhileCollected()  # collected at once: the handler's raise is lost
        stop.steps_started()
        assert stop.should_stop(1) and stop.exit_code == 0
