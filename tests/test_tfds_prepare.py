"""tfds on a fresh data_dir: an unprepared dataset goes through tfds' own download_and_prepare.

The builder `gemma_tiny_download` is the project's own: its `_split_generators` downloads a
text file with tfds' DownloadManager from an HTTP server on 127.0.0.1 serving a temporary
directory, the way a real dataset downloads from its host. Nothing is mocked: `gemma
finetune` finds the dataset unprepared, tfds downloads and prepares it, training runs. With
the server gone (no network), the run stops in one line naming the dataset and `tfds build`.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
from test_finetune import assert_one_error_line, config, gemma
from tiny import CORPUS


@pytest.fixture(scope="module")
def builder_cls():
    import tensorflow_datasets as tfds

    class GemmaTinyDownload(tfds.core.GeneratorBasedBuilder):
        """Lines of text downloaded from URL (set by the test) into train and test splits."""

        VERSION = tfds.core.Version("1.0.0")
        URL = ""

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            path = dl_manager.download(self.URL)
            return {"train": self._generate_examples(path, 0), "test": self._generate_examples(path, 1)}

        def _generate_examples(self, path, part):
            lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
            for i, line in enumerate(lines):
                if (i % 4 == 0) == bool(part):
                    yield i, {"text": line}

    return GemmaTinyDownload


@pytest.fixture()
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "tiny.txt").write_text("\n".join(CORPUS * 8) + "\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_unprepared_dataset_is_downloaded_and_prepared(tmp_path, tiny_gemma3, builder_cls, server):
    builder_cls.URL = f"{server}/tiny.txt"
    data_dir = tmp_path / "tfds"
    cfg = config(tmp_path, tiny_gemma3, data={"name": "gemma_tiny_download", "data_dir": str(data_dir), "eval_split": "test"},
                 train={"max_steps": 2})
    r = gemma("finetune", cfg, "--json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    s = json.loads(r.stdout)
    assert s["steps"] == 2 and s["eval_loss"] > 0
    assert (data_dir / "gemma_tiny_download" / "1.0.0" / "dataset_info.json").is_file()  # prepared by tfds
    assert "48 text records from gemma_tiny_download[train]" in r.stderr  # 3 of every 4 of 64 lines


def test_unprepared_dataset_without_network_is_one_line(tmp_path, tiny_gemma3, builder_cls):
    """tfds' downloader retries a failed connection 10 times with backoff (~3.5 minutes); the
    bounded probe (engine/core/remote.py) asks the host once first: exit 1 (the environment's,
    not bad input), one line naming the host, and tfds' retry limit is back as it was after."""
    from tensorflow_datasets.core.download import downloader

    builder_cls.URL = "http://127.0.0.1:9/tiny.txt"  # the discard port: nothing listens
    cfg = config(tmp_path, tiny_gemma3, data={"name": "gemma_tiny_download", "data_dir": str(tmp_path / "tfds")})
    line = assert_one_error_line(gemma("finetune", cfg, "-q"), 1)
    for w in ("data.name: gemma_tiny_download is not prepared in", "`tfds build gemma_tiny_download`",
              "cannot reach the dataset's download host at http://127.0.0.1:9 (connection refused)"):
        assert w in line, (w, line)
    assert not (tmp_path / "out").exists()
    assert downloader.MAX_RETRIES == 10
