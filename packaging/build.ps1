# Windows twin of build.sh: the one-folder bundle in dist\Roost, a .zip beside it, and the
# self-check run from the frozen console program (roost-cli.exe; Roost.exe is the windowed app).
#   python -m venv .venv; .venv\Scripts\pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
#   .venv\Scripts\pip install ".[build]"; .\packaging\build.ps1 -Python .venv\Scripts\python.exe
# (a regular install, not -e: PyInstaller cannot see an editable install's import hook)
param([string]$Python = "python")
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..")
$version = & $Python -c "import roost; print(roost.__version__)"
Remove-Item -Recurse -Force build\pyinstaller, dist\Roost, build\selftest -ErrorAction SilentlyContinue
New-Item -ItemType Directory -Force build\selftest | Out-Null
& $Python -c "from roost.engine.synthetic import save_checkpoint; save_checkpoint('build/selftest/selftest-rwkv7.pth', 'v7.0', n_layer=2, n_embd=64, seed=1)"
& $Python -m PyInstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build\pyinstaller packaging\roost.spec
if ($LASTEXITCODE -ne 0) { throw "pyinstaller failed" }
New-Item -ItemType Directory -Force dist\Roost\models | Out-Null
Copy-Item packaging\README-bundle.txt dist\Roost\README.txt
$archive = "dist\Roost-$version-windows-x86_64.zip"
Compress-Archive -Path dist\Roost -DestinationPath $archive -Force
$size = (Get-ChildItem dist\Roost -Recurse | Measure-Object -Property Length -Sum).Sum / 1MB
Write-Host ("bundle: {0:N0} MB in dist\Roost, archive {1:N0} MB: {2}" -f $size, ((Get-Item $archive).Length / 1MB), $archive)
$env:ROOST_HOME = Join-Path $env:TEMP "roost-selfcheck"
& dist\Roost\roost-cli.exe selfcheck
if ($LASTEXITCODE -ne 0) { throw "selfcheck failed" }
