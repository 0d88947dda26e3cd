#!/usr/bin/env bash
# Build the one-folder Roost bundle for this OS into dist/Roost, an archive beside it, and run the
# bundle's self-check. Run from a checkout, with Roost installed in the Python that runs this as a
# regular (not editable) install: PyInstaller cannot see an editable install's import hook.
#   python3 -m venv build/venv && build/venv/bin/pip install torch==2.13.0 ".[build]"
#   PYTHON=build/venv/bin/python packaging/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import os, roost; raise SystemExit(os.path.realpath(roost.__file__).startswith(os.path.realpath('app') + os.sep))"; then
    echo "build.sh: $PY imports roost from this checkout (an editable install). Bundles are built from a" >&2
    echo "regular install: $PY -m pip install '.[build]' (without -e), or another venv." >&2
    exit 1
fi
VERSION=$("$PY" -c "import roost; print(roost.__version__)")
OS=$("$PY" -c "import platform; print({'Darwin': 'macos', 'Windows': 'windows'}.get(platform.system(), 'linux'))")
ARCH=$("$PY" -c "import platform; print(platform.machine().lower())")

rm -rf build/pyinstaller dist/Roost build/selftest
mkdir -p build/selftest
# the tiny random-weight model that `roost selfcheck` loads (2 layers x 64; about 17 MB)
"$PY" -c "from roost.engine.synthetic import save_checkpoint; save_checkpoint('build/selftest/selftest-rwkv7.pth', 'v7.0', n_layer=2, n_embd=64, seed=1)"

if [ "$OS" = linux ]; then  # Chinese on desktops without a CJK font: a subset of the system's OFL font
    rm -rf build/fonts
    "$PY" packaging/cjk_font.py build/fonts || echo "cjk font: skipped" >&2
fi

start=$(date +%s)
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/roost.spec
echo "pyinstaller: $(( $(date +%s) - start )) s"

# lazy-pack layout: an empty models/ folder beside the programs (a portable pack keeps models there)
mkdir -p dist/Roost/models
cp packaging/README-bundle.txt dist/Roost/README.txt

ARCHIVE="dist/Roost-${VERSION}-${OS}-${ARCH}.tar.gz"
tar -C dist -czf "$ARCHIVE" Roost
echo "bundle: $(du -sh dist/Roost | cut -f1) in dist/Roost, archive $(du -h "$ARCHIVE" | cut -f1): $ARCHIVE"

# the frozen program must start and work without any Python on the machine's PATH
t0=$("$PY" -c "import time; print(time.time())")
env -i HOME="${HOME:-/tmp}" PATH=/usr/bin:/bin ROOST_HOME="$(mktemp -d)" dist/Roost/roost-cli --version
t1=$("$PY" -c "import time; print(time.time())")
echo "frozen start-up (roost-cli --version): $("$PY" -c "print(f'{$t1 - $t0:.2f} s')")"
env -i HOME="${HOME:-/tmp}" PATH=/usr/bin:/bin ROOST_HOME="$(mktemp -d)" dist/Roost/roost-cli selfcheck \
    | tee build/selfcheck.txt
# the bundle carries the compiled kernels whenever the install it was built from has them
if "$PY" -c "from roost.engine import native; raise SystemExit(0 if native.available() else 1)"; then
    grep -q "compiled kernels: [A-Z]" build/selfcheck.txt || {
        echo "build.sh: the bundle runs without the compiled kernels that the install has" >&2; exit 1; }
fi
