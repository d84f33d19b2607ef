"""Known answer: on the default synthetic corpus every model comes close to the oracle, and
LFAN over visual, mfcc and vggish beats every single modality (fold 0 under abaw2).

benchmarks/known_answer.py prints the full table (every model x modality set x emotion
trained separately); this test trains each emotion pair at once to stay quick.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from affvx.orchestrator.train import single_job_spec
from affvx.storage.reader import FeatureStore
from affvx.storage.synth import oracle_for
from affvx.trainers.job import run_job

FUSION = ("visual", "mfcc", "vggish")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scores(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("known")
    runs = {
        ("tcn", ("visual",)): {},
        ("tcn", ("mfcc",)): {},
        ("tcn", ("vggish",)): {},
        ("lfan", FUSION): {},
        ("gru", FUSION): {"max_epochs": 10},
    }
    results = {}
    for (model, modalities), settings in runs.items():
        spec = single_job_spec(
            demo_store, fold=0, emotion="both", modalities=modalities, model=model, **settings
        )
        results[(model, modalities)] = run_job(
            spec, out / f"{model}-{'+'.join(modalities)}"
        ).result["val_ccc"]
    return results


def test_every_model_reaches_85_percent_of_the_oracle(scores: dict, demo_store: Path) -> None:
    manifest = FeatureStore(demo_store).manifest
    for (model, modalities), val_ccc in scores.items():
        oracle = oracle_for(manifest, list(modalities))["Validation_Set"]
        for emotion in ("valence", "arousal"):
            assert val_ccc[emotion] >= 0.85 * oracle[emotion], (
                model,
                modalities,
                emotion,
                val_ccc,
                oracle,
            )
            assert (
                val_ccc[emotion] <= oracle[emotion] + 0.03
            )  # the oracle really is the best answer


def test_lfan_fusion_beats_every_single_modality(scores: dict) -> None:
    for emotion in ("valence", "arousal"):
        best_single = max(v[emotion] for (model, mods), v in scores.items() if len(mods) == 1)
        assert scores[("lfan", FUSION)][emotion] > best_single + 0.02, emotion
