"""
Tests that the layers of ARCHITECTURE.md section 1 hold at import time.

Each test imports something in a fresh interpreter and looks at the modules
that import loaded: this interpreter has long since loaded everything, and a
layer is broken as soon as a module loads one it must not, whoever does the
importing (a module of the layer itself, or a package __init__ on the way).
"""

import json
import os
import sys

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

import stalwart_tw

# Run in the child after its imports: the names of all loaded modules.
_REPORT = "import json, sys\nprint(json.dumps(sorted(sys.modules)))\n"

# Imports every module of stalwart_tw.jmap, found by walking the package, so
# that a module added later is covered without touching this test.
_IMPORT_ALL_OF_JMAP = """\
import importlib, pkgutil
import stalwart_tw.jmap
for module in pkgutil.walk_packages(stalwart_tw.jmap.__path__, "stalwart_tw.jmap."):
    importlib.import_module(module.name)
"""


def _within(modules, packages):
    """
    @return: the sorted names in C{modules} that are one of C{packages} or a
        submodule of one.
    """
    return sorted(
        name
        for name in modules
        if any(name == package or name.startswith(package + ".") for package in packages)
    )


class LayerTests(TestCase):
    """
    Tests that a layer loads none of the layers it must not know.
    """

    @inlineCallbacks
    def _loaded_by(self, source):
        """
        Run the Python C{source} in a fresh interpreter.

        @return: a Deferred firing with the sorted names of the modules loaded
            once C{source} has run.
        """
        # The child imports the same stalwart_tw as this process, installed
        # or not (trial runs in _trial_temp, so the working directory won't do).
        source_root = os.path.dirname(os.path.dirname(stalwart_tw.__file__))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
        out, err, status = yield getProcessOutputAndValue(
            sys.executable, ["-c", source + _REPORT], env=env
        )
        if status != 0:
            self.fail(f"the child exited with {status}:\n{err.decode('utf-8', 'replace')}")
        return json.loads(out)

    @inlineCallbacks
    def test_raft_core_loads_no_storage(self):
        """Importing the Raft core loads neither SQLAlchemy nor stalwart_tw.store."""
        modules = yield self._loaded_by("import stalwart_tw.cluster.raft\n")
        self.assertIn("stalwart_tw.cluster.raft", modules)
        self.assertEqual(_within(modules, ["sqlalchemy", "stalwart_tw.store"]), [])

    @inlineCallbacks
    def test_jmap_loads_no_cluster_http_or_mail(self):
        """Importing every module of stalwart_tw.jmap loads nothing of cluster/, http/ or mail/."""
        modules = yield self._loaded_by(_IMPORT_ALL_OF_JMAP)
        # The walk did find the package's modules: the check is not vacuous.
        self.assertIn("stalwart_tw.jmap.dispatch", modules)
        self.assertIn("stalwart_tw.jmap.standard", modules)
        forbidden = ["stalwart_tw.cluster", "stalwart_tw.http", "stalwart_tw.mail"]
        self.assertEqual(_within(modules, forbidden), [])
