"""Run several ``python TOOL ARGS`` command lines one after the other in this one process.

    python run_tools_in_one_process.py CASES.json OUT_DIR

``CASES.json`` is a list of argv lists (the tool's path first). Each tool runs as ``python TOOL ARGS`` would run it
(``runpy`` with ``__name__ == '__main__'``); its stdout and stderr (file descriptors 1 and 2, so loggers created by an
earlier tool write there too) go to ``OUT_DIR/<i>.out`` / ``<i>.err``, and ``OUT_DIR/<i>.json`` records its exit
status (``SystemExit`` code, 1 for an escaping exception, whose traceback goes to its stderr) and wall time.
Between tools the mmengine instances a tool created (message hubs, loggers, visualizers, default scopes) are
dropped, so each tool's Runner starts as in a fresh process. Used by the tests to pay the imports of torch and
the codebases once for many short tool runs.
"""
import json
import os
import runpy
import sys
import time
import traceback


def _instance_dicts():
    if 'mmengine' not in sys.modules:
        return {}
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer
    found, todo = {}, [MessageHub, MMLogger, Visualizer, DefaultScope]
    while todo:
        cls = todo.pop()
        found[cls] = cls._instance_dict
        todo.extend(cls.__subclasses__())
    return found


def _run(argv):
    sys.argv = [str(a) for a in argv]
    try:
        runpy.run_path(sys.argv[0], run_name='__main__')
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - reported as the tool's own traceback and exit status
        traceback.print_exc()
        return 1
    return 0


def main():
    cases = json.loads(open(sys.argv[1]).read())
    out_dir = sys.argv[2]
    saved = os.dup(1), os.dup(2)
    for i, argv in enumerate(cases):
        before = {cls: set(d) for cls, d in _instance_dicts().items()}
        with open(os.path.join(out_dir, f'{i}.out'), 'w') as out, open(os.path.join(out_dir, f'{i}.err'), 'w') as err:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
            start = time.monotonic()
            try:
                code = _run(argv)
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        with open(os.path.join(out_dir, f'{i}.json'), 'w') as f:
            json.dump(dict(returncode=code, elapsed=time.monotonic() - start), f)
        for cls, instances in _instance_dicts().items():
            for name in [n for n in instances if n not in before.get(cls, ())]:
                del instances[name]


if __name__ == '__main__':
    main()
