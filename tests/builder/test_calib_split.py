"""Calibration, held-out and check rows never overlap (ingot/builder/calib.py)."""

from ingot.builder.calib import MAX_CHECK, MAX_HELD_OUT, _split


def test_rows_split_into_calibration_held_out_and_check():
    rows = list(range(200))
    calib, held, check = _split(rows, 32)
    assert held == rows[-MAX_HELD_OUT:] and len(calib) == 32 and len(check) == MAX_CHECK
    assert not set(calib) & set(check) and not (set(calib) | set(check)) & set(held)
    assert calib[0] == 0 and check == sorted(check)


def test_check_rows_are_reserved_only_when_asked_and_calibration_takes_every_row():
    rows = list(range(30))  # 6 held out, 24 in front, all of them picked by 32 samples
    calib, held, check = _split(rows, 32)
    assert len(held) == 6 and calib == rows[:24] and check == []
    calib, held, check = _split(rows, 32, reserve=True)
    assert check == [1, 5, 9, 13, 17, 21] and calib == [r for r in rows[:24] if r not in check]
    assert _split([0, 1, 2, 3], 32, reserve=True)[2] == []  # 3 front rows: too few to spare
