"""Many users at once, against the real app: failures, identical results, latency and the server's memory.

    python -m benchmarks.load [--calls 50] [--waves 20] [--idle 60]

Starts ``python app.py`` on a free port, then with ``gradio_client``: every call of a mixed set (``/detect``,
``/segment``, ``/classify``, ``/consensus``, ``/attention``, ``/generate`` at several sizes) once, one at a time
(the reference); then ``--calls`` of them at once, and ``--waves`` more waves like it; then 100 calls that raise
a user error interleaved with good ones. Prints failures (must be 0), whether every result equals its reference
(images pixel for pixel, reports without their timings), p50/p95 latency per wave, and the server's resident
memory before, after each wave and after ``--idle`` seconds of rest.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "demos" / "examples"
TIMINGS = {"latency_ms", "latency_iqr_ms", "runs", "latency_cached", "latency_alone", "this_run_ms", "seconds",
           "peak_mem_mb", "gflops"}


def mixed_calls() -> list[tuple[str, tuple]]:
    """The request mix: (api_name, arguments), files as paths (wrapped with handle_file when sent)."""
    scenes = [str(EXAMPLES / f"shapes_{i}.png") for i in range(3)]
    single = str(EXAMPLES / "single_0.png")
    calls = []
    for i, scene in enumerate(scenes):
        calls += [("/detect", (scene, "shapes-detection", 0.3)), ("/segment", (scene, "shapes-segmentation")),
                  ("/consensus", (scene, "shapes-segmentation", 0.1, "affinity")),
                  ("/attention", (scene, "shapes-detection", "0")),
                  ("/generate", ("a red circle", "shapes-diffusion", i, 64 + 32 * i, 96 - 16 * i, 6, 4.0, i > 0,
                                 i > 0))]
    calls.append(("/classify", (single, "shapes-clip", "circle, square, triangle, star, cross", "", "a {}")))
    return calls


def bad_calls() -> list[tuple[str, tuple]]:
    scene = str(EXAMPLES / "shapes_0.png")
    return [("/detect", (scene, "no-such-pair", 0.3)), ("/detect", (scene, "shapes-detection", 7.0)),
            ("/generate", ("", "shapes-diffusion", 0, 64, 64, 6, 4.0, False, False)),
            ("/generate", ("a red circle", "shapes-diffusion", 0, 4000, 64, 6, 4.0, False, False)),
            ("/classify", (str(EXAMPLES / "single_0.png"), "shapes-clip", "circle, square", "", "a {} {")),
            ("/consensus", (scene, "shapes-segmentation", -1.0, "affinity"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def normalise(result) -> object:
    """A result with files read into arrays and timings dropped, so two runs of one call compare equal."""
    if isinstance(result, (list, tuple)):
        return [normalise(r) for r in result]
    if isinstance(result, dict):
        return {k: normalise(v) for k, v in result.items() if k not in TIMINGS}
    if not (isinstance(result, str) and len(result) < 1024 and result.startswith("/") and Path(result).is_file()):
        return result
    if Path(result).suffix in (".png", ".webp", ".jpg"):
        return np.asarray(Image.open(result)).tobytes()
    if Path(result).suffix == ".npz":
        with np.load(result) as arrays:  # a zip: its members carry timestamps, so compare the arrays
            return {k: arrays[k].tobytes() for k in arrays.files}
    return Path(result).read_bytes()


def first_difference(a, b, path: str = "") -> str:
    """Where two normalised results first differ (a key path and both values, shortened)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{path}/{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return first_difference(x, y, f"{path}[{i}]")
    shown = [("<bytes>" if isinstance(v, bytes) else repr(v))[:60] for v in (a, b)]
    return f"{path or '/'}: {shown[0]} != {shown[1]}"


def start_app(env: dict | None = None) -> tuple[subprocess.Popen, object]:
    """``python app.py`` on a free port (with ``env`` added to the environment), and a ``gradio_client`` on it once
    it answers (at most two minutes)."""
    import os

    from gradio_client import Client

    port = free_port()
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env={**os.environ,
                                                                                          **(env or {})},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while True:
        try:
            return server, Client(f"http://127.0.0.1:{port}/", verbose=False)
        except Exception as error:
            if time.time() > deadline or server.poll() is not None:
                server.terminate()
                raise SystemExit("the app did not start") from error
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--waves", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60)
    args = parser.parse_args()
    from gradio_client import handle_file

    server, client = start_app()
    try:

        def call(request: tuple[str, tuple]) -> tuple[object, float]:
            name, arguments = request
            sent = [handle_file(a) if isinstance(a, str) and a.startswith(str(EXAMPLES)) else a for a in arguments]
            start = time.perf_counter()
            result = client.predict(*sent, api_name=name)
            return normalise(result), time.perf_counter() - start

        mix = mixed_calls()
        reference = {i: call(request)[0] for i, request in enumerate(mix)}  # one at a time (warms the models too)
        memory = [("before the waves", rss_mb(server.pid))]
        print(f"App at {client.src}; {len(mix)} distinct calls; {args.calls} at once per wave\n")
        mismatches: list[str] = []
        print("| wave | calls | failures | results equal to one-at-a-time | p50 (s) | p95 (s) "
              "| server RSS after (MB) |")
        print("|---|---|---|---|---|---|---|")
        for wave in range(1 + args.waves):
            order = [i % len(mix) for i in range(wave, wave + args.calls)]
            with ThreadPoolExecutor(args.calls) as pool:
                futures = [pool.submit(call, mix[i]) for i in order]
            failures, equal, seconds, differing = 0, 0, [], []
            for i, future in zip(order, futures, strict=True):
                try:
                    result, took = future.result()
                except Exception:
                    failures += 1
                    continue
                seconds.append(took)
                equal += result == reference[i]
                if result != reference[i]:
                    differing.append(f"{mix[i][0]} {mix[i][1][1:]}: {first_difference(reference[i], result)}")
            memory.append((f"after wave {wave}", rss_mb(server.pid)))
            q = statistics.quantiles(seconds, n=20) if len(seconds) > 1 else seconds * 19
            print(f"| {wave} | {len(order)} | {failures} | {equal}/{len(order) - failures} | "
                  f"{statistics.median(seconds):.2f} | {q[18]:.2f} | {memory[-1][1]:.0f} |", flush=True)
            mismatches += differing
        for line in mismatches:
            print(f"differs from one-at-a-time: {line}")
        time.sleep(args.idle)
        memory.append((f"after {args.idle:.0f} s idle", rss_mb(server.pid)))

        bad, errors_seen, good_equal = bad_calls(), 0, 0
        requests = [(True, bad[k % len(bad)]) if k % 2 == 0 else (False, k % len(mix)) for k in range(200)]
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(call, r if is_bad else mix[r]) for is_bad, r in requests]
        for (is_bad, r), future in zip(requests, futures, strict=True):
            try:
                result, _ = future.result()
                good_equal += (not is_bad) and result == reference[r]
            except Exception:
                errors_seen += is_bad
        serving = call(mix[0])[0] == reference[0]
        print(f"\n100 bad calls among 100 good ones: {errors_seen}/100 answered with an error, "
              f"{good_equal}/100 good results equal to one-at-a-time, app still serving: {serving}")
        first, last = memory[1][1], memory[-2][1]
        tail = [mb for _, mb in memory[1:-1]][-10:]
        print("Server RSS: " + ", ".join(f"{label} {mb:.0f} MB" for label, mb in memory)
              + f"; last wave vs first: {last / first - 1:+.1%}; the last {len(tail)} waves within "
              f"{max(tail) / min(tail) - 1:.1%} of each other (bar: 5 %)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
