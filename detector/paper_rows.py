"""Every experiment row of the two papers' tables, with the configs that reproduce it.

The one home of the mapping paper row -> config names (docs/configs.md prints it with
``paper_rows_markdown``; ``python -m detector.train --list --by-table`` prints it too;
``tests/detector/test_configs.py`` walks it). A row either names one or more configs of
``detector.configs.CONFIGS`` (several when the paper's text and its official code disagree,
or when a COCO variant of a VOC ablation exists), or says in ``pending`` why it has none
yet. Rows that only quote other papers (the other detectors of Pseudo-IoU Table 4 and
Dynamic ATSS Table 5) are not experiments of these papers and are left out.

``reported`` is the paper's own number for the row (COCO AP, or VOC 2007 test mAP for
Pseudo-IoU Tables 1-2), what a full run of the config is meant to approach; it is not a
result measured with this code.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

from detector.configs import CONFIGS

DYN = "Dynamic ATSS"
PIOU = "Pseudo-IoU"
#: Why a row has no config yet: the heads, anchors and backbone operators it needs.
NEEDS_DCN = "needs deformable convolutions in the backbone (not built yet)"
NEEDS_GFLV2 = "needs the GFLV2 head (distribution regression, DFL, DGQP; not built yet)"
NEEDS_VFNET = "needs the VFNet head (star-shaped deformable refinement; not built yet)"
NEEDS_RETINANET = "needs 9 anchors per location and the RetinaNet head (not built yet)"


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper's table.

    ``paper``: "Dynamic ATSS" or "Pseudo-IoU"; ``table``: as the paper numbers it ("Table 1a");
    ``row``: the row's label; ``reported``: the paper's number ("39.06 AP", "79.0 mAP");
    ``configs``: names of the configs that reproduce it, the one following the paper's own
    recipe first; ``pending``: why there is none (empty when ``configs`` is not).
    """

    paper: str
    table: str
    row: str
    reported: str
    configs: tuple = ()
    pending: str = ""


