"""Building llama.cpp's tools once per machine from the pinned llama-cpp-python source (atomic, one
builder at a time), and the ``make llama-tools`` command line (:func:`main`)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from ...artifacts import file_lock
from ...runtime import pid_alive
from ..procs import set_pdeathsig, tail
from .locate import CMAKE_FLAGS, ENV_VAR, INSTALL_CMAKE, INSTALL_COMPILER, JOBS_ENV_VAR, PACKAGE, TOOLS, BuildError, _complete, _identity, build_dir, build_supported, status, tools_dir, version

_TMP = re.compile(r"^\.llama\.cpp-.*\.p(?P<pid>\d+)\.tmp$")


def _remove_stale(root: Path) -> None:
    for old in root.glob(".llama.cpp-*.tmp"):
        m = _TMP.match(old.name)
        if m and int(m["pid"]) != os.getpid() and not pid_alive(int(m["pid"])):
            shutil.rmtree(old, ignore_errors=True)


def _run_logged(cmd, log: Path, cwd=None, progress: bool = False, env=None) -> None:
    """Run ``cmd``, its output appended to ``log``; print CMake's "Built target" lines as progress."""
    with open(log, "ab") as f:
        f.write(("\n$ " + " ".join(map(str, cmd)) + "\n").encode())
        f.flush()
        # its own process group: an interrupt stops cmake *and* the make / compiler processes under it
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=set_pdeathsig(signal.SIGKILL))
        try:
            for raw in proc.stdout:
                f.write(raw)
                line = raw.decode(errors="replace").strip()
                if progress and "Built target" in line:
                    print("   ", line, flush=True)
            rc = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc != 0:
        raise BuildError(f"`{' '.join(map(str, cmd))}` failed with code {rc}. Last lines of the build log "
                         f"({log}):\n{tail(log, 40)}")


