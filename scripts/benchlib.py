"""Helpers shared by scripts/bench-merge, scripts/bench-materialize,
scripts/bench-chunks and scripts/bench-reference: timing a tool in its own
process, the disk space a run takes, building the CLI."""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024


def run_with_peak(command):
    """Runs `command`; returns (its stdout, seconds, peak RSS in MiB). Its
    output goes through temporary files, not pipes, so that a child that
    prints much cannot block while this waits for it (os.wait4, for the
    child's own resource usage)."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            stderr.seek(0)
            sys.exit(f"failed: {' '.join(command)}\n{stderr.read().decode(errors='replace')}")
        stdout.seek(0)
        return stdout.read().decode(), elapsed, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def measure(command):
    """Runs `command`; returns (seconds, peak RSS in MiB)."""
    _, seconds, peak = run_with_peak(command)
    return seconds, peak


def used_bytes(path):
    """Bytes in use on the file system holding `path`, once it has settled:
    after a sync, and once two readings a quarter second apart agree, since
    some file systems (XFS among them) free a deleted file's blocks in the
    background, after the unlink and the sync have returned."""
    def reading():
        os.sync()
        stats = os.statvfs(path)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize
    previous = reading()
    for _ in range(120):
        time.sleep(0.25)
        current = reading()
        if current == previous:
            return current
        previous = current
    return previous


def file_system(path):
    """The type of the file system holding `path` ("xfs", "ext2/ext3", ...)."""
    done = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def package_size(path):
    """The bytes of every file under `path` (apparent sizes, not blocks)."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def build_cli():
    """Builds the CLI, debug and release; returns (release, debug) binaries."""
    print("building the CLI (release and debug) ...", flush=True)
    for profile in ([], ["--release"]):
        subprocess.run(["cargo", "build", "--quiet", "--bin", "coreml-multifunction", *profile], cwd=ROOT, check=True)
    return cli_path("release"), cli_path("debug")


def release_cli():
    """Builds the release CLI only; returns its binary."""
    print("building the release CLI ...", flush=True)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--bin", "coreml-multifunction"], cwd=ROOT, check=True)
    return cli_path("release")


def cli_path(profile):
    """The CLI binary a `cargo build` of `profile` writes."""
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, profile, "coreml-multifunction")


def run_tool(command, output, runs, work):
    """Runs `command`, which writes the package `output`, `runs` times (the
    output removed first each time); returns (median seconds, largest peak
    RSS in MiB, median new disk bytes on the file system of `work`)."""
    times, peaks, disks = [], [], []
    for _ in range(runs):
        if os.path.exists(output):
            shutil.rmtree(output)
        before = used_bytes(work)
        seconds, peak = measure(command)
        disks.append(used_bytes(work) - before)
        times.append(seconds)
        peaks.append(peak)
    return statistics.median(times), max(peaks), statistics.median(disks)
