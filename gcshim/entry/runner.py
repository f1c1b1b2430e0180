"""`gcshim run`: run an unmodified script (or `-m module`) as __main__ with gcshim.auto on.

Options become GCSHIM_* environment variables (so child processes inherit them, and they are
parsed by the same strict rules), gcshim.auto is activated, and the script runs as Python would
run it: its own sys.argv, sys.path[0] and exit code; an uncaught exception prints the
script's traceback (without gcshim's and runpy's frames) and exits 1.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from types import TracebackType
from typing import Dict, List, Optional

_OUR_FILES = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
              os.path.dirname(runpy.__file__))


def _script_frames(tb: Optional[TracebackType]) -> Optional[TracebackType]:
    """The traceback from the first frame outside gcshim and runpy."""
    while tb is not None and (tb.tb_frame.f_code.co_filename.startswith(_OUR_FILES)
                              or tb.tb_frame.f_code.co_filename == "<frozen runpy>"):
        tb = tb.tb_next
    return tb


def run(target: str, arguments: List[str], is_module: bool, environment: Dict[str, str]) -> int:
    os.environ.update(environment)
    from .activation import activate

    activate()  # what `import gcshim.auto` does (with these settings, if it was on before)
    try:
        if is_module:
            sys.argv = [target, *arguments]
            sys.path.insert(0, os.getcwd())
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *arguments]
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            runpy.run_path(target, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as error:  # the script's own error, reported as Python would
        traceback.print_exception(type(error), error, _script_frames(error.__traceback__))
        return 130 if isinstance(error, KeyboardInterrupt) else 1
    return 0
