"""Helpers shared by scripts/bench-merge, scripts/bench-materialize and
scripts/bench-chunks: timing a tool in its own process, the disk space a
run takes, building the CLI."""

import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024


def measure(command):
    """Runs `command`; returns (seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(command)}\n{stderr}")
    return elapsed, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


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
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return (os.path.join(target, "release", "coreml-multifunction"),
            os.path.join(target, "debug", "coreml-multifunction"))


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
