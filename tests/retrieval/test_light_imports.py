"""Importing the public API must not pull in torch, faiss or open_clip (tools import it eagerly)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_api_and_settings_import_light() -> None:
    code = (
        "import sys, retrieval, retrieval.api, retrieval.settings, retrieval.embedders, "
        "cli.kb, tests.support.tiny_clip; "
        "heavy = [m for m in ('torch', 'faiss', 'open_clip', 'sentence_transformers') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
