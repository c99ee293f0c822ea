"""Kaggle "Digit Recognizer" CSVs: train.csv is `label, pixel0..pixel783`; test.csv is
`pixel0..pixel783` only (no labels, so it is never a test split: --mode=predict reads it)."""

import pathlib

import numpy as np

from flaxdigits import IMAGE_SIDE
from flaxdigits.data import RawDigits
from flaxdigits.errors import FlaxDigitsError

TRAIN_FILE = "train.csv"
TEST_FILE = "test.csv"
PIXEL_COLUMNS = [f"pixel{i}" for i in range(IMAGE_SIDE * IMAGE_SIDE)]


def read_csv(path: pathlib.Path, *, labelled: bool):
    """Kaggle CSV -> (uint8 images (N, 28, 28), int labels (N,) or None)."""
    import pandas as pd  # pandas is only needed for this source

    if not path.is_file():
        raise FlaxDigitsError(f"{path}: no such file")

    def read(**kwargs):
        try:
            return pd.read_csv(path, **kwargs)
        except pd.errors.EmptyDataError:
            raise FlaxDigitsError(f"{path}: empty file") from None
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
            raise FlaxDigitsError(
                f"{path}: not a readable CSV ({str(e).splitlines()[0]})") from None

    with path.open("rb") as f:
        first_line = f.readline(64 * 1024)
    if b"," not in first_line:
        for separator, name in ((b";", "semicolons"), (b"\t", "tabs"), (b"|", "bars")):
            if separator in first_line:
                raise FlaxDigitsError(f"{path}: columns are separated by {name}; Kaggle's "
                                      f"CSVs (and flaxdigits) use commas")

    # Fast path: a well-formed file parses straight to integer columns (28,000 rows in well
    # under a second). Anything else is re-read as text, to name the first bad cell.
    frame = read()

    expected = (["label"] if labelled else []) + PIXEL_COLUMNS
    columns = [str(c) for c in frame.columns]
    if columns != expected:
        missing = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in expected]
        what = []
        if missing:
            what.append(f"missing {len(missing)} column(s) ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''})")
        if extra:
            shown = ", ".join(name[:30] for name in extra[:3])  # a name may be a whole line
            what.append(f"unexpected column(s) {shown}{', ...' if len(extra) > 3 else ''}")
        if not what:
            what.append("columns are out of order")
        hint = "label, pixel0..pixel783" if labelled else "pixel0..pixel783 (no label column)"
        raise FlaxDigitsError(f"{path}: {'; '.join(what)}; expected {hint}")
    if len(frame) == 0:
        raise FlaxDigitsError(f"{path}: header only, no rows")

    # The largest value each column may hold: 9 for a label, 255 for a pixel.
    high = np.array(([9] if labelled else []) + [255] * len(PIXEL_COLUMNS))
    if all(dtype == np.int64 for dtype in frame.dtypes):
        values = frame.to_numpy(dtype=np.int64)
        bad = np.argwhere((values < 0) | (values > high))
        if len(bad):
            frame = None  # re-read as text below, to show the cell as written
    else:
        bad = None  # not all integers: re-read as text
    if frame is None or bad is None:
        frame = read(dtype=str, keep_default_na=False)
        numbers = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        for row, col in np.argwhere(~np.isfinite(numbers) | (numbers != np.round(numbers))):
            raise_cell(path, frame, row, col, "is not an integer")
        for row, col in np.argwhere((numbers < 0) | (numbers > high)):
            column = columns[col]
            raise_cell(path, frame, row, col, "is outside 0..9" if column == "label"
                       else "is outside 0..255")
        values = numbers.astype(np.int64)
    labels = None
    if labelled:
        labels = values[:, 0]
        values = values[:, 1:]
    return values.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), labels


def raise_cell(path: pathlib.Path, text_frame, row: int, col: int, fault: str):
    """One line naming a bad cell, as it is written in the file. Data rows count from 1, as
    in a spreadsheet; the header is line 1 of the file."""
    cell = str(text_frame.iat[row, col])
    shown = repr(cell if len(cell) <= 40 else cell[:37] + "...")
    raise FlaxDigitsError(f"{path}: row {row + 1} (line {row + 2}), column "
                          f"{text_frame.columns[col]}: {shown} {fault}")


def load_folder(folder: pathlib.Path) -> RawDigits:
    """train.csv's digits; no test pair (Kaggle's test.csv has no labels)."""
    return RawDigits(*read_csv(folder / TRAIN_FILE, labelled=True))


def read_test_csv(folder: pathlib.Path) -> np.ndarray:
    """The uint8 images (N, 28, 28) of the folder's test.csv, in the file's order."""
    path = folder / TEST_FILE
    if not path.is_file():
        raise FlaxDigitsError(f"{path}: no such file (--mode=predict needs Kaggle's test.csv)")
    return read_csv(path, labelled=False)[0]
