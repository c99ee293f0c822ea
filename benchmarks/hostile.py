"""The hostile tier: replays failure cases against the program and a real server, and counts
the outcomes (clear / ok / traceback / silent wrong / unclear / hang).

    python benchmarks/hostile.py [--workdir=W] [--idle=1100] [--trickle=1010]

Program cases (flaxdigits.testing.HOSTILE_PROGRAM_CASES): bad configs, workdirs, data files
and environment variables; each must end in one line and a non-zero exit ('clear'). Server
cases, against `launch.py --mode=serve` of W (a tiny model is trained into a temporary
workdir when none is given): every bad body of flaxdigits.testing.bad_bodies must get its
4xx ('clear'); with --idle idle sockets open, and with --trickle sockets each sending one
header byte every 4 s, /healthz must still answer within 3 s ('ok'; 'hang' otherwise).
Everything talks to 127.0.0.1 only, with bounded counts and times.
"""

import argparse
import collections
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flaxdigits import testing  # noqa: E402

LAUNCH = REPO / "launch.py"


def program_cases(root: pathlib.Path) -> list[tuple[str, str, str]]:
    results = []
    for number, case in enumerate(testing.HOSTILE_PROGRAM_CASES):
        folder = root / f"case{number}"
        folder.mkdir()
        outcome, line, _ = testing.run_hostile_case(case, folder, LAUNCH)
        if outcome == "clear" and case.line not in line:
            outcome = "unclear"  # one line, but not the one that names the cause
        results.append((f"program: {case.name}", outcome, line))
    return results


def healthz_within(url: str, seconds: float) -> str:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=seconds) as response:
            ok = response.status == 200
    except OSError:
        return "hang"
    return "ok" if ok and time.monotonic() - start < seconds else "hang"


def server_cases(workdir: pathlib.Path, idle: int, trickle: int) -> list[tuple[str, str, str]]:
    port = testing.free_port()
    process = subprocess.Popen([sys.executable, str(LAUNCH), "--config=tiny",
                                f"--workdir={workdir}", "--mode=serve", f"--port={port}"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    url = f"http://127.0.0.1:{port}"
    results = []
    try:
        testing.wait_until_up(url + "/healthz", process)
        for name, body, kind, status in testing.bad_bodies(4 * 1024 * 1024):
            request = urllib.request.Request(url + "/api/predict", data=body,
                                             headers={"Content-Type": kind})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    got = response.status
            except urllib.error.HTTPError as e:
                got = e.code
            except OSError as e:
                got = f"no answer ({e})"
            outcome = ("clear" if got == status else "traceback" if got == 500 else
                       "silent wrong" if got == 200 else "unclear")
            results.append((f"server body: {name}", outcome, f"{got} (want {status})"))
        for count, label, trickling in ((idle, "idle sockets", False),
                                        (trickle, "sockets trickling headers", True)):
            sockets = []
            try:
                for _ in range(count):
                    try:
                        sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                    except OSError:
                        break
                outcome = healthz_within(url, 3.0)
                if trickling and outcome == "ok":  # keep trickling for 12 s: still reachable?
                    for second in range(3):
                        for s in sockets:
                            try:
                                s.send(b"G")
                            except OSError:
                                pass
                        time.sleep(4)
                        if healthz_within(url, 3.0) != "ok":
                            outcome = "hang"
                            break
                results.append((f"server: {len(sockets)} {label}", outcome,
                                "/healthz answered within 3 s" if outcome == "ok" else
                                "/healthz did not answer within 3 s"))
            finally:
                for s in sockets:
                    s.close()
        if process.poll() is not None:
            results.append(("server: still running", "traceback", process.stderr.read()[-300:]))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=pathlib.Path, default=None,
                        help="a trained workdir to serve (default: train configs/tiny.py)")
    parser.add_argument("--idle", type=int, default=1100)
    parser.add_argument("--trickle", type=int, default=1010)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        workdir = args.workdir
        if workdir is None:
            workdir = root / "tiny"
            subprocess.run([sys.executable, str(LAUNCH), "--config=tiny", f"--workdir={workdir}",
                            f"--config.data.dir={testing.write_idx_folder(root / 'digits')}"],
                           check=True, capture_output=True, cwd=REPO)
        results = program_cases(root) + server_cases(workdir, args.idle, args.trickle)
    width = max(len(name) for name, _, _ in results)
    for name, outcome, detail in results:
        print(f"{name:<{width}}  {outcome:<12}  {detail[:150]}")
    counts = collections.Counter(outcome for _, outcome, _ in results)
    print("outcomes: " + ", ".join(f"{k} {counts[k]}" for k in
                                   ("clear", "ok", "traceback", "silent wrong", "unclear",
                                    "hang")) + f" (of {len(results)})")
    return 0 if set(counts) <= {"clear", "ok"} else 1


if __name__ == "__main__":
    sys.exit(main())
