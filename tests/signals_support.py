"""A signal whose handler's exception Python swallows, for the tests of code that must
notice the signal anyway (tests/test_prepare_faults.py, tests/test_stop_signal.py)."""

import os
import signal


class SignalsItselfWhileCollected:
    """An object whose __del__ sends SIGTERM: the handler runs inside __del__, where Python
    prints the handler's exception and ignores it (as when it lands in a gc callback)."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the loop's jumps run the pending handler here
            pass
