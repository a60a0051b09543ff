"""Guards every Python subprocess of aetool's tests (see fsguard.py).

Python imports `sitecustomize` at start-up from its path; the tests put this folder first on
the PYTHONPATH of their subprocesses (`fsguard.guarded_env`), so a subprocess, and every
worker it starts with the same environment, refuses any write outside the test's folders with
exit code 99. Without $AETOOL_TEST_GUARD_ROOTS it does nothing.
"""

import fsguard

fsguard.install_from_env()
