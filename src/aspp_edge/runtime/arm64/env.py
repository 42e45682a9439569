"""The aarch64 environment `check-arm64` runs artifacts in, built rootless from pinned downloads.

What it holds (every file pinned by version and sha256; downloaded once into `<cache>/downloads/`,
then everything is extracted and built from there, offline):

- `qemu/`: Debian trixie's `qemu-user` (QEMU 10.0, static binaries; bookworm's 7.2 does not emulate
  an aarch64 `/proc/cpuinfo`, so cpuinfo fails inside the guest and XNNPACK falls back to its plain
  NEON kernels, measured), run as `qemu-aarch64 -L sysroot -cpu MODEL`.
- `sysroot/`: Debian bookworm arm64 libc, libstdc++ and Python 3.11 (`dpkg-deb -x`, no root).
- `site/`: the aarch64 wheels, unzipped: `executorch==1.5.1` (its C++ runtime libraries and headers;
  its Python bindings need an aarch64 torch, which PyPI ships only as a CUDA build), `ai-edge-litert==1.4.0`
  (the last release with aarch64 Linux wheels; x86 runs 2.3.0) and `numpy`.
- `xtc/` + `bin/et_run`: Debian's aarch64 cross g++ 12 (rootless, relocated) builds `et_run.cpp`, a
  small C++ program on ExecuTorch's `Module` API, linked against the wheel's libraries.

`ensure_env()` builds it; `find_env()` returns it or raises `Arm64EnvMissing` with the setup command.
The cache is `$ASPP_EDGE_ARM64_CACHE`, else `~/.cache/aspp-edge/arm64`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import AsppEdgeError

DEBIAN = "https://deb.debian.org/debian/pool/main/"


@dataclass(frozen=True)
class Pin:
    name: str  # the file name in downloads/
    sha256: str
    url: str | None = None  # a Debian .deb; None: a wheel, fetched by pip with its hash
    requirement: str | None = None  # for wheels: `name==version`
    role: str = ""  # sysroot | qemu | toolchain | site


def _deb(path: str, sha256: str, role: str) -> Pin:
    return Pin(path.rsplit("/", 1)[1] + ".deb", sha256, DEBIAN + path + ".deb", role=role)


def _wheel(name: str, requirement: str, sha256: str) -> Pin:
    return Pin(name, sha256, requirement=requirement, role="site")


# Debian bookworm arm64: the C/C++ runtime and Python 3.11 (python3.11-minimal + its stdlib's libraries)
SYSROOT = [_deb(p, h, "sysroot") for p, h in [
    ("g/glibc/libc6_2.36-9+deb12u14_arm64", "01f4330719fd4f65580e16ea5a0527f372fca750e8f588d26deaf09f2d3b1cf4"),
    ("g/gcc-12/libgcc-s1_12.2.0-14+deb12u1_arm64", "576926b283613db80168ddf76380a3bd877602778cf0d226caa7bfbfa71eacf3"),
    ("g/gcc-12/libstdc++6_12.2.0-14+deb12u1_arm64", "26e138c677a985775331373828a6c286c551ff397cb735d00e2383cb273d1cb2"),
    ("p/python3.11/python3.11-minimal_3.11.2-6+deb12u8_arm64", "6a07dd571f1a15af2f855d64571766fe44b73a57cc3b5ca79502bc89156a5e12"),
    ("p/python3.11/libpython3.11-minimal_3.11.2-6+deb12u8_arm64", "c48bac178c0fc43a2bf8ace784c762b5ee83e2b981894a991dc3ccfd3ec7cd4b"),
    ("p/python3.11/libpython3.11-stdlib_3.11.2-6+deb12u8_arm64", "e79876de55c6c2dca10d044b2fa69ccd863950ea01714220c1982d16008105f9"),
    ("e/expat/libexpat1_2.5.0-1+deb12u2_arm64", "8dc1976735acf825e3a922d82f171e20feec7394da2b8c616091983e38706275"),
    ("z/zlib/zlib1g_1.2.13.dfsg-1_arm64", "52b8b8a145bbe1956bba82034f77022cbef0c3d0885c9e32d9817a7932fe1913"),
    ("libf/libffi/libffi8_3.4.4-1_arm64", "80b5c36177dc0e29d531c7eddbed3cc7355cb490e49f8cfa5959572d161f27b3"),
    ("b/bzip2/libbz2-1.0_1.0.8-5+b1_arm64", "d3a96ece03326498b39ff093a76800dfcbcb1d4049d6ae6e9f6fa1aa7a590ad6"),
    ("x/xz-utils/liblzma5_5.4.1-1+deb12u1_arm64", "647ce9d81e41c30071ce6ac0d3324579216a33aaa1d28971d6952315f6a95a75"),
    ("u/util-linux/libuuid1_2.38.1-5+deb12u3_arm64", "3b2d19df0f3190108cf54228c4cfc822226c06d8f3615a5ab16a7dffb1f58aed"),
    ("libx/libxcrypt/libcrypt1_4.4.33-2_arm64", "eea0ad76ea5eb507127fea0c291622ea4ecdbb71c4b9a8ed9c76ae33fc1a0127"),
    ("o/openssl/libssl3_3.0.20-1~deb12u2_arm64", "a256e03cc3abd7243ac5c6ee91a9deb56478221ef0d3c2b0748551e13140c0bf"),
]]
# Debian trixie amd64: QEMU 10.0 user mode (static binaries)
QEMU = [_deb("q/qemu/qemu-user_10.0.13+ds-0+deb13u1_amd64", "ca6ede739327a20ae5a3498230c8a3a9a072c586e131bc6bcc1201eb1725e336", "qemu")]
# Debian bookworm amd64/all: the aarch64 cross g++ 12 and binutils (they use the host's libisl, libmpc,
# libmpfr, libgmp, libjansson, libsframe, libzstd, zlib: installed with any Debian gcc/binutils)
TOOLCHAIN = [_deb(p, h, "toolchain") for p, h in [
    ("g/gcc-12-cross/g++-12-aarch64-linux-gnu_12.2.0-14cross1_amd64", "3693e31fe2b42fcbdd92fef3e5578e91dd86af30e3d2c5fff3f9821e34a1cb91"),
    ("g/gcc-12-cross/gcc-12-aarch64-linux-gnu_12.2.0-14cross1_amd64", "43747bbcd46a4062e66e855090b8ed9c2e06a93ae5a69fb304beebbc8c36d11f"),
    ("g/gcc-12-cross/cpp-12-aarch64-linux-gnu_12.2.0-14cross1_amd64", "5921df4ad56e34e6257a1caf862474845aab6548ba7ae7852e8cdd7cb622394e"),
    ("b/binutils/binutils-aarch64-linux-gnu_2.40-2_amd64", "3d6f64a7a4ed6d73719f8fa2e85fd896f58ff7f211a6683942ba93de690aaa66"),
    ("g/gcc-12-cross/libstdc++-12-dev-arm64-cross_12.2.0-14cross1_all", "942b5710c6b9792578dfa64f7a4633bc0d3cb205b56ded11297e240ff824f5da"),
    ("g/gcc-12-cross/libgcc-12-dev-arm64-cross_12.2.0-14cross1_all", "ff1324e262bae2c3aad685c2ed52bd531ab0a2a337a0fe35c3b720947d55b2ba"),
    ("c/cross-toolchain-base/libc6-dev-arm64-cross_2.36-8cross1_all", "5e4cf6abf0e89e89c4b3006bb8b7dc47aa831df25d94df9134929b8b968cacb4"),
    ("c/cross-toolchain-base/linux-libc-dev-arm64-cross_6.1.4-1cross1_all",
     "66457f015d16b7d372db6591cff38db0da928362ff2ea1fa75491e28f6904d81"),
    ("c/cross-toolchain-base/libc6-arm64-cross_2.36-8cross1_all", "91936cbbee75771c360ed16513f6e734a25ca5517fe7c3e13dfd7835d7553186"),
    ("g/gcc-12-cross/libstdc++6-arm64-cross_12.2.0-14cross1_all", "9cba984b64d0cf11698978fc5e0fe93c7441d29b9f42f70f1c6c734cc9e2ea41"),
    ("g/gcc-12-cross/libgcc-s1-arm64-cross_12.2.0-14cross1_all", "af1e686fc6a416228222e7bfb68317dd2fa2685236301ae29141fc6108a66cac"),
]]
# PyPI, cp311 aarch64 wheels
WHEELS = [
    _wheel("executorch-1.5.1-cp311-cp311-manylinux_2_28_aarch64.whl", "executorch==1.5.1",
           "8ee02348a3ea80ddf770822911ebf78da616b73afce0fbaaa79f23311c88c66a"),
    _wheel("ai_edge_litert-1.4.0-cp311-cp311-manylinux_2_17_aarch64.whl", "ai-edge-litert==1.4.0",
           "131d1c12dedc0c45aa683106d71ea895117c2332b0efb52712965f8b5e63781d"),
    _wheel("numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl", "numpy==2.4.6",
           "0ab0a9c4ffb1a6d95ef519fe4247dba8eb6b18ad93999f76b7f657039acabd47"),
]
PINS = SYSROOT + QEMU + TOOLCHAIN + WHEELS
VERSIONS = {"qemu": "10.0.13 (Debian trixie qemu-user)", "python": "3.11.2 (Debian bookworm arm64)",
            "executorch": "1.5.1 (aarch64 wheel's C++ runtime, Module API)", "ai-edge-litert": "1.4.0 (aarch64 wheel)",
            "numpy": "2.4.6", "cross-g++": "12.2.0 (Debian bookworm)"}
ET_COMPILE = ["-std=c++17", "-O2", "-w", "-DC10_USING_CUSTOM_GENERATED_MACROS", "-DET_EVENT_TRACER_ENABLED"]
ET_LIBS = ["-lexecutorch", "-lexecutorch_backend_xnnpack", "-lexecutorch_kernels_optimized", "-lexecutorch_threadpool"]
SETUP_COMMAND = "aspp-edge setup-arm64"


class Arm64EnvMissing(AsppEdgeError):
    """The aarch64 environment (qemu, sysroot, aarch64 runtimes) is not set up."""


def cache_dir() -> Path:
    return Path(os.environ.get("ASPP_EDGE_ARM64_CACHE") or Path.home() / ".cache" / "aspp-edge" / "arm64")


def pins_digest() -> str:
    """What the environment is built from: changes with any pin or with et_run.cpp."""
    h = hashlib.sha256(json.dumps([(p.name, p.sha256) for p in PINS]).encode())
    h.update((Path(__file__).parent / "et_run.cpp").read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Arm64Env:
    root: Path

    @property
    def qemu(self) -> Path:
        return self.root / "qemu" / "usr" / "bin" / "qemu-aarch64"

    @property
    def sysroot(self) -> Path:
        return self.root / "sysroot"

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / "python3.11"

    @property
    def site(self) -> Path:
        return self.root / "site"

    @property
    def et_lib(self) -> Path:
        return self.site / "executorch" / "lib"

    @property
    def et_run(self) -> Path:
        return self.root / "bin" / "et_run"

    def missing(self) -> list[str]:
        want = {"qemu-aarch64": self.qemu, "the arm64 sysroot's python3.11": self.python, "et_run": self.et_run,
                "the aarch64 ExecuTorch libraries": self.et_lib / "libexecutorch_backend_xnnpack.so",
                "the aarch64 ai-edge-litert": self.site / "ai_edge_litert" / "interpreter.py",
                "the ready stamp": self.root / "ready.json"}
        return [name for name, path in want.items() if not path.exists()]

    def cpus(self) -> list[str]:
        """The CPU models this qemu emulates (`-cpu help`)."""
        out = subprocess.run([str(self.qemu), "-cpu", "help"], capture_output=True, text=True).stdout  # exits 1 after listing
        return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def find_env(cache: str | Path | None = None) -> Arm64Env:
    """The built environment, or one line saying what is missing and the command that builds it."""
    base = Path(cache) if cache else cache_dir()
    env = Arm64Env(base / pins_digest())
    missing = env.missing()
    if missing:
        raise Arm64EnvMissing(
            f"the aarch64 environment is not set up at {env.root} (missing: {', '.join(missing)}); run `{SETUP_COMMAND}"
            + (f" --cache {base}" if cache else "") + "` (downloads about 172 MB once, then works offline)")
    return env


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(pins: list[Pin], downloads: Path, progress) -> int:
    """Download what is not cached yet; every file checked against its pinned sha256. Returns bytes fetched."""
    downloads.mkdir(parents=True, exist_ok=True)
    fetched = 0
    wheels = [p for p in pins if p.url is None and not (downloads / p.name).is_file()]
    for pin in pins:
        target = downloads / pin.name
        if target.is_file() or pin.url is None:
            continue
        progress(f"download {pin.name}")
        tmp = target.with_suffix(target.suffix + ".part")
        try:
            with urllib.request.urlopen(pin.url, timeout=120) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise Arm64EnvMissing(f"could not download {pin.url}: {exc}") from exc
        tmp.replace(target)
        fetched += target.stat().st_size
    if wheels:
        progress("download the aarch64 wheels (pip)")
        with tempfile.TemporaryDirectory() as tmp:
            reqs = Path(tmp) / "requirements.txt"
            reqs.write_text("".join(f"{p.requirement} --hash=sha256:{p.sha256}\n" for p in wheels))
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--require-hashes",
                   "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                   "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
                   "--platform", "manylinux2014_aarch64", "-r", str(reqs), "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
                raise Arm64EnvMissing(f"pip could not download the aarch64 wheels ({', '.join(p.requirement for p in wheels)}): {last}")
            for p in wheels:
                shutil.move(str(Path(tmp) / p.name), downloads / p.name)
                fetched += (downloads / p.name).stat().st_size
    for pin in pins:
        got = _sha256(downloads / pin.name)
        if got != pin.sha256:
            (downloads / pin.name).unlink()
            raise Arm64EnvMissing(f"{pin.name} has sha256 {got}, pinned {pin.sha256}: removed; run `{SETUP_COMMAND}` again")
    return fetched


def _extract_deb(deb: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    if done.returncode != 0:
        raise AsppEdgeError(f"dpkg-deb could not extract {deb.name}: {done.stderr.strip()}")


def build_et_run(root: Path) -> Path:
    """Cross-compile et_run.cpp against the aarch64 executorch wheel's headers and libraries."""
    xtc, et = root / "xtc", root / "site" / "executorch"
    out = root / "bin" / "et_run"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(xtc / "usr" / "bin" / "aarch64-linux-gnu-g++-12"), f"--sysroot={xtc}", *ET_COMPILE,
           f"-I{et / 'include'}", f"-I{et / 'include' / 'executorch' / 'runtime' / 'core' / 'portable_type' / 'c10'}",
           str(Path(__file__).parent / "et_run.cpp"), "-o", str(out), f"-L{et / 'lib'}", "-Wl,--no-as-needed", *ET_LIBS]
    env = {**os.environ, "LD_LIBRARY_PATH": str(xtc / "usr" / "lib" / "x86_64-linux-gnu")}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise AsppEdgeError("building et_run with the aarch64 cross g++ failed: "
                            + " ".join(done.stderr.strip().splitlines()[-3:]))
    return out


