"""The paper's Table 2 as a Markdown report: multimodal | language | ImageNet linear eval, our row beside the
paper's MoMo, MoMo-Large and FLAVA rows.

Cells follow the paper: VQAv2 score; COCO / Flickr30K zero-shot retrieval as the mean of TR@1, TR@5, IR@1 and IR@5
(the paper's "averaged recall at top-1/5": its Table 3 recalls average to its Table 2 cells); GLUE dev accuracy,
accuracy / F1 for MRPC and QQP, Pearson / Spearman for STS-B; ImageNet linear-probe top-1. A cell with no data
is "–". The paper's rows are its published numbers (Table 2; STS-B has one number for MoMo and FLAVA there).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

COLUMNS = ("VQAv2", "COCO", "Flickr30K", "SST-2", "RTE", "MRPC", "QQP", "MNLI", "QNLI", "STS-B", "ImageNet LE")
GROUPS = (("Multimodal", 3), ("Language", 7), ("Vision", 1))
PAPER_ROWS = {
    "FLAVA (paper)": ("72.8", "56.3", "79.1", "90.9", "57.8", "81.4/86.9", "90.4/87.2", "80.3", "87.3", "85.7",
                      "75.5"),
    "MoMo (paper)": ("71.2", "64.0", "78.2", "89.6", "59.6", "81.3/87.0", "90.2/86.6", "78.1", "86.0", "87.0",
                     "75.7"),
    "MoMo-Large (paper)": ("75.0", "72.0", "84.1", "90.4", "63.9", "82.8/88.0", "90.7/87.7", "80.6", "88.0",
                           "88.0/87.8", "79.1"),
}
_GLUE_CELLS = {"SST-2": ("sst2", ("acc",)), "RTE": ("rte", ("acc",)), "MRPC": ("mrpc", ("acc", "f1")),
               "QQP": ("qqp", ("acc", "f1")), "MNLI": ("mnli", ("acc",)), "QNLI": ("qnli", ("acc",)),
               "STS-B": ("stsb", ("pearson", "spearman"))}
_RECALLS = ("tr@1_pct", "tr@5_pct", "ir@1_pct", "ir@5_pct")


def _num(values: Sequence[Optional[float]]) -> str:
    if any(v is None for v in values):
        return "–"
    return "/".join(f"{v:.1f}" for v in values)


def _get(results: dict[str, Any], *keys: str) -> Optional[Any]:
    node: Any = results
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def retrieval_cell(metrics: Optional[dict[str, float]]) -> Optional[float]:
    """Mean of TR@1, TR@5, IR@1, IR@5 (percent), or None."""
    if not isinstance(metrics, dict) or not all(k in metrics for k in _RECALLS):
        return None
    return sum(metrics[k] for k in _RECALLS) / len(_RECALLS)


def our_row(results: dict[str, Any]) -> tuple[str, ...]:
    """The cells of a suite result ({"vqa": ..., "coco": ..., "flickr30k": ..., "glue": {task: ...},
    "imagenet": ...}) in COLUMNS order."""
    cells = [_num([_get(results, "vqa", "vqa_score")]),
             _num([retrieval_cell(results.get("coco"))]),
             _num([retrieval_cell(results.get("flickr30k"))])]
    for col in COLUMNS[3:10]:
        task, metrics = _GLUE_CELLS[col]
        cells.append(_num([_get(results, "glue", task, m) for m in metrics]))
    cells.append(_num([_get(results, "imagenet", "top1")]))
    return tuple(cells)


def markdown_table(results: dict[str, Any], name: str = "ours") -> str:
    """Table 2's layout with the paper's rows and ours, as Markdown."""
    start, groups = 0, []
    for group, n in GROUPS:
        groups.append(f"{group}: {', '.join(COLUMNS[start:start + n])}")
        start += n
    header = "| Model | " + " | ".join(COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = [f"| {label} | " + " | ".join(cells) + " |" for label, cells in
            [*PAPER_ROWS.items(), (name, our_row(results))]]
    return "\n".join([" · ".join(groups) + "\n", header, rule, *rows])
