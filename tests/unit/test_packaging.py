"""A wheel carries the browser pages: installed elsewhere and run from any folder, the server still finds them."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_an_installed_wheel_serves_the_pages_from_any_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = wheels.glob("mediaserver-*.whl")
    venv = tmp_path / "venv"
    # A venv with its own pip: installing with this environment's pip (even with --prefix) would uninstall
    # the project from this environment first.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=180)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # The dependencies come from this test run's environment, appended after the wheel's own files.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = subprocess.run(
        [str(python), "-c", "import mediaserver.http.pages as p; print(p.__file__); print(p.default_web_dir())"],
        cwd=elsewhere,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert found[0].startswith(str(venv)), found  # the wheel's code, not the source checkout
    web = Path(found[1])
    assert web == venv / "share" / "mediaserver" / "web"
    assert (web / "index.html").is_file() and (web / "vendor" / "hls.js" / "hls.min.js").is_file()
    assert (web / "dashboard" / "app.js").is_file() and (web / "dashboard" / "dashboard.css").is_file()
