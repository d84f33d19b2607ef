"""The outputs of the best weights: the validation trials are predicted once per epoch while
training and not again at the end when the best epoch ran in the same process; what is written
is exactly what predicting them again would give."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from affvx.orchestrator.train import single_job_spec
from affvx.trainers import loop
from affvx.trainers.job import PREDICTIONS_FILE, run_job
from affvx.trainers.loop import Trainer


@pytest.fixture(scope="module")
def spec(small_store: Path):  # type: ignore[no-untyped-def]
    return single_job_spec(
        small_store,
        fold=0,
        emotion="both",
        modalities=("visual",),
        model="tcn",
        max_epochs=3,
        patience=10,
        threads=1,
    )


def test_the_best_epochs_validation_predictions_are_kept_and_equal_a_new_prediction(
    spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    validation = set(spec.validation_trials)
    predicted: list[str] = []
    predict_trials = loop.predict_trials

    def counted(model, reader, trials, **options):  # type: ignore[no-untyped-def]
        predicted.append("validation" if set(trials) == validation else "other")
        return predict_trials(model, reader, trials, **options)

    monkeypatch.setattr(loop, "predict_trials", counted)
    kept = run_job(spec, tmp_path / "kept").result
    assert predicted.count("validation") == kept["epochs_run"]  # once per epoch, none after

    monkeypatch.setattr(
        Trainer, "validation_predictions", lambda self: self.predict(self.spec.validation_trials)
    )
    again = run_job(spec, tmp_path / "predicted-again").result
    assert kept["val_ccc"] == again["val_ccc"]
    assert_frame_equal(  # every value the same (NaN where a frame has no label)
        pd.read_parquet(tmp_path / "kept" / PREDICTIONS_FILE),
        pd.read_parquet(tmp_path / "predicted-again" / PREDICTIONS_FILE),
        check_exact=True,
    )
