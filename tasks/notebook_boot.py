"""A notebook's start on this machine: what the replica supervisor runs for it, at every start (create,
start, reboot, and a restart after a crash), before it becomes JupyterLab.

    python -m mlyard.tasks.notebook_boot --folder NOTEBOOK_DIR --port N [--nas NAME=PATH] [--cpus C]
                                  [--ip 0.0.0.0 --token-file PATH]    (in a pod: tasks/notebook_cluster.py)

1. Boot storage is reset: `boot/` is made anew (Jupyter's settings, runtime files, the kernels'
   registry and the notebook's home). Data storage (`data/`) is kept: it is the home's `easymaker`
   folder, and a NAS share appears beside it under its mount name (a link, never copied or deleted).
2. The start-up scripts: every file of `data/cont-init.d` that is executable and whose first line
   starts with `#!` runs, in alphanumeric order, in the data storage; each writes
   `{SCRIPT}.exitcode` and `{SCRIPT}.output` beside it, and `data/cont-init.output` holds the whole
   log, including the files skipped and why. A script that fails is logged; the notebook still starts.
3. The environments under `data/custom-conda-envs` (a venv or a conda env, anything with
   `bin/python`) that can run ipykernel become Jupyter kernels; one that cannot is logged with what to do.
4. JupyterLab, opening in the data storage (what a person saves where it opens is kept; a NAS share is
   linked there too), on 127.0.0.1:N (in a pod: all addresses, behind its Service) with the notebook's token (from its private token file, through the
   environment, never the command line), no browser, no update checks or news from the internet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

SCRIPT_TIMEOUT = 600.0  # a start-up script that hangs is ended, so the notebook still starts
ENVS, INIT, INIT_LOG, DATA = "custom-conda-envs", "cont-init.d", "cont-init.output", "easymaker"
OUTPUT_SUFFIXES = (".exitcode", ".output")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reset_boot(folder: Path, nas: dict[str, Path]) -> Path:
    """Make boot storage anew; the notebook's home with its data storage and NAS shares; the home."""
    boot = folder / "boot"
    shutil.rmtree(boot, ignore_errors=True)  # links to data and NAS are removed, never followed
    home = boot / "home"
    for sub in (home, boot / "jupyter" / "config", boot / "jupyter" / "data" / "kernels", boot / "jupyter" / "runtime"):
        sub.mkdir(parents=True, mode=0o700)
    (home / DATA).symlink_to(folder / "data", target_is_directory=True)
    for name, path in nas.items():
        (home / name).symlink_to(path, target_is_directory=True)
    return home


def link_shares(data: Path, nas: dict[str, Path]) -> Path:
    """The data storage, where JupyterLab opens, with each NAS share linked in it under its mount name
    (made again at every start; a file or folder of the user's with that name is left alone)."""
    for name, path in nas.items():
        link = data / name
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            link.symlink_to(path, target_is_directory=True)
        else:
            print(f"NAS share {name}: {link} is a file or folder of yours; the share is at ~/{name}", flush=True)
    return data


def _runnable(path: Path) -> str | None:
    """Why a file of cont-init.d is skipped, or None when it runs."""
    if not os.access(path, os.X_OK):
        return "not executable (chmod +x it)"
    with open(path, "rb") as fh:
        if fh.read(2) != b"#!":
            return "its first line does not start with #!"
    return None


def run_init_scripts(data: Path, env: dict[str, str]) -> list[tuple[str, int | None]]:
    """Step 2: the scripts of cont-init.d in alphanumeric order; (name, exit code) of each one that ran."""
    folder, ran = data / INIT, []
    with open(data / INIT_LOG, "w") as log:
        log.write(f"{_now()} start-up scripts of {folder}\n")
        scripts = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.endswith(OUTPUT_SUFFIXES)) \
            if folder.is_dir() else []
        if not scripts:
            log.write(f"{_now()} none to run\n")
        for script in scripts:
            why = _runnable(script)
            if why:
                log.write(f"{_now()} skipped {script.name}: {why}\n")
                continue
            log.write(f"{_now()} running {script.name}\n")
            log.flush()
            out_path = script.with_name(script.name + ".output")
            with open(out_path, "wb") as out:
                try:
                    code: int | None = subprocess.run([str(script)], cwd=data, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                      stdin=subprocess.DEVNULL, timeout=SCRIPT_TIMEOUT).returncode
                except subprocess.TimeoutExpired:
                    code = 124
                    out.write(f"\nended after {SCRIPT_TIMEOUT:.0f} s\n".encode())
                except OSError as exc:
                    code = 126
                    out.write(f"could not run: {exc}\n".encode())
            script.with_name(script.name + ".exitcode").write_text(f"{code}\n")
            log.write(out_path.read_text(errors="replace"))
            log.write(f"{_now()} {script.name} exited with {code}\n")
            ran.append((script.name, code))
        log.write(f"{_now()} done\n")
    return ran


