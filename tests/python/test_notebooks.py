"""Executes every example notebook (notebooks/*.ipynb) against the kernel and
checks its outputs.

A code cell tagged `raises-exception` must fail (it shows a refusal, say);
every other code cell must produce output and no error. A cell's metadata
`expect` says more: `ename` (the error it raises), `mime` (MIME types its
outputs must include, e.g. a Vega-Lite chart) and `text` (strings its
text/plain outputs must contain).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 120
ALLOWED_TAG = "raises-exception"
VEGALITE = "application/vnd.vegalite.v5+json"


def _tags(cell) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def _source(cell) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


@pytest.mark.parametrize("path", NOTEBOOKS or [None], ids=[p.name for p in NOTEBOOKS] or ["no-notebooks"])
def test_notebook_executes(path: Path | None, kernel_name: str, tmp_path: Path):
    if path is None:
        pytest.skip(f"no example notebooks yet: {REPO / 'notebooks'} has no *.ipynb")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=CELL_TIMEOUT_S,
        startup_timeout=60,
        # Cells tagged raises-exception may fail; others stop the run with
        # CellExecutionError, which names the cell and the error.
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not _source(cell).strip():
            continue
        expect = cell.get("metadata", {}).get("expect", {})
        errors = [o for o in cell.outputs if o.get("output_type") == "error"]
        if ALLOWED_TAG in _tags(cell):
            if not errors:
                problems.append(f"cell {index} is tagged {ALLOWED_TAG} but ran without error: {_source(cell)[:80]!r}")
            elif "ename" in expect and errors[0].get("ename") != expect["ename"]:
                problems.append(f"cell {index} raised {errors[0].get('ename')}, expected {expect['ename']}")
            continue
        if errors:
            problems.append(f"cell {index} raised {errors[0].get('ename')}: {errors[0].get('evalue')}")
            continue
        if not cell.outputs:
            problems.append(f"cell {index} has no output: {_source(cell)[:80]!r}")
            continue
        bundles = [o.get("data", {}) for o in cell.outputs if o.get("output_type") in ("execute_result", "display_data")]
        mimes = {m for b in bundles for m in b}
        for mime in expect.get("mime", []):
            if mime not in mimes:
                problems.append(f"cell {index} has no {mime} output (has {sorted(mimes)})")
        text = "\n".join(b.get("text/plain", "") for b in bundles)
        for fragment in expect.get("text", []):
            if fragment not in text:
                problems.append(f"cell {index}: {fragment!r} not in its output")
        for b in bundles:
            spec = b.get(VEGALITE)
            # A histogram is layered: its bars are the first layer's data.
            layers = [spec, *spec.get("layer", [])] if spec is not None else []
            if spec is not None and not any(layer.get("data", {}).get("values") for layer in layers):
                problems.append(f"cell {index}: the chart has no data")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)
    # Writing the executed notebook back must give a valid notebook.
    nbformat.validate(nb)
