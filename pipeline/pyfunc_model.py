"""MLflow "model from code": the registered model's pyfunc, with no pickled Python objects.

`mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"package": DIR})` stores this source
file plus the model package (safetensors weights, JSON config, tokenizer files). Loading runs this
file and `load_context`, so a fresh process needs only tpipe's code (shipped as code_paths), never
a pickle.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class TranslationModel(PythonModel):
    """predict(list of sentences | DataFrame with a `text` column) -> list of translations."""

    def load_context(self, context) -> None:
        from pipeline.inference import Translator

        self.translator = Translator(context.artifacts["package"])

    # `model_input: pd.DataFrame`: what pyfunc hands over once it has applied the explicit signature
    # (pipeline/registry.py: one string column). A hint MLflow infers no schema from, so it neither
    # re-validates the input nor prints its "add type hints" advice on every load (a warning filter
    # cannot hide it: MLflow resets the filters around that check).
    def predict(self, context, model_input: pd.DataFrame, params=None):
        # params (beam_size, max_len, max_len_a, max_len_b, length_penalty) change decoding for this call only; one the
        # caller left out arrives as None (the signature's default, pipeline/registry.py) and the
        # package's generation.json decides it.
        return self.translator.translate(_sentences(model_input), **(params or {}))


def _sentences(model_input) -> list[str]:
    """Accept a list/tuple of str, a pandas Series, or a DataFrame (`text` column, else the first)."""
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # pandas DataFrame
        col = "text" if "text" in model_input.columns else model_input.columns[0]
        return [str(x) for x in model_input[col].tolist()]
    if hasattr(model_input, "tolist"):  # Series / ndarray
        return [str(x) for x in model_input.tolist()]
    return [str(x) for x in model_input]


mlflow.models.set_model(TranslationModel())