def ensure_env(cache: str | Path | None = None, *, progress: bool = True) -> tuple[Arm64Env, dict]:
    """Build the environment if it is not built (downloading what is not cached). Returns it and a summary:
    seconds, bytes downloaded, bytes on disk."""
    base = Path(cache) if cache else cache_dir()
    env = Arm64Env(base / pins_digest())
    if not env.missing():
        return env, {"built": False, "seconds": 0.0, "downloaded_bytes": 0, "root": str(env.root)}
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:  # one builder at a time (pytest-xdist workers, parallel shells)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not env.missing():  # another process built it while this one waited
            return env, {"built": False, "seconds": 0.0, "downloaded_bytes": 0, "root": str(env.root)}
        return env, _build(env, base, progress)


def _build(env: Arm64Env, base: Path, progress: bool) -> dict:
    import time

    from ...console import progress_bar

    start = time.monotonic()
    if shutil.which("dpkg-deb") is None:
        raise Arm64EnvMissing("setting up the aarch64 environment needs dpkg-deb (Debian's dpkg package) to unpack .debs")
    bar = progress_bar(total=len(PINS) + 3, desc="setup-arm64", disable=not progress)
    step = lambda what: (bar.set_postfix_str(what[:40]), bar.update(0))  # noqa: E731
    downloads = base / "downloads"
    fetched = _fetch(PINS, downloads, step)
    if env.root.exists():
        shutil.rmtree(env.root)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=base))
    try:
        for pin in PINS:
            step(f"unpack {pin.name}")
            if pin.role == "site":
                with zipfile.ZipFile(downloads / pin.name) as z:
                    z.extractall(staging / "site")
            else:
                _extract_deb(downloads / pin.name, staging / {"sysroot": "sysroot", "qemu": "qemu", "toolchain": "xtc"}[pin.role])
            bar.update(1)
        for other in (staging / "qemu" / "usr" / "bin").iterdir():  # qemu-user holds every target; keep aarch64's
            if other.name != "qemu-aarch64":
                other.unlink()
        for so in (staging / "site" / "executorch" / "lib").glob("*.so"):
            so.chmod(0o755)
        step("build et_run")
        build_et_run(staging)
        bar.update(1)
        shutil.rmtree(staging / "xtc")  # only et_run needed it
        staging.rename(env.root)
        env_check = Arm64Env(env.root)
        step("check python3.11 under qemu")
        done = subprocess.run([str(env_check.qemu), "-L", str(env_check.sysroot), str(env_check.python), "-c",
                               "import numpy, ai_edge_litert.interpreter, platform; print(platform.machine())"],
                              capture_output=True, text=True, env={"PYTHONPATH": str(env_check.site), "PATH": os.environ.get("PATH", "")})
        if done.returncode != 0 or done.stdout.strip() != "aarch64":
            raise AsppEdgeError(f"the aarch64 python does not start under qemu: {done.stderr.strip()[-300:]}")
        bar.update(1)
        size = sum(f.stat().st_size for f in env.root.rglob("*") if f.is_file() and not f.is_symlink())
        summary = {"built": True, "seconds": round(time.monotonic() - start, 1), "downloaded_bytes": fetched,
                   "downloads_bytes": sum((downloads / p.name).stat().st_size for p in PINS), "disk_bytes": size,
                   "root": str(env.root), "versions": VERSIONS}
        (env.root / "ready.json").write_text(json.dumps(summary, indent=1))
        bar.update(1)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
    return summary
