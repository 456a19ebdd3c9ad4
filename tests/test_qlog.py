"""Tests for moqrelay.transport.qlog: qlog files of QUIC connections, and their bound."""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from moqrelay.transport.qlog import QlogDirectory
from tests.test_quic import RealSocketTestCase, until


class RetentionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_only_the_newest_files_are_kept(self) -> None:
        qlog = QlogDirectory(self.directory, max_files=2)
        paths = []
        for n in range(4):
            path = os.path.join(self.directory, f"{n}.qlog")
            with open(path, "w") as f:
                f.write("{}")
            qlog.written(path)
            paths.append(path)
        self.assertEqual(sorted(os.listdir(self.directory)), ["2.qlog", "3.qlog"])

    def test_a_file_removed_by_someone_else_is_no_error(self) -> None:
        qlog = QlogDirectory(self.directory, max_files=1)
        qlog.written(os.path.join(self.directory, "gone.qlog"))
        qlog.written(os.path.join(self.directory, "also-gone.qlog"))
        self.assertEqual(os.listdir(self.directory), [])

    def test_the_directory_must_exist_and_keep_a_file(self) -> None:
        self.assertRaises(ValueError, QlogDirectory, os.path.join(self.directory, "no"), 10)
        self.assertRaises(ValueError, QlogDirectory, self.directory, 0)


class QlogEndToEndTests(RealSocketTestCase):
    """A server endpoint with qlog: each connection it served leaves one file when it ends."""

    async def test_each_ended_connection_leaves_a_qlog_file_and_the_bound_holds(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        endpoint, _, address = self.start_server(qlog=QlogDirectory(directory, max_files=1))
        for _ in range(2):
            handler = await self.connect(f"moqt://{address}/qlog")
            handler.session.close(0, "done")
        # However the stack drains a closed connection, the endpoint ends them all here.
        endpoint.close_all()
        await until(lambda: endpoint.connections == 0 and bool(os.listdir(directory)))
        (name,) = os.listdir(directory)
        with open(os.path.join(directory, name)) as f:
            qlog = json.load(f)
        (trace,) = qlog["traces"]
        self.assertEqual(trace["vantage_point"]["type"], "server")
        self.assertEqual(trace["vantage_point"]["name"], self.stack_name)
        self.assertTrue(trace["events"])
        self.assertEqual(name, trace["common_fields"]["ODCID"] + ".qlog")


class QlogEndToEndQh3Tests(QlogEndToEndTests):
    stack_name = "qh3"
