"""Look at a main job's MLflow store the way a researcher does: start `mlflow ui` on it and take headless
Chromium screenshots of the parent run (overview, the report), the pretraining run's charts and a finetune
run's plots.

    python scripts/mlflow_screenshots.py runs/main [--out runs/main/screenshots] [--port 5077]

Needs Debian's Chromium (`apt-get install chromium`; not a dependency of the project). Writes one PNG per
page and prints their paths; nothing leaves the machine (Chromium runs with its background networking off).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]  # fmt: skip


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"mlflow ui did not answer at {url} within {seconds:.0f} s") from None
            time.sleep(1)


def pages(store: str) -> list[tuple[str, str]]:
    """(file name, URL fragment) of the pages to look at, from the store's runs."""
    import mlflow

    client = mlflow.MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    by_name = {r.info.run_name: r for r in runs}
    if "main job" not in by_name:
        raise SystemExit(f"no 'main job' run in {store} (runs: {sorted(by_name)})")
    out = []
    parent = by_name["main job"]
    base = f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    out += [("parent_overview", base), ("parent_report_html", f"{base}/artifacts/report/report.html")]
    if "pretrain" in by_name:
        r = by_name["pretrain"]
        out.append(("pretrain_charts", f"#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}/model-metrics"))
    finetune = sorted(n for n in by_name if n.startswith("tvr-pretrained"))
    if finetune:
        r = by_name[finetune[0]]
        base = f"#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}"
        for split in client.list_artifacts(r.info.run_id, "eval"):  # the last evaluation of a split with metrics
            steps = sorted(f.path for f in client.list_artifacts(r.info.run_id, split.path))
            last = client.list_artifacts(r.info.run_id, steps[-1]) if steps else []
            if any(f.path.endswith("/similarity.png") for f in last):
                out.append(("finetune_similarity", f"{base}/artifacts/{steps[-1]}/similarity.png"))
                out.append(("finetune_recall", f"{base}/artifacts/{steps[-1]}/recall_at_k.png"))
                break
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", type=Path, help="the main job's workdir (holds mlflow.db)")
    p.add_argument("--out", type=Path, default=None, help="default: WORKDIR/screenshots")
    p.add_argument("--port", type=int, default=5077)
    p.add_argument("--size", default="1800,1100", help="window width,height")
    args = p.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH: apt-get install chromium")
    db = args.workdir.resolve() / "mlflow.db"
    if not db.exists():
        raise SystemExit(f"no MLflow store at {db}")
    store = f"sqlite:///{db}"
    out = (args.out or args.workdir / "screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}"
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1",
                           "--port", str(args.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(f"{url}/health", 60)
        with tempfile.TemporaryDirectory() as profile:
            for name, fragment in pages(store):
                path = out / f"{name}.png"
                width, height = args.size.split(",")
                size = f"{width},{int(height) * 2}" if name.endswith("charts") else args.size  # charts: more rows
                subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                                "--virtual-time-budget=20000", f"--screenshot={path}", f"{url}/{fragment}"],
                               capture_output=True, timeout=120, check=True)  # fmt: skip
                print(f"{path}  <- {url}/{fragment}")
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