def build(force: bool = False, jobs: int | None = None, quiet: bool = False) -> Path:
    """Build the four tools (once per machine) and return the folder with ``bin/`` and ``convert/``.

    Steps: ``pip download --no-deps --no-binary :all: llama-cpp-python==V`` (pip's cache makes it a local
    copy after the first time), unpack ``vendor/llama.cpp``, ``cmake`` configure + build of the four
    targets, copy the binaries and ``convert_hf_to_gguf.py`` (with its ``conversion`` package and
    ``gguf-py``), run each binary once, then rename the folder into place.
    """
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    ok, why = build_supported()
    if not ok:
        raise BuildError(why)
    if os.environ.get(ENV_VAR):
        say(f"{ENV_VAR} is set: using the binaries in {tools_dir()}, nothing to build")
        return tools_dir()
    pkg_version = version()
    target = build_dir(pkg_version)
    if _complete(target) and not force:
        record = {}
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((target / "build.json").read_text())
        when = f" (the build took {record['total_s']:.0f} s on {record['built']})" if "total_s" in record else ""
        say(f"llama.cpp tools ({PACKAGE}=={pkg_version}): already built in {target}{when}")
        return target
    if shutil.which("cmake") is None:
        raise BuildError(INSTALL_CMAKE)
    if not _identity(pkg_version)["cxx"]:
        raise BuildError(INSTALL_COMPILER)
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    # one builder per build folder: a second `make llama-tools` waits, then finds the build done
    with file_lock(root / f".{target.name}.lock"):
        if _complete(target) and not force:  # another process built it while we waited
            say(f"llama.cpp tools: built meanwhile by another process in {target}")
            return target
        _remove_stale(root)
        work = root / f".{target.name}.p{os.getpid()}.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            _build_into(work, target, pkg_version, jobs, say)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _build_into(work: Path, target: Path, pkg_version: str, jobs: int | None, say) -> None:
    t_start = time.perf_counter()
    log = work / "build.log"
    jobs = int(jobs or os.environ.get(JOBS_ENV_VAR) or 2)
    say(f"Building llama.cpp's tools ({', '.join(TOOLS)}) from {PACKAGE}=={pkg_version}'s source, -j{jobs}; "
        f"log {log}")
    dl = work / "download"
    _run_logged([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                 f"{PACKAGE}=={pkg_version}", "-d", str(dl)], log)
    sdists = sorted(dl.glob("*.tar.gz"))
    if not sdists:
        raise BuildError(f"pip download gave no source archive of {PACKAGE}=={pkg_version} in {dl}")
    sdist = sdists[0]
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0] if names else ""
        prefix = f"{top}/vendor/llama.cpp"
        members = [m for m in tar.getmembers() if m.name == prefix or m.name.startswith(prefix + "/")]
        if not any(m.name == f"{prefix}/CMakeLists.txt" for m in members):
            raise BuildError(f"{sdist.name} has no vendor/llama.cpp/CMakeLists.txt: this {PACKAGE} version does "
                             f"not carry the llama.cpp source")
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(work / "src", members=members, **kwargs)
    src = work / "src" / prefix
    sdist.unlink()
    t_download = time.perf_counter() - t_start
    say(f"  source: {sdist.name} (sha256 {digest[:12]}), {t_download:.0f} s")

    bdir = work / "build"
    env = {**os.environ}
    t0 = time.perf_counter()
    _run_logged(["cmake", "-S", str(src), "-B", str(bdir), *CMAKE_FLAGS], log, env=env)
    t_configure = time.perf_counter() - t0
    say(f"  configured in {t_configure:.0f} s; compiling (4-5 minutes on 2 idle cores, more on a busy machine)")
    t0 = time.perf_counter()
    _run_logged(["cmake", "--build", str(bdir), "-j", str(jobs), "--target", *TOOLS], log, progress=True, env=env)
    t_compile = time.perf_counter() - t0

    out = work / "out"
    (out / "bin").mkdir(parents=True)
    for t in TOOLS:
        built = bdir / "bin" / t
        if not built.is_file():
            raise BuildError(f"the build finished but {built} is missing. Build log: {log}")
        shutil.copy2(built, out / "bin" / t)
    conv = out / "convert"
    conv.mkdir()
    shutil.copy2(src / "convert_hf_to_gguf.py", conv / "convert_hf_to_gguf.py")
    for sub in ("conversion", "gguf-py"):
        if (src / sub).is_dir():
            shutil.copytree(src / sub, conv / sub, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    for sub in ("LICENSE",):
        if (src / sub).is_file():
            shutil.copy2(src / sub, out / sub)
    for t in TOOLS:  # each binary starts (static libraries, nothing missing)
        r = subprocess.run([str(out / "bin" / t), "--help"], capture_output=True, text=True, timeout=60)
        if r.returncode not in (0, 1):
            raise BuildError(f"{t} --help exited with {r.returncode}: {(r.stdout + r.stderr)[-1500:]}")
    seconds = time.perf_counter() - t_start
    record = {**_identity(pkg_version), "sdist": sdist.name, "sdist_sha256": digest, "jobs": jobs,
              "download_s": round(t_download, 1), "configure_s": round(t_configure, 1),
              "compile_s": round(t_compile, 1), "total_s": round(seconds, 1),
              "built": time.strftime("%Y-%m-%d %H:%M:%S"), "tools": list(TOOLS)}
    (out / "build.json").write_text(json.dumps(record, indent=1))
    shutil.copy2(log, out / "build.log")
    (out / ".complete").write_text("ok\n")
    if target.exists():  # an old or incomplete build (force=True): move it aside, then drop it
        old = target.parent / f".{target.name}.old.p{os.getpid()}.tmp"
        os.rename(target, old)
        shutil.rmtree(old, ignore_errors=True)
    os.rename(out, target)
    say(f"llama.cpp tools built in {seconds:.0f} s (download/unpack {t_download:.0f} s, configure "
        f"{t_configure:.0f} s, compile {t_compile:.0f} s) -> {target}")


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m quantedu.engines.llama_cpp",
                                description="Build (once per machine) or locate llama.cpp's command-line tools.")
    p.add_argument("action", nargs="?", default="build", choices=["build", "status", "where"])
    p.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    p.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (default 2)")
    a = p.parse_args(argv)
    if a.action == "where":
        print(tools_dir())
        return 0
    if a.action == "status":
        s = status()
        print(json.dumps(s, indent=1))
        return 0 if s["ok"] else 1
    try:
        build(force=a.force, jobs=a.jobs)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

