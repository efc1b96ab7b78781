"""benchmarks/_results.py: the RESULTS.md section writer every benchmark uses, and the machine header."""

from __future__ import annotations

from pathlib import Path

from benchmarks._results import header, machine, write_section

BEFORE = """# Benchmark results

Intro paragraph.

## data_prep

old data_prep line, two trailing spaces kept:{TRAILING}
| a | b |

## loader

old loader line

## finetune: VCMR corpus search

last section, no blank line at the end""".format(TRAILING="  ")


def sections(text: str) -> dict[str, str]:
    """'## title' -> the text from that line to the next '## ' line (the part before the first: key '')."""
    out, key = {"": ""}, ""
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            key = line.strip()
            out[key] = ""
        out[key] += line
    return out


def test_replace_a_section_keeps_the_others_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(BEFORE + "\n")
    write_section("## loader", "## loader\n\nnew loader line\n", path)
    before, after = sections(BEFORE + "\n"), sections(path.read_text())
    assert list(after) == list(before)  # same sections, same order
    assert after["## loader"] == "## loader\n\nnew loader line\n\n"
    for key in ("", "## data_prep", "## finetune: VCMR corpus search"):
        assert after[key] == before[key], key


def test_replace_the_last_section_and_the_first(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(BEFORE + "\n")
    write_section("## finetune: VCMR corpus search", "## finetune: VCMR corpus search\n\nnew\n", path)
    write_section("## data_prep", "## data_prep\nnew data_prep", path)
    after = sections(path.read_text())
    assert after["## finetune: VCMR corpus search"] == "## finetune: VCMR corpus search\n\nnew\n"
    assert after["## data_prep"] == "## data_prep\nnew data_prep\n\n"
    assert after["## loader"] == sections(BEFORE)["## loader"]


def test_append_a_new_section_after_the_others(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(BEFORE + "\n")
    write_section("## device check", "## device check\n\nnumbers\n", path)
    assert path.read_text() == BEFORE + "\n\n## device check\n\nnumbers\n"


def test_a_missing_file_starts_with_the_title(tmp_path: Path) -> None:
    path = tmp_path / "new.md"
    write_section("## loader", "## loader\n\nx", path)
    assert path.read_text() == "# Benchmark results\n\n## loader\n\nx\n"


def test_a_heading_inside_a_section_is_not_a_section_title(tmp_path: Path) -> None:
    """Only a whole line equal to the title starts the section: '## loader' inside a line does not."""
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\n## data_prep\n\nsee ## loader below\n\n## loader\n\nold\n")
    write_section("## loader", "## loader\n\nnew\n", path)
    assert path.read_text() == "# R\n\n## data_prep\n\nsee ## loader below\n\n## loader\n\nnew\n"


def test_the_header_names_the_machine_and_the_versions() -> None:
    info = machine("torch", "numpy")
    lines = header(info, "python benchmarks/x.py --write")
    assert lines[0] == f"Measured {info['date']} by `python benchmarks/x.py --write`."
    assert lines[3].startswith(f"- CPU: {info['cpu']}, {info['cores']} cores, RAM ")
    assert info["versions"].startswith("Python 3.") and ", torch " in info["versions"]
    assert " thread(s)), numpy " in info["versions"]
