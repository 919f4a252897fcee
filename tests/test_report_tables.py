"""The per-image table of `diffunfold restore` and `diffunfold mri` (command_common.scored_table)."""

from diffunfold.command_common import scored_table

ROWS = [
    {"slice": 3, "psnr": 30.0, "ssim": 0.9, "psnr_zero_filled": 20.0, "ssim_zero_filled": 0.5, "seconds": 1.0},
    {"slice": 4, "psnr": float("inf"), "ssim": 1.0, "psnr_zero_filled": 22.0, "ssim_zero_filled": 0.7, "seconds": 3.0},
]
LEAD = [("slice", lambda r: str(r["slice"]))]
PAIRS = [("", ""), ("zero-filled ", "_zero_filled")]


def test_rows_then_a_mean_row_with_an_infinite_psnr_kept_infinite():
    assert scored_table(ROWS, LEAD, PAIRS) == [
        "| slice | PSNR | SSIM | zero-filled PSNR | zero-filled SSIM | s |",
        "|---|---|---|---|---|---|",
        "| 3 | 30.00 | 0.9000 | 20.00 | 0.5000 | 1.00 |",
        "| 4 | inf | 1.0000 | 22.00 | 0.7000 | 3.00 |",
        "| mean | inf | 0.9500 | 21.00 | 0.6000 | 2.00 |",
    ]


def test_one_row_has_no_mean_and_extra_lead_columns_are_left_blank_in_the_mean():
    assert len(scored_table(ROWS[:1], LEAD, PAIRS)) == 3
    lead = LEAD + [("size", lambda r: "64x64")]
    assert scored_table(ROWS, lead, PAIRS[:1])[-1] == "| mean | | inf | 0.9500 | 2.00 |"
