#!/usr/bin/env bash
# Install what the dashboard's end-to-end browser test needs: Debian's chromium and the
# `playwright` Python package. Playwright's own browser download is skipped on purpose: the test
# launches /usr/bin/chromium (executable_path), so nothing beyond the distro package is fetched.
#
# Waits up to 10 min for the dpkg lock (other installs may be running).
# Usage: scripts/install_browser.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail

PYTHON="${1:-.venv/bin/python}"

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=sudo
    else
        SUDO=
    fi
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends chromium
fi

# PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: the pip package itself never downloads a browser, but be
# explicit in case a future version does.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PYTHON" -m pip install -q playwright

/usr/bin/chromium --version
"$PYTHON" -c "import playwright.sync_api; print('playwright', __import__('importlib.metadata').metadata.version('playwright'))"
