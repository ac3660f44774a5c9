"""MLflow as an optional tracking server and model registry, next to the directory registry.

The directory registry (:class:`~sparkml_prod.registry.ModelRegistry`) stays the default
and the source of truth of the model card. With an ``mlflow`` section in the train
config, training also

1. logs a run to the configured experiment: params (the model's params, the feature
   spec, the split dates), the card's test metrics (``test_<metric>``), the report
   directory (``report/``) and the feature spec file (:class:`MlflowTrainingRun`);
2. registers the same fitted ``PipelineModel`` with ``mlflow.spark.log_model`` under the
   model's name (artifact ``model/``, the pipeline in ``model/sparkml/``), and records
   the run, the MLflow version and the SHA-256 of every file of that logged copy in the
   card (:class:`~sparkml_prod.registry.card.MlflowRecord`) before the directory registry
   writes it;
3. logs the registered card as ``card.json`` in the run; a promotion (``promote_to``,
   the gate of ``retrain``, ``sparkml-prod models promote``) moves the MLflow alias of
   the same name to the MLflow version once the directory alias moved
   (:func:`follow_promotion`); a refused promotion leaves both.

Scoring resolves ``models:/name@alias`` and ``models:/name/3`` through the MLflow
registry (:func:`load_mlflow_model`): the version's run gives the card (input schema,
spine rule, feature names), the logged ``sparkml/`` is checked against the card's hashes
and allowlist exactly as a directory-registry model is, then loaded.

``mlflow`` is imported only here and only when configured, so the library runs without
it; configured but not installed is a :class:`~sparkml_prod.core.errors.ConfigError`
naming the extra to install.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

from sparkml_prod.core.config import MlflowScoreConfig, MlflowTrainConfig, TrainConfig
from sparkml_prod.core.errors import ConfigError, ModelCardError, ModelNotFoundError
from sparkml_prod.registry.card import CARD_FILE, MlflowRecord, ModelCard
from sparkml_prod.registry.loading import load_verified_pipeline, pipeline_file_hashes
from sparkml_prod.registry.registry import ModelVersion
from sparkml_prod.registry.storage import Storage

__all__ = [
    "MODEL_ARTIFACT",
    "MlflowTrainingRun",
    "follow_promotion",
    "is_mlflow_ref",
    "load_mlflow_model",
    "require_mlflow",
    "training_params",
]

MODELS_SCHEME = "models:/"
MODEL_ARTIFACT = "model"
SPARKML_DIR = "sparkml"
_REF = re.compile(
    r"models:/([A-Za-z0-9][A-Za-z0-9_.-]*)(?:@([A-Za-z0-9][A-Za-z0-9_.-]*)|/([1-9][0-9]*))\Z"
)
# MLflow's limit on a param value (characters).
_MAX_PARAM = 6000


def is_mlflow_ref(ref: str) -> bool:
    """Whether a model ref names an MLflow registered model (``models:/...``)."""
    return ref.startswith(MODELS_SCHEME)


def require_mlflow(where: str) -> Any:
    """The ``mlflow`` module, or a ConfigError saying how to install it."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError(
            f"{where} needs MLflow, which is not installed: pip install "
            "'sparkml-prod[mlflow]' (or drop the mlflow setting)."
        ) from None
    return mlflow


def _tracking_uri(configured: str | None, where: str) -> str:
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError(
            f"{where}: no MLflow tracking server: set mlflow.tracking_uri (e.g. "
            "sqlite:///mlflow.db or http://mlflow:5000) or the MLFLOW_TRACKING_URI "
            "environment variable."
        )
    return uri