def _dyn_rows():
    rows = [
        PaperRow(DYN, "Table 1", "ATSS", "39.06 AP", ("atss_r50_1x",)),
        PaperRow(DYN, "Table 1", "ATSS+CIoUs", "39.75 AP", ("atss_ciou_r50_1x",)),
        PaperRow(DYN, "Table 1", "ATSS+QFL", "39.61 AP", ("atss_qfl_r50_1x",)),
        PaperRow(DYN, "Table 1", "ATSS+VFL", "39.65 AP", ("atss_vfl_r50_1x",)),
        PaperRow(DYN, "Table 2", "1: AIoUs + centerness", "39.06 AP", ("atss_r50_1x",)),
        PaperRow(DYN, "Table 2", "2: PIoUs only", "29.39 AP", ("piou_only_r50_1x",)),
        PaperRow(DYN, "Table 2", "3: AIoUs + PIoUs", "39.75 AP", ("atss_ciou_r50_1x",)),
        PaperRow(DYN, "Table 2", "4: CIoUs + QFL + centerness", "40.07 AP", ("dyn_atss_qfl_r50_1x",)),
        PaperRow(DYN, "Table 2", "5: CIoUs + VFL + centerness", "39.83 AP", ("dyn_atss_vfl_r50_1x",)),
        PaperRow(DYN, "Table 2", "6: CIoUs + QFL + IoU branch", "40.30 AP", ("dyn_atss_qfl_iou_r50_1x",)),
        PaperRow(DYN, "Table 2", "7: CIoUs + VFL + IoU branch", "40.15 AP", ("dyn_atss_vfl_iou_r50_1x",)),
        PaperRow(DYN, "Table 3", "1 : 1", "39.75 AP", ("atss_ciou_r50_1x",)),
        PaperRow(DYN, "Table 3", "0.5 : 1", "39.43 AP", ("dyn_atss_w0p5_1p0_r50_1x",)),
        PaperRow(DYN, "Table 3", "1.5 : 1", "39.55 AP", ("dyn_atss_w1p5_1p0_r50_1x",)),
        PaperRow(DYN, "Table 3", "1 : 0.5", "39.42 AP", ("dyn_atss_w1p0_0p5_r50_1x",)),
        PaperRow(DYN, "Table 3", "1 : 1.5", "39.51 AP", ("dyn_atss_w1p0_1p5_r50_1x",)),
        PaperRow(DYN, "Table 3", "D_up : 1", "39.22 AP", ("dyn_atss_dup_r50_1x",)),
        PaperRow(DYN, "Table 3", "1 : D_down", "35.05 AP", ("dyn_atss_ddown_r50_1x",)),
        PaperRow(DYN, "Table 3", "D_up : D_down", "35.64 AP", ("dyn_atss_dup_ddown_r50_1x",)),
        PaperRow(DYN, "Table 4", "GFLV2", "40.6 AP", ("gflv2_r50_1x",)),
        PaperRow(DYN, "Table 4", "GFLV2+CIoUs", "41.1 AP", ("gflv2_ciou_r50_1x",)),
        PaperRow(DYN, "Table 4", "VFL (VFNet)", "41.3 AP", ("vfnet_r50_1x",)),
        PaperRow(DYN, "Table 4", "VFL+CIoUs (VFNet)", "41.6 AP", ("vfnet_ciou_r50_1x",)),
        PaperRow(DYN, "Table 5", "ATSS* R-50 1x", "39.2 AP (test-dev)", ("atss_r50_1x",)),
        PaperRow(DYN, "Table 5", "ATSS* R-50-DCN 1x", "43.0 AP (test-dev)", ("atss_r50_dcn_1x",)),
        PaperRow(DYN, "Table 5", "ATSS R-101 2x MStrain", "43.6 AP (test-dev)", ("atss_r101_2x",)),
        PaperRow(DYN, "Table 5", "ATSS R-101-DCN 2x MStrain", "46.3 AP (test-dev)", ("atss_r101_dcn_2x",)),
        PaperRow(DYN, "Table 5", "ATSS X-64x4d-101 2x MStrain", "45.6 AP (test-dev)", ("atss_x101_64x4d_2x",)),
        PaperRow(DYN, "Table 5", "ATSS X-32x8d-101-DCN 2x MStrain", "47.7 AP (test-dev)", ("atss_x101_32x8d_dcn_2x",)),
        PaperRow(DYN, "Table 5", "ATSS X-64x4d-101-DCN 2x MStrain", "47.7 AP (test-dev)", ("atss_x101_64x4d_dcn_2x",)),
        PaperRow(DYN, "Table 5", "Dynamic ATSS R-50 1x", "40.3 AP (test-dev)", ("dyn_atss_qfl_iou_r50_1x",)),
        PaperRow(DYN, "Table 5", "Dynamic ATSS R-50-DCN 1x", "44.4 AP (test-dev)", ("dyn_atss_qfl_iou_r50_dcn_1x",)),
        PaperRow(DYN, "Table 5", "Dynamic ATSS R-101 2x MStrain", "44.7 AP (test-dev)", ("dyn_atss_qfl_iou_r101_2x",)),
        PaperRow(DYN, "Table 5", "Dynamic ATSS R-101-DCN 2x MStrain", "47.3 AP (test-dev)", ("dyn_atss_qfl_iou_r101_dcn_2x",)),
        PaperRow(DYN, "Table 5", "Dynamic ATSS X-64x4d-101 2x MStrain", "46.5 AP (test-dev)",
                 ("dyn_atss_qfl_iou_x101_64x4d_2x",)),
        PaperRow(DYN, "Table 5", "Dynamic ATSS X-32x8d-101-DCN 2x MStrain", "48.6 AP (test-dev)",
                 ("dyn_atss_qfl_iou_x101_32x8d_dcn_2x",)),
        PaperRow(DYN, "Table 5", "Dynamic ATSS X-64x4d-101-DCN 2x MStrain", "48.6 AP (test-dev)",
                 ("dyn_atss_qfl_iou_x101_64x4d_dcn_2x",)),
    ]
    return rows


