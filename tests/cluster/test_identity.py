"""
Tests of the node's identity in the cluster.
"""

import os

from twisted.trial.unittest import TestCase

from stalwart_tw.cluster.identity import GENERATION_FILE, NODE_ID_FILE, load_identity


class IdentityTests(TestCase):
    def test_id_kept_generation_counted(self):
        """The id stays across starts; the generation counts them."""
        folder = self.mktemp()
        first = load_identity(folder)
        second = load_identity(folder)
        self.assertEqual(first.node_id, second.node_id)
        self.assertEqual(len(first.node_id), 16)
        self.assertEqual((first.generation, second.generation), (1, 2))

    def test_damaged_files_named(self):
        """A file that holds something else stops start-up with its name."""
        for name, text in ((NODE_ID_FILE, "not-an-id"), (GENERATION_FILE, "many")):
            folder = self.mktemp()
            os.makedirs(folder)
            with open(os.path.join(folder, name), "w") as target:
                target.write(text)
            error = self.assertRaises(ValueError, load_identity, folder)
            self.assertIn(name, str(error))
