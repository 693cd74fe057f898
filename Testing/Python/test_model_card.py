"""The card that ``train`` writes: its metrics are the held-out maps' own, its facts the run's."""

import hashlib
import json

import numpy as np
from LeftAtriumSegLib.cli import main
from LeftAtriumSegLib.model_card import model_card
from LeftAtriumSegLib.model_file import read_model
from test_evaluation import _write
from test_training import _write_dataset


def test_card_of_a_cross_validation_run_scores_each_data_set_on_its_own(tmp_path):
    """Each case's label is the one its dataset.json lists: the card looked in labelsTr/ for CASE.nii.gz,
    and a run whose labels lay elsewhere failed after all its training."""
    run, first, second = tmp_path / "run", tmp_path / "first", tmp_path / "second"
    for folder, licence, case, label in ((first, "CC-BY-SA 4.0", "a", "seg/a_gt.nii.gz"),
                                         (second, None, "b", "labelsTr/b.nii.gz")):
        (folder / label).parent.mkdir(parents=True)
        listing = {"description": f"{folder.name} set", "training": [{"image": f"img/{case}.nii.gz", "label": label}]}
        if licence:
            listing["licence"] = licence
        (folder / "dataset.json").write_text(json.dumps(listing))
    (run / "probabilities").mkdir(parents=True)
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[5:15, 5:15, 5:15] = 1
    half = np.zeros((20, 20, 20), np.float32)
    half[5:15, 5:15, 5:10] = 0.9  # Dice 2/3, 1.0 mL missing at 2 mm slices
    _write(reference, first / "seg" / "a_gt.nii.gz", spacing_mm=(2.0, 1.0, 1.0))
    _write(half, run / "probabilities" / "a.nii.gz", spacing_mm=(2.0, 1.0, 1.0))  # on its label's grid, as cross-validation writes it
    _write(reference, second / "labelsTr" / "b.nii.gz")
    _write(reference.astype(np.float32) * 0.95, run / "probabilities" / "b.nii.gz")  # perfect at any threshold under 0.95
    (run / "training.json").write_text(json.dumps({
        "command": "leftatriumseg train --folds 2", "data_folders": [str(first), str(second)],
        "settings": {"iterations": 7}, "parameters": 1234,
        "config": {"name": "Test", "version": "9", "slices": 5, "features": [4, 8], "views": ["axial"],
                   "frame": {"orientation": "LPS", "spacing_mm": [1.25, 1.25, 1.25]}},
        "torch_threads": 2, "preparation_seconds": 1.0, "total_seconds": 5.0,
        "folds": [{"validation": ["a"], "training_seconds": {"axial": 2.0}},
                  {"validation": ["b"], "training_seconds": {"axial": 2.0}}]}))

    card = model_card(run)

    first_table, second_table = card.split("### `first`")[1].split("### `second`")
    assert "| a | 0 | 0.667 |" in first_table and "| b |" not in first_table
    assert "| **mean** | | **0.667** |" in first_table and "| **1.00** |" in first_table  # volume error 1.00 mL
    assert "| b | 1 | 1.000 |" in second_table and "| a |" not in second_table
    assert "| `first` | first set | 1 | CC-BY-SA 4.0 |" in card
    assert "| `second` | second set | 1 | not stated in dataset.json |" in card
    assert "`leftatriumseg train --folds 2`" in card and "**1,234 parameters**" in card


def test_train_writes_the_model_and_its_card(tmp_path):
    _write_dataset(tmp_path / "data", 2)
    output = tmp_path / "run"
    arguments = ["train", "--data", str(tmp_path / "data"), "--output-dir", str(output), "--iterations", "1",
                 "--views", "axial", "--model-version", "0.1", "--random-orientation", "--no-bfloat16", "--device", "cpu", "--quiet"]
    assert main(arguments) == 0
    training = json.loads((output / "training.json").read_text())
    assert training["settings"]["random_orientation"] is True and training["settings"]["bfloat16"] is False
    assert training["device"] == "cpu"
    card = (output / "MODEL_CARD.md").read_text()
    assert card.startswith("# Model card: LeftAtriumSeg 0.1")
    assert hashlib.sha256((output / "model.safetensors").read_bytes()).hexdigest() in card
    assert " ".join(arguments) in card
    assert "| `data` |" in card and "not stated in dataset.json" in card

    # Training again into the same folder would replace this model: only when asked.
    model_bytes = (output / "model.safetensors").read_bytes()
    assert main(arguments) == 2
    assert (output / "model.safetensors").read_bytes() == model_bytes
    assert main([*arguments, "--seed", "1", "--overwrite"]) == 0
    assert (output / "model.safetensors").read_bytes() != model_bytes

    # Resuming the finished run changes no weights and says so in the card; another seed is another run.
    # (Weights, not bytes: safetensors writes its metadata keys in no fixed order.)
    _, weights = read_model(output / "model.safetensors")
    assert main([*arguments, "--seed", "1", "--resume"]) == 0
    _, resumed_weights = read_model(output / "model.safetensors")
    assert weights.keys() == resumed_weights.keys()
    assert all(np.array_equal(weights[name], resumed_weights[name]) for name in weights)
    card = (output / "MODEL_CARD.md").read_text()
    assert f"- Resumed with: `leftatriumseg {' '.join(arguments)} --seed 1 --resume`" in card
    total = json.loads((output / "training.json").read_text())["total_seconds"]
    assert f"total wall time **{total} s**; resumed since, last sitting " in card  # the finished run's time stands
    assert main([*arguments, "--resume"]) == 2


def test_interrupted_train_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    import LeftAtriumSegLib.training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LeftAtriumSegLib.training, "train_model", interrupted)
    assert main(["train", "--data", str(tmp_path), "--output-dir", str(tmp_path / "run"), "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == (
        f"interrupted: the same command with --resume goes on where the run in {tmp_path / 'run'} stopped")