#: Pseudo-IoU Table 1a (threshold T; 0.0 is the baseline) and Table 2's P-IoU column.
PIOU_TABLE1A = {0.0: "76.9", 0.1: "76.8", 0.2: "77.5", 0.3: "78.2", 0.4: "79.0", 0.5: "78.9", 0.6: "45.6", 0.7: "22.1"}
PIOU_TABLE2_PIOU = {0.3: "78.2", 0.4: "79.0", 0.5: "78.9", 0.6: "45.6", 0.7: "22.1", 0.8: "13.5"}
PIOU_TABLE2_CENTERNESS = {0.2: "72.9", 0.25: "77.4", 0.3: "78.5", 0.35: "78.7", 0.4: "77.6", 0.45: "77.6"}
PIOU_TABLE2_SBOX = {0.3: "24.5", 0.4: "63.8", 0.5: "77.1", 0.6: "78.3", 0.7: "77.3", 0.8: "76.8"}
#: Pseudo-IoU Table 1b (epochs) and 1c (batch size): (baseline mAP, Pseudo-IoU mAP).
PIOU_TABLE1B = {8: ("76.9", "79.0"), 12: ("78.4", "80.4"), 16: ("78.3", "80.2"), 24: ("77.8", "80.1")}
PIOU_TABLE1C = {4: ("73.6", "75.2"), 6: ("76.6", "77.9"), 8: ("77.0", "78.8"), 16: ("76.9", "79.0")}


def _tag(value, width=2):
    """The config-name spelling of a threshold: 0.4 -> "04", 0.35 -> "035" (width 3)."""
    return f"{round(value * 10 ** (width - 1)):0{width}d}"


def _piou_rows():
    rows = []
    for t, reported in PIOU_TABLE1A.items():
        if t == 0.0:
            names = ("voc_af_baseline_r101", "af_baseline_r50_1x")
            label = "Baseline (T = 0.0)"
        else:
            names = (f"voc_piou_t{_tag(t)}_r101", f"piou_t{_tag(t)}_r50_1x")
            label = f"Pseudo-IoU T = {t}"
        rows.append(PaperRow(PIOU, "Table 1a", label, f"{reported} mAP", names))
    for epochs, (baseline, piou) in PIOU_TABLE1B.items():
        suffix = "" if epochs == 12 else f"_e{epochs}"
        rows.append(PaperRow(PIOU, "Table 1b", f"Baseline, {epochs} epochs", f"{baseline} mAP",
                             (f"voc_af_baseline_r101{suffix}",)))
        rows.append(PaperRow(PIOU, "Table 1b", f"Pseudo-IoU, {epochs} epochs", f"{piou} mAP",
                             ("voc_piou_t04_r101" if epochs == 12 else f"voc_piou_r101{suffix}",)))
    for batch, (baseline, piou) in PIOU_TABLE1C.items():
        suffix = "" if batch == 16 else f"_b{batch}"
        rows.append(PaperRow(PIOU, "Table 1c", f"Baseline, batch {batch}", f"{baseline} mAP",
                             (f"voc_af_baseline_r101{suffix}",)))
        rows.append(PaperRow(PIOU, "Table 1c", f"Pseudo-IoU, batch {batch}", f"{piou} mAP",
                             ("voc_piou_t04_r101" if batch == 16 else f"voc_piou_r101{suffix}",)))
    for c, reported in PIOU_TABLE2_CENTERNESS.items():
        tag = _tag(c, 3)
        rows.append(PaperRow(PIOU, "Table 2", f"Centerness c = {c}", f"{reported} mAP",
                             (f"voc_ctr_c{tag}_r101", f"ctr_c{tag}_r50_1x")))
    for s, reported in PIOU_TABLE2_SBOX.items():
        tag = _tag(s)
        rows.append(PaperRow(PIOU, "Table 2", f"S-box s = {s}", f"{reported} mAP",
                             (f"voc_sbox_s{tag}_r101", f"sbox_s{tag}_r50_1x")))
    for t, reported in PIOU_TABLE2_PIOU.items():
        tag = _tag(t)
        rows.append(PaperRow(PIOU, "Table 2", f"P-IoU T = {t}", f"{reported} mAP",
                             (f"voc_piou_t{tag}_r101", f"piou_t{tag}_r50_1x")))
    rows += [
        PaperRow(PIOU, "Table 3", "RetinaNet", "35.7 AP", ("retinanet_r50_1x",)),
        PaperRow(PIOU, "Table 3", "AF-Baseline", "33.9 AP", ("af_baseline_r50_1x",)),
        PaperRow(PIOU, "Table 3", "Pseudo-IoU", "36.8 AP", ("piou_r50_1x",)),
        PaperRow(PIOU, "Table 3", "Pseudo-IoU + GIoU", "37.1 AP", ("piou_giou_r50_1x",)),
        PaperRow(PIOU, "Table 3", "Pseudo-IoU + GIoU + centerness", "37.4 AP",
                 ("piou_giou_ctr_r50_1x", "piou_giou_ctr_r50_1x_paper")),
        PaperRow(PIOU, "Table 4", "AF-Baseline R-101-FPN", "38.3 AP (test-dev)", ("af_baseline_r101_2x",)),
        PaperRow(PIOU, "Table 4", "Pseudo-IoU R-101-FPN", "41.5 AP (test-dev)", ("piou_giou_ctr_r101_2x",)),
        PaperRow(PIOU, "Table 4", "Pseudo-IoU R-101-FPN-DCN", "43.4 AP (test-dev)", ("piou_giou_ctr_r101_dcn_2x",)),
        PaperRow(PIOU, "Table 4", "Pseudo-IoU X-32x8d-101-FPN-DCN", "44.0 AP (test-dev)", ("piou_giou_ctr_x101_32x8d_dcn_2x",)),
        PaperRow(PIOU, "Table 4", "Pseudo-IoU X-64x4d-101-FPN-DCN", "44.5 AP (test-dev)", ("piou_giou_ctr_x101_64x4d_dcn_2x",)),
    ]
    return rows


