"""The dataset registry (finetune/datasets.py) is the one place that names datasets (docs/design.md section 6,
"Adding a dataset"): every record has its converter, entry script and config; launch/ and the recipe write no
dataset name out; a dataset added by nothing but a record is converted, finetuned, tabled and ablated."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

from finetune import datasets
from finetune.datasets import DATASETS
from launch import ablate, report, stages

REPO = Path(__file__).resolve().parents[2]
# Where a dataset name may be written out in launch/ or the recipe, and why.
ALLOWED = {("launch/stages.py", "tvr"), ("launch/stages.py", "msrvtt")}  # the main job's default recipes


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_record_has_its_converter_entry_script_and_config(name: str) -> None:
    d = DATASETS[name]
    assert callable(d.converter.main), f"data_prep/{name}.py has no main(argv)"
    script = (REPO / d.script).read_text()
    assert f'main("{name}")' in script, f"{d.script} does not run the recipe of {name!r}"
    assert (REPO / d.config).is_file(), f"no {d.config}"
    assert {m.label for m in d.paper_metrics} <= {m.label for m in d.metrics}
    assert len(d.metrics) == len({m.label for m in d.metrics}), f"{name}: duplicate metric labels"


def names_written_out(path: Path) -> set[str]:
    """Dataset names that appear as whole string constants in a module (dict keys, lists, comparisons)."""
    tree = ast.parse(path.read_text())
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in DATASETS}


def test_no_dataset_name_is_written_out_outside_the_registry() -> None:
    files = [*sorted((REPO / "launch").glob("*.py")), REPO / "finetune" / "recipe.py"]
    found = {(f.relative_to(REPO).as_posix(), name) for f in files for name in names_written_out(f)}
    assert found - ALLOWED == set(), "dataset names written out; read finetune/datasets.py instead"


def test_a_dataset_added_by_its_record_alone_is_converted_finetuned_tabled_and_ablated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A seventh dataset: a record like MSR-VTT's under a new name, and nothing else changed in launch/."""
    monkeypatch.setitem(DATASETS, "youcook2", replace(DATASETS["msrvtt"], name="youcook2", title="YouCook2"))
    assert datasets.get("youcook2").script == "finetune/youcook2.py"
    # the main job: accepted as a recipe, found in a data folder, converted by data_prep.youcook2
    folder = tmp_path / "data" / "youcook2"
    (folder / "features").mkdir(parents=True)
    (folder / "features" / "v.npz").write_bytes(b"")
    overrides = [f"data={tmp_path / 'data'}", "until=data", "finetune.recipes=[youcook2]"]
    cfg = stages.load_config(stages.DEFAULT_CONFIG, overrides)
    inputs = ["--annotations", str(folder), "--features", str(folder / "features"), "--feature-layout", "hero"]
    assert stages.discover(tmp_path / "data") == {"youcook2": inputs}
    assert [name for _, name, _, _ in stages.data_stages(cfg, tmp_path / "work")] == ["youcook2 -> shards"]
    # the report's table: its metrics, in the record's order
    runs = {"pretrained": [{"R@1": 10.0, "R@5": 30.0, "R@10": 50.0, "MedR": 9.0}] * 2}
    text, _ = report.finetune_table("youcook2", runs)
    assert text.splitlines()[0].split("|")[2:6] == [" R@1 ", " R@5 ", " R@10 ", " MedR "]
    # an ablation table's columns: its title and the papers' columns
    acfg = ablate.load_config(ablate.DEFAULT_CONFIG, ["finetune.recipes=[youcook2]"])
    ablate.validate(acfg, "feel")
    columns = ["zero-shot R@10", "YouCook2 R@1", "YouCook2 R@5", "YouCook2 R@10"]
    assert ablate.columns(ablate.make_plan(acfg, "feel")) == columns
