"""Issue 11 item 15: a non-editable install ships the web page (frontend_stub/ as `middlewared_plugin.frontend`).

Builds and installs the project with pip into a temporary target directory (no build isolation, no index:
offline, with this venv's setuptools and wheel), starts `python -m middlewared_plugin serve` from that copy
alone, and fetches GET /.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from pathlib import Path

from tests.security.raw_http import request

REPO = Path(__file__).resolve().parents[2]
#: What a build needs: packaging metadata, the package, the page.
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "middlewared_plugin", "frontend_stub")


async def run(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(*argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, output.decode()
    return output.decode()


async def test_an_installed_copy_serves_the_web_page(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "target"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    await run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
              "--target", str(target), str(source), cwd=tmp_path)
    assert (target / "middlewared_plugin" / "frontend" / "index.html").is_file()
    assert (target / "middlewared_plugin" / "frontend" / "js" / "pages" / "login.js").is_file()

    # Only the installed copy on the path (cwd holds neither the package nor the page).
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "from middlewared_plugin.protocol import server; print(server.FRONTEND_DIR)"
    where = await run(sys.executable, "-c", code, cwd=tmp_path, env=env)
    assert Path(where.strip()).is_relative_to(target)

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "middlewared_plugin", "serve", "--listen", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "data"), cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        port = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert port, line
        page = await request(int(port.group(1)), "/")
        assert page.status == 200 and b'<script type="module" src="/js/app.js">' in page.body
        script = await request(int(port.group(1)), "/js/app.js")
        assert script.status == 200 and script.headers["content-type"] == "text/javascript"
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 30)
