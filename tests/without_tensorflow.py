"""Runs a Python snippet in a subprocess where every `import tensorflow` fails, as on a machine without it (the
TFDS datasets must build and read through the data-source API without TensorFlow)."""

import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

_BLOCK_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, importlib.machinery, sys

    class NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                return importlib.machinery.ModuleSpec(name, self)

        def create_module(self, spec):
            raise ModuleNotFoundError("No module named %r (blocked)" % spec.name, name=spec.name)

        def exec_module(self, module):
            raise ModuleNotFoundError("No module named %r (blocked)" % module.__name__)

    sys.meta_path.insert(0, NoTensorFlow())
""")


def run_without_tensorflow(script: str, *args) -> str:
    """Runs `script` (dedented; its argv holds `args` as strings) with TensorFlow blocked; returns the last stdout
    line after checking that the script succeeded."""
    result = subprocess.run([sys.executable, "-c", _BLOCK_TENSORFLOW + textwrap.dedent(script), *map(str, args)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]