def _client(tracking_uri: str, registry_uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient

    # Without an explicit registry URI the client takes the process-wide default, not
    # the tracking server's.
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


@contextmanager
def _fluent_uris(tracking_uri: str, registry_uri: str | None) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.spark.log_model``) reads process-wide URIs: set ours
    for the block, then put back what was there."""
    import mlflow

    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri or tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."


def training_params(card: ModelCard, config: TrainConfig) -> dict[str, str]:
    """The run's params: the model type and params (``model.<name>``), the feature spec
    (path and feature names), the label rule and the as-of dates of every split."""
    params: dict[str, Any] = {
        "model_type": card.model_type,
        **{f"model.{k}": v for k, v in card.params.items()},
        "feature_spec": config.feature_spec,
        "features": ",".join(card.feature_names),
        "label.filter": card.label.filter or "",
        "label.horizon": card.label.horizon,
        "spine.lookback": card.spine.lookback,
        **{f"split.{k}": ",".join(v) for k, v in card.as_of_dates.items()},
        "deployed.fit": card.deployed.fit,
    }
    if card.best_iteration is not None:
        params["best_iteration"] = card.best_iteration
    if card.run_date is not None:
        params["run_date"] = card.run_date
    return {k: _param(v) for k, v in params.items()}


class MlflowTrainingRun:
    """One training run's MLflow side, in the order training calls it (module docs).

    ``start`` opens the run, ``log_model`` registers the pipeline, ``log_card`` logs the
    registered card, ``end`` closes the run (``FINISHED``, or ``FAILED`` when training
    failed after the run started); a promotion then moves the MLflow alias through
    :func:`follow_promotion`.
    """

    def __init__(self, settings: MlflowTrainConfig, model_name: str) -> None:
        self.mlflow = require_mlflow(f"model '{model_name}': the train config's mlflow section")
        self.settings = settings
        self.model_name = model_name
        self.tracking_uri = _tracking_uri(settings.tracking_uri, f"model '{model_name}'")
        self.registry_uri = settings.registry_uri
        self.client = _client(self.tracking_uri, self.registry_uri)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.model_version: int | None = None

    def start(self, config: TrainConfig, card: ModelCard, report_dir: str) -> None:
        """Open the run; log params, the card's test metrics, the report and the spec."""
        experiment = self.client.get_experiment_by_name(self.settings.experiment)
        self.experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(
                self.settings.experiment, artifact_location=self.settings.artifact_location
            )
        )
        tags = {"sparkml_prod.model_name": self.model_name}
        run = self.client.create_run(self.experiment_id, run_name=self.settings.run_name, tags=tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Metric, Param

        millis = int(run.info.start_time)
        self.client.log_batch(
            self.run_id,
            metrics=[
                Metric(f"test_{k}", float(v), millis, 0) for k, v in sorted(card.metrics.items())
            ],
            params=[Param(k, v) for k, v in training_params(card, config).items()],
        )
        self.client.log_artifacts(self.run_id, report_dir, "report")
        self.client.log_artifact(self.run_id, config.feature_spec)

    def log_model(self, spark: SparkSession, model: PipelineModel, card: ModelCard) -> MlflowRecord:
        """Register ``model`` under the model's name; the record of the logged copy."""
        assert self.run_id is not None and self.experiment_id is not None
        import mlflow.spark

        requirements = [
            f"{'sparkml-prod' if name == 'sparkml_prod' else name}=={version}"
            for name, version in sorted(card.library_versions.items())
        ]
        with _fluent_uris(self.tracking_uri, self.registry_uri):
            with self.mlflow.start_run(run_id=self.run_id):
                info = mlflow.spark.log_model(
                    model,
                    artifact_path=MODEL_ARTIFACT,
                    registered_model_name=self.model_name,
                    pip_requirements=requirements,  # no inference: it reloads the model
                    dfs_tmpdir=self.settings.dfs_tmpdir,
                )
        self.model_version = int(info.registered_model_version)
        with tempfile.TemporaryDirectory(prefix="sparkml-prod-mlflow-") as local:
            copy = self._download(self.model_version, local)
            hashes = pipeline_file_hashes(spark, Path(copy, SPARKML_DIR).as_uri())
        return MlflowRecord(
            tracking_uri=self.tracking_uri,
            registry_uri=self.registry_uri,
            experiment_id=self.experiment_id,
            run_id=self.run_id,
            model_version=self.model_version,
            pipeline_sha256=hashes,
        )

    def _download(self, version: int, local: str) -> str:
        from mlflow.artifacts import download_artifacts

        source = self.client.get_model_version_download_uri(self.model_name, str(version))
        return str(download_artifacts(artifact_uri=source, dst_path=local))

    def log_card(self, registered: ModelVersion) -> None:
        """Log the card as the directory registry wrote it; tag the MLflow version with
        the directory version it is."""
        assert self.run_id is not None and self.model_version is not None
        self.client.log_text(self.run_id, registered.card.to_json(), CARD_FILE)
        for key, value in (
            ("sparkml_prod.version", str(registered.version)),
            ("sparkml_prod.path", registered.path),
        ):
            self.client.set_model_version_tag(self.model_name, str(self.model_version), key, value)
            self.client.set_tag(self.run_id, key, value)

    def end(self, failed: bool) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def follow_promotion(version: ModelVersion, alias: str) -> bool:
    """After the directory registry moved ``alias`` to ``version``: point the MLflow alias
    of the same name at the MLflow version its card records. False (nothing to move) for
    a version that was not logged to MLflow."""
    record = version.card.mlflow
    if record is None:
        return False
    require_mlflow(f"model {version.card.label_ref} (logged to MLflow)")
    client = _client(record.tracking_uri, record.registry_uri)
    client.set_registered_model_alias(version.name, alias, str(record.model_version))
    return True


def _resolve(client: Any, registry: str, ref: str, where: str) -> Any:
    """The MLflow model version a ``models:/`` ref names, or ModelNotFoundError."""
    from mlflow.exceptions import MlflowException

    match = _REF.match(ref)
    if match is None:
        raise ConfigError(
            f"{where}: model '{ref}' is not an MLflow model ref: expected "
            "models:/<name>@<alias> or models:/<name>/<version>."
        )
    name, alias, number = match.groups()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise ModelNotFoundError(
            f"No model '{name}' in the MLflow registry at '{registry}' (ref "
            f"'{ref}'). Train it with an mlflow section in the train config, or check the "
            "name and mlflow.tracking_uri / registry_uri."
        ) from None
    aliases = dict(registered.aliases or {})
    held = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
    if alias is not None:
        if alias not in aliases:
            raise ModelNotFoundError(
                f"No alias '{alias}' of model '{name}' in the MLflow registry at "
                f"'{registry}' (ref '{ref}'); its aliases: {held}. Promote a "
                "version (promote_to in the train config) or name a version: "
                f"models:/{name}/<version>."
            )
        number = aliases[alias]
    try:
        return client.get_model_version(name, str(number))
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise ModelNotFoundError(
            f"No version {number} of model '{name}' in the MLflow registry at "
            f"'{registry}' (ref '{ref}'); its versions: "
            f"{', '.join(map(str, versions)) or 'none'}; its aliases: {held}."
        ) from None


def _card_of(client: Any, version: Any, ref: str, local: str) -> ModelCard:
    """The card training logged in the version's run, checked to be this version's."""
    from mlflow.exceptions import MlflowException

    where = f"of MLflow model '{ref}' (run {version.run_id}, '{CARD_FILE}')"
    try:
        path = client.download_artifacts(version.run_id, CARD_FILE, local)
    except (MlflowException, OSError):
        raise ModelCardError(
            f"The MLflow model '{ref}' (version {version.version}) has no model card: its "
            f"run {version.run_id!r} holds no '{CARD_FILE}'. Only models that sparkml-prod "
            "training registered (with an mlflow section) can be scored."
        ) from None
    card = ModelCard.from_json(Path(path).read_text(), where)
    record = card.mlflow
    if (
        record is None
        or record.run_id != version.run_id
        or str(record.model_version) != str(version.version)
    ):
        found = (
            "no mlflow record"
            if record is None
            else (f"run {record.run_id}, version {record.model_version}")
        )
        raise ModelCardError(
            f"The model card {where} is not the card of MLflow version {version.version} "
            f"(run {version.run_id}): it records {found}. Re-register the model from "
            "training."
        )
    return card


def load_mlflow_model(
    spark: SparkSession,
    ref: str,
    settings: MlflowScoreConfig | None,
    allowed_classes: Sequence[str] = (),
) -> tuple[ModelVersion, PipelineModel]:
    """Resolve ``models:/name@alias`` or ``models:/name/3`` once; its card and its
    verified pipeline.

    The returned :class:`~sparkml_prod.registry.ModelVersion` is the directory registry's
    identity recorded on the card (``name``, ``version``) with ``path`` the MLflow ref,
    so scores, monitoring and messages name the same version either way. The logged
    ``sparkml/`` is downloaded to a local temp directory (copied into
    ``settings.dfs_tmpdir`` first when set) and loaded only after every file matched the
    card's ``mlflow.pipeline_sha256`` and every stage class the allowlist.

    Raises
    ------
    ModelNotFoundError
        An unknown model, alias or version, listing what the MLflow registry holds.
    ModelCardError
        A version without a card in its run, or whose card is another version's.
    ModelIntegrityError
        A logged pipeline whose files differ from the card's hashes, or a stage class
        outside the allowlist.
    """
    settings = settings or MlflowScoreConfig()
    require_mlflow(f"model '{ref}'")
    tracking_uri = _tracking_uri(settings.tracking_uri, f"model '{ref}'")
    client = _client(tracking_uri, settings.registry_uri)
    version = _resolve(client, settings.registry_uri or tracking_uri, ref, f"model '{ref}'")
    with tempfile.TemporaryDirectory(prefix="sparkml-prod-mlflow-") as local:
        card = _card_of(client, version, ref, local)
        from mlflow.artifacts import download_artifacts

        source = client.get_model_version_download_uri(version.name, version.version)
        copy = download_artifacts(artifact_uri=source, dst_path=str(Path(local, "model")))
        path = Path(copy, SPARKML_DIR).as_uri()
        label = f"{ref} ({card.label_ref})"
        assert card.mlflow is not None
        if settings.dfs_tmpdir is None:
            pipeline = load_verified_pipeline(
                spark, path, card.mlflow.pipeline_sha256, label, allowed_classes
            )
        else:
            target = f"{settings.dfs_tmpdir.rstrip('/')}/sparkml-prod-{uuid.uuid4().hex}"
            storage = Storage(spark, target)
            storage.copy_in(path, target)
            try:
                pipeline = load_verified_pipeline(
                    spark, target, card.mlflow.pipeline_sha256, label, allowed_classes
                )
            finally:
                storage.delete(target)
    return ModelVersion(card.name, card.version, ref, card), pipeline
