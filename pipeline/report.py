"""What a finished training shows in its MLflow run: size, pictures and sample translations."""

from __future__ import annotations

from pathlib import Path


def log_training_report(run_id: str, package_dir: Path, model, tokenizer, valid_pairs: list[tuple[str, str]],
                        pictures_dir: Path) -> int:
    """Log the parameter count, the attention heatmap and loss curves, and 16 validation sentences
    translated by the package as users will load it. Returns the parameter count."""
    import mlflow

    from pipeline.inference import Translator
    from pipeline.tracking import log_training_pictures

    n_params = model.num_parameters()
    mlflow.log_metric("model/parameters", n_params)
    source, reference = valid_pairs[0]
    example = (tokenizer.encode(source), tokenizer.encode(reference))
    log_training_pictures(run_id, model.eval(), tokenizer, example, pictures_dir)
    sample = valid_pairs[:16]
    hyps = Translator(package_dir).translate([s for s, _ in sample])
    mlflow.log_table(
        {"source": [s for s, _ in sample], "reference": [r for _, r in sample], "translation": hyps},
        "samples/validation_translations.json",
    )
    return n_params
