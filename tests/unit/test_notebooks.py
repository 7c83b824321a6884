"""The notebooks run top to bottom without root or Docker, and their committed outputs are current.

Each notebook is executed with nbclient in a python3 kernel (the venv's own interpreter:
jupyter_client starts a "python" kernelspec with sys.executable).  The committed copies must
carry their outputs, figures included, so GitHub shows them, and those outputs must be what
the committed example sets give today (scripts/record-examples.sh records the sets and runs
the notebooks again).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
#: The notebooks and how many figures each one shows.
FIGURES = {"01-ping-journey.ipynb": 2, "02-nat-walkthrough.ipynb": 3}
REFRESH = "run `scripts/record-examples.sh --notebooks-only` and commit the notebooks"


def code_cells(notebook: Any) -> list[Any]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def figures(notebook: Any) -> int:
    return sum(
        1
        for cell in code_cells(notebook)
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    )


def text_outputs(notebook: Any) -> list[list[str]]:
    """Per code cell, its printed text and the plain-text form of its results (no images).

    Consecutive stream outputs are joined: how the kernel cuts one cell's printing into
    messages depends on timing, not on what was printed.
    """
    texts = []
    for cell in code_cells(notebook):
        parts: list[str] = []
        streaming = False
        for output in cell.outputs:
            if output.output_type == "stream":
                if streaming:
                    parts[-1] += output.text
                else:
                    parts.append(output.text)
                streaming = True
                continue
            streaming = False
            if "image/png" not in output.get("data", {}):
                parts.append(output.get("data", {}).get("text/plain", ""))
        texts.append(parts)
    return texts


def test_every_notebook_is_covered() -> None:
    assert sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_committed_notebook_was_run_top_to_bottom_with_its_figures(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{name} was not run in order: {REFRESH}"
    assert figures(notebook) == FIGURES[name], f"{name} lacks its figures: {REFRESH}"
    for cell in cells:
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_its_outputs_match_the_committed_ones(name: str) -> None:
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    fresh = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        fresh,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on failure
    assert figures(fresh) == FIGURES[name]
    assert text_outputs(fresh) == text_outputs(committed), f"{name} outputs are stale: {REFRESH}"
