"""The notebooks: committed without outputs, and run top to bottom headless on the :smoke settings (quickstart.ipynb
trains a run, results.ipynb reads its workdir), with every figure cell displaying a PNG."""

import pathlib
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ("quickstart.ipynb", "results.ipynb")
IMAGE_TAG = "image-output"  # cell tag: the cell must display a PNG
# Tagged cells per notebook: the data and reconstruction figures; the trade-off, job figures and recomputed grid.
EXPECTED_IMAGE_CELLS = {"quickstart.ipynb": 2, "results.ipynb": 3}
CELL_TIMEOUT_S = 1800  # the training cell runs the whole smoke job


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(REPO / "notebooks" / name, as_version=4)


def image_cells(notebook) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(index, cell) for index, cell in enumerate(notebook.cells) if IMAGE_TAG in cell.metadata.get("tags", [])]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_valid_and_committed_without_outputs(name):
    notebook = read(name)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"notebooks/{name} cell {index} holds stored outputs: clear them (Edit > Clear all outputs, or "
                f"jupyter nbconvert --clear-output --inplace notebooks/{name}) before committing.")
    assert len(image_cells(notebook)) == EXPECTED_IMAGE_CELLS[name]


def execute(name: str) -> nbformat.NotebookNode:
    """The notebook run top to bottom in a fresh python3 kernel started in the repository root."""
    notebook = read(name)
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(REPO)}})
    try:
        client.execute()
    except CellExecutionError as error:  # its message holds the failing cell's source and traceback
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # the kernel colours tracebacks
        pytest.fail(f"notebooks/{name} failed:\n{plain}", pytrace=False)
    return notebook


def test_quickstart_trains_a_smoke_run_and_results_reads_it(tmp_path, monkeypatch):
    workdir = tmp_path / "quickstart"
    # The kernels inherit this environment: both notebooks use the same workdir, on the smoke settings.
    monkeypatch.setenv("ANON_JAX_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("ANON_JAX_NOTEBOOK_VARIANT", "smoke")
    started = time.perf_counter()
    executed = {name: execute(name) for name in NOTEBOOKS}
    print(f"both notebooks executed in {time.perf_counter() - started:.0f} s")

    for name in ("report.json", "report.md", "config.json", "anonymizer/anonymizer.json"):
        assert (workdir / name).is_file(), name
    for name, notebook in executed.items():
        for index, cell in image_cells(notebook):
            pngs = [output for output in cell.outputs
                    if output.output_type == "display_data" and "image/png" in output.data]
            assert pngs, f"notebooks/{name} cell {index} displayed no PNG image"
    # The job's own figures are shown too (cmc, reconstructions, trade-off and the attacker's pretraining figure).
    _, figures_cell = image_cells(executed["results.ipynb"])[1]
    assert sum("image/png" in output.get("data", {}) for output in figures_cell.outputs) == 4
    # The checkpoints reproduce the report: results.ipynb recomputes the attacker's SSIM on the evaluation windows.
    text = "".join(output.get("text", "") for cell in executed["results.ipynb"].cells if cell.cell_type == "code"
                   for output in cell.outputs)
    pairs = re.findall(r"recomputed (\S+), report (\S+)", text)
    assert len(pairs) == 2, text[-3000:]
    for recomputed, reported in pairs:
        assert float(recomputed) == pytest.approx(float(reported), abs=2e-4)