#: Every row, Dynamic ATSS paper first, in the papers' order.
PAPER_ROWS = tuple(_dyn_rows() + _piou_rows())


def rows_of_config(name):
    """The rows ``name`` reproduces (possibly none: demos, baselines of this project)."""
    return [row for row in PAPER_ROWS if name in row.configs]


def paper_rows_markdown():
    """The rows as Markdown, one table per paper table (the block in docs/configs.md)."""
    lines, current = [], None
    for row in PAPER_ROWS:
        if (row.paper, row.table) != current:
            current = (row.paper, row.table)
            lines += ["", f"**{row.paper} {row.table}**", "", "| row | paper | configs |", "|---|---|---|"]
        configs = ", ".join(f"`{name}`" for name in row.configs) if row.configs else f"none: {row.pending}"
        lines.append(f"| {row.row} | {row.reported} | {configs} |")
    return "\n".join(lines[1:]) + "\n"


#: The groups of the config list in docs/configs.md: (title, test on a config).
CONFIG_GROUPS = (
    ("COCO, ATSS head (official ATSS / Dynamic ATSS recipe)",
     lambda c: c.data.dataset == "coco" and c.head.family == "anchor_based" and c.head.type != "retinanet"),
    ("COCO, RetinaNet head (mmdetection's RetinaNet recipe)",
     lambda c: c.data.dataset == "coco" and c.head.type == "retinanet"),
    ("COCO, anchor-free head (official Pseudo-IoU recipe, or its paper's text where named)",
     lambda c: c.data.dataset == "coco" and c.head.family == "anchor_free"),
    ("Pascal VOC, anchor-free head (the Pseudo-IoU paper's text)", lambda c: c.data.dataset == "voc"),
    ("Built-in digits dataset: CPU demos and the study scale", lambda c: c.data.dataset == "digits"),
)


def configs_markdown(configs):
    """Every config of ``configs`` (name -> Config) in one table per ``CONFIG_GROUPS`` entry."""
    lines = []
    for title, member in CONFIG_GROUPS:
        lines += ["", f"**{title}**", "", "| name | reproduces | what it sets |", "|---|---|---|"]
        lines += [f"| `{name}` | {config.reproduces} | {config.description} |"
                  for name, config in configs.items() if member(config)]
    return "\n".join(lines[1:]) + "\n"


#: The generated blocks of docs/configs.md, between ``<!-- begin NAME -->`` and ``<!-- end NAME -->``.
def doc_blocks():
    return {"paper-rows": paper_rows_markdown(), "configs": configs_markdown(CONFIGS)}


def update_doc(path):
    """Rewrite the generated blocks of the Markdown file ``path`` in place."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    for name, block in doc_blocks().items():
        begin, end = f"<!-- begin {name} -->\n", f"<!-- end {name} -->"
        if begin not in text or end not in text:
            raise ValueError(f"{path}: no '{begin.strip()}' ... '{end}' block")
        head, rest = text.split(begin, 1)
        text = head + begin + block + end + rest.split(end, 1)[1]
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":  # python -m detector.paper_rows docs/configs.md
    update_doc(sys.argv[1] if len(sys.argv) > 1 else "docs/configs.md")
