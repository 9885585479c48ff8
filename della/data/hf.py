"""Load the train/valid/test text of a Hugging Face dataset (hub id or local directory).

A directory written by `datasets.Dataset(Dict).save_to_disk` is opened with `load_from_disk`;
anything else (a hub id such as `yelp_polarity`, or a local folder of csv/json/parquet files)
goes through `datasets.load_dataset`. `datasets` is imported only here, and only when used.
"""

from __future__ import annotations

from pathlib import Path

from della.data.corpus import LineScan

# Our split name -> accepted Hugging Face split names, in order of preference.
SPLIT_NAMES = {"train": ("train",), "valid": ("validation", "valid", "dev"), "test": ("test",)}


def _open(path: str, config_name: str | None):
    import datasets

    local = Path(path)
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        return datasets.load_from_disk(str(local))
    try:
        return datasets.load_dataset(path, name=config_name)
    except FileNotFoundError:
        raise
    except Exception as err:  # the hub or the builder failed: say which dataset and why
        raise ValueError(f"--path {path}: cannot load the Hugging Face dataset: {err}") from err


def load_hf_splits(path: str, text_field: str = "text",
                   config_name: str | None = None) -> dict[str, LineScan]:
    """The cleaned text of each split, as `LineScan`s (row numbers are 1-based)."""
    import datasets

    ds = _open(path, config_name)
    if not isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"--path {path}: a dataset without splits; need train, validation and test")
    scans: dict[str, LineScan] = {}
    for split, names in SPLIT_NAMES.items():
        name = next((n for n in names if n in ds), None)
        if name is None:
            raise ValueError(f"--path {path}: no {'/'.join(names)} split; available: {sorted(ds)}")
        table = ds[name]
        if text_field not in table.column_names:
            raise ValueError(f"--path {path} split {name}: no text field {text_field!r} "
                             f"(--text-field); columns: {table.column_names}")
        scan = LineScan(path=f"{path}[{name}].{text_field}")
        for row, text in enumerate(table[text_field], start=1):
            if text is None:
                text = ""
            if not isinstance(text, str):
                raise ValueError(f"--path {path} split {name} row {row}: field {text_field!r} "
                                 f"is {type(text).__name__}, not text")
            scan.add(row, text)
        scans[split] = scan
    return scans
