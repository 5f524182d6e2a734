"""Runs the real `groundwork` CLI with `ddgs.DDGS` replaced by the scripted fake.

    python -m tests.support.cli_entry run "prompt" ...   (script from $GROUNDWORK_TEST_DDGS_SCRIPT)

Only the search provider's network edge is faked; the rest of the process is the product.
"""

import os
from pathlib import Path

from tests.support.web import install_fake_ddgs

if __name__ == "__main__":
    script = os.environ.get("GROUNDWORK_TEST_DDGS_SCRIPT")
    install_fake_ddgs(Path(script) if script else None)
    from cli.main import main

    main()