def register_kernels(data: Path, kernels_dir: Path) -> list[str]:
    """Step 3: a kernel for each environment of custom-conda-envs that has ipykernel."""
    found = []
    envs = data / ENVS
    for env in sorted(envs.iterdir()) if envs.is_dir() else []:
        python = env / "bin" / "python"
        if not python.exists():
            continue
        check = subprocess.run([str(python), "-c", "import ipykernel"], capture_output=True, timeout=60)
        if check.returncode != 0:
            print(f"environment {env.name}: no kernel (it lacks ipykernel: {python} -m pip install ipykernel)",
                  flush=True)
            continue
        spec = {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": f"Python ({env.name})", "language": "python", "env": {"VIRTUAL_ENV": str(env)}}
        (kernels_dir / env.name).mkdir(parents=True, exist_ok=True)
        (kernels_dir / env.name / "kernel.json").write_text(json.dumps(spec, indent=1))
        found.append(env.name)
        print(f"environment {env.name}: kernel 'Python ({env.name})'", flush=True)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlyard.tasks.notebook_boot", description=__doc__.splitlines()[0])
    parser.add_argument("--folder", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--ip", default="127.0.0.1", help="where Jupyter listens (0.0.0.0 in a pod, behind its Service)")
    parser.add_argument("--token-file", type=Path, help="the token (default: FOLDER/token)")
    parser.add_argument("--nas", action="append", default=[], help="NAME=PATH: a NAS share in the home")
    parser.add_argument("--cpus", type=int, default=0, help="the instance type's cores (threads of the kernels)")
    parser.add_argument("--base-url", default="/", help="the path JupyterLab serves under (mlyard's front door's)")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    nas = dict((name, Path(path)) for name, path in (item.split("=", 1) for item in args.nas))
    t0 = time.monotonic()

    home = reset_boot(folder, nas)  # 1
    jupyter = folder / "boot" / "jupyter"
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
           "JUPYTER_DATA_DIR": str(jupyter / "data"), "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
           "MLYARD_NOTEBOOK_DATA": str(folder / "data"), "JUPYTER_TOKEN": (args.token_file or folder / "token").read_text().strip()}
    for key in ("MLYARD_REPLICA_TOKEN", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"):
        env.pop(key, None)  # the platform's credentials are not the notebook user's
    if args.cpus:
        threads = str(min(args.cpus, os.cpu_count() or args.cpus))
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads})
    script_env = {k: v for k, v in env.items() if k != "JUPYTER_TOKEN"}
    ran = run_init_scripts(folder / "data", script_env)  # 2
    kernels = register_kernels(folder / "data", jupyter / "data" / "kernels")  # 3
    print(f"boot ready in {time.monotonic() - t0:.1f} s: {len(ran)} start-up script(s), {len(kernels)} extra "
          "kernel(s); starting JupyterLab", flush=True)
    work = link_shares(folder / "data", nas)
    os.chdir(work)  # JupyterLab opens in the data storage: what a person saves where it opens is kept
    os.execve(sys.executable, [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ip={args.ip}",  # 4
                               f"--port={args.port}", "--port-retries=0", f"--ServerApp.root_dir={work}",
                               f"--ServerApp.base_url={args.base_url}",
                               # on 127.0.0.1, a page of another site must not reach it by a name that resolves
                               # here (DNS rebinding); in a pod, only mlyard's front door reaches it (its
                               # NetworkPolicy), by its Service's name, and the probes by the pod's address
                               f"--ServerApp.allow_remote_access={args.ip != '127.0.0.1'}", "--LabApp.news_url=",
                               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                               "--LabApp.extension_manager=readonly",
                               *(["--allow-root"] if os.geteuid() == 0 else [])], env)  # root: as the stack runs


if __name__ == "__main__":
    main()
