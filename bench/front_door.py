"""How fast the front door answers, measured as a user meets it: each figure is a fresh process started
from a shell in a project directory (PATH, HOME and LANG only; the platform is found as `./.mlyard`),
command start to exit, default settings.

Targets (issue 8): `mlyard --help` <= 0.5 s; list and show <= 1.5 s with the stack up; a bad spec refused
<= 2 s; `mlyard up` <= 30 s from cold and <= 2 s when up; a trivial training from the Run button
(a flow run of train/train-local) to COMPLETE <= 10 s; loading a registered scikit-learn model in a fresh
process <= 1 s. Run with `make bench` (never part of the tests).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REPEATS = 5


def shell(*argv: str, cwd: Path, extra: dict[str, str] | None = None, check: bool = True) -> tuple[float, str]:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8", **(extra or {})}
    started = time.perf_counter()
    proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - started
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def timed(label: str, target: float, *argv: str, cwd: Path, check: bool = True, repeats: int = REPEATS) -> None:
    times = [shell(*argv, cwd=cwd, check=check)[0] for _ in range(repeats)]
    med = statistics.median(times)
    print(f"{label:<44} median {med:6.2f} s  min {min(times):6.2f}  max {max(times):6.2f}  "
          f"target <= {target:g} s  {'met' if med <= target else 'NOT met'}")


def main() -> None:
    project = Path(tempfile.mkdtemp(prefix="mlyard-bench-door-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    mlyard = str(BIN / "mlyard")
    try:
        cold, _ = shell(mlyard, "up", cwd=project, extra={"MLYARD_PREFECT_PORT": port})
        print(f"{'mlyard up, cold (fresh home)':<44} {cold:6.2f} s  target <= 30 s  {'met' if cold <= 30 else 'NOT met'}")
        timed("mlyard up, already up", 2, mlyard, "up", cwd=project)
        timed("mlyard --help", 0.5, mlyard, "--help", cwd=project)

        shutil.copytree(EXAMPLES / "sklearn_digits", project / "algo")
        (project / "train.yaml").write_text("name: bench\nexperiment: bench\nsource_uri: algo\nentry_point: train.py\n"
                                            "hyperparameters: {epochs: 1, epoch_seconds: 0}\n")
        _, out = shell(mlyard, "train", "-f", "train.yaml", "--json", cwd=project)
        training = json.loads(out[out.index("{"):out.rindex("}") + 1])
        shell(mlyard, "models", "create", "bench", "--from-training", training["training_id"], "--alias", "champion",
              cwd=project)
        timed("mlyard trainings list", 1.5, mlyard, "trainings", "list", cwd=project)
        timed("mlyard trainings show ID", 1.5, mlyard, "trainings", "show", training["training_id"], cwd=project)
        timed("mlyard models list", 1.5, mlyard, "models", "list", cwd=project)

        (project / "typo.yaml").write_text("name: typo\nsource_uri: algo\nentry_point: trian.py\n")
        timed("bad spec refused: misspelled entry point", 2, mlyard, "train", "-f", "typo.yaml", cwd=project,
              check=False)
        (project / "nomodel.yaml").write_text("name: nomodel\nmodel: bench@nosuchalias\ninput_uri: algo\n"
                                              "input_format: jsonl\noutput_uri: out\n")
        timed("bad spec refused: missing model alias", 2, mlyard, "batch", "-f", "nomodel.yaml", cwd=project,
              check=False)

        model_dir = project / ".mlyard" / "mlartifacts"
        found = next(model_dir.rglob("MLmodel")).parent
        timed("load a registered sklearn model, fresh process", 1, str(BIN / "python"), "-c",
              f"from mlyard.tasks.models import load_model; load_model({str(found)!r})", cwd=project)
        # The floor under that figure: scikit-learn's own import (SciPy, pandas), before any model is read.
        timed("  floor: import sklearn.base, fresh process", 1, str(BIN / "python"), "-c", "import sklearn.base",
              cwd=project)

        # From the flow run's creation (the button press) to its COMPLETED state, as Prefect recorded them:
        # run_deployment's own polling (5 s by default) would round the figure up.
        run_button = ("from prefect.deployments import run_deployment\n"
                      "spec = {'name': 'run-button', 'experiment': 'bench', 'source_uri': %r, 'entry_point': 'noop.py'}\n"
                      "fr = run_deployment('train/train-local', parameters={'spec': spec}, timeout=300, poll_interval=0.5)\n"
                      "print('RUN', (fr.end_time - fr.created).total_seconds(), fr.state.type.value)\n")
        (project / "algo" / "noop.py").write_text("pass\n")
        env = {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        times = []
        for _ in range(3):
            _, out = shell(str(BIN / "python"), "-c", run_button % str(project / "algo"), cwd=project, extra=env)
            line = [x for x in out.splitlines() if x.startswith("RUN ")][0].split()
            assert line[2] == "COMPLETED", out
            times.append(float(line[1]))
        med = statistics.median(times)
        print(f"{'Run button (train/train-local) to COMPLETE':<44} median {med:6.2f} s  min {min(times):6.2f}  "
              f"max {max(times):6.2f}  target <= 10 s  {'met' if med <= 10 else 'NOT met'}")
    finally:
        shell(mlyard, "down", cwd=project, check=False)
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
