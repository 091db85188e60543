"""HTTP benchmark: asgi-p2p HTTP/3 vs hypercorn HTTP/3 vs uvicorn HTTP/1.1.

    python benchmarks/http.py [--repeat 3] [--requests 2000] [--concurrency 50] [--big-mib 10]

The benchmark lives in ``_http.py`` (its docstring says what it measures); this file starts
it.  A file named ``http.py`` in this folder is what a script here finds when it (or a
library it uses, such as httpx through ``urllib``) imports the standard library's ``http``,
since a script's folder comes first on ``sys.path``: imported under that name, this file
loads the real package in its own place.
"""

import importlib
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _without_this_folder() -> list[str]:
    return [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]


if __name__ == "__main__":
    sys.path[:] = _without_this_folder()
    _spec = importlib.util.spec_from_file_location("_http_bench", os.path.join(_HERE, "_http.py"))
    assert _spec is not None and _spec.loader is not None
    _bench = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _bench  # dataclasses look their module up there
    _spec.loader.exec_module(_bench)
    _bench.main()
elif __name__ == "http":
    # imported as the standard library's `http`: hand the real package over in this module's place
    _saved = sys.path[:]
    sys.path[:] = _without_this_folder()
    del sys.modules[__name__]
    try:
        sys.modules[__name__] = importlib.import_module(__name__)
    finally:
        sys.path[:] = _saved
