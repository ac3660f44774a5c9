"""A model registry on any path Spark can write: local disk, ``file:``, HDFS, S3A, ...

Layout under the registry root::

    <root>/<name>/<version>/model/           the PipelineModel (model.write().save)
    <root>/<name>/<version>/card.json        the model card (sparkml_prod.registry.card)
    <root>/<name>/<version>/report/          optional copy of a report directory
    <root>/<name>/<version>/.claim           object stores only: the claim of the number
    <root>/<name>/aliases/<alias>            {"version": 3, "updated_at": "...",
                                              "previous_version": 2}

Versions are the integers 1, 2, 3, ... A reference (*ref*) to one version is a string:
``"churn"`` (the latest version), ``"churn/3"`` or ``"churn@production"`` (the version an
alias points at).

Everything except the PipelineModel itself goes through Hadoop's ``FileSystem`` API in
the session's JVM, so the registry works wherever the cluster's Hadoop configuration
reaches. How each write stays safe for concurrent readers:

- **register** on local disk and HDFS writes the whole version into a hidden sibling
  ``<name>/.tmp-<uuid>`` and renames it to ``<name>/<version>`` (Hadoop ``FileContext``
  rename, which refuses an existing target, atomically there). A crash leaves only the
  ``.tmp-*`` directory, which readers ignore; a concurrent register that took the number
  first makes this one retry with the next.
- **register** on an object store (S3A, GCS, ABFS, ...), where a rename is a copy that
  becomes visible file by file and an existence check before it races, never renames:

  1. it *claims* the next number by creating ``<name>/<version>/.claim`` only if absent
     (on S3A one PUT with ``If-None-Match: *``, which the store refuses with 412 when the
     object exists); a refused claim makes it try the next number. Of two concurrent
     registrations exactly one gets a number, so they never write into one directory;
  2. it writes the pipeline (and report) into the claimed directory directly;
  3. it writes ``card.json``, holding the SHA-256 of every pipeline file, last, in one PUT:
     the commit point. Readers list only versions with a card, and a card appears whole
     or not at all, so a reader never sees a version before all its files are there, and
     verified loading checks each file against the card anyway.

  A crash before the card leaves a claimed directory without one: invisible to readers
  (the latest stays the previous complete version, which loads), and its number is never
  reused. A failed (not crashed) register deletes its files but keeps the claim, so no
  later registration can share a directory with a delete still under way. This needs a
  store that honours ``If-None-Match: *`` on PUT (AWS S3 does, as does moto; S3A's
  ``fs.s3a.create.conditional.enabled``, on by default); elsewhere the claim falls back to
  ``create(overwrite=false)``, as atomic as the connector makes it.
- **set_alias** writes a temp file next to the alias and moves it over the old one, so
  readers see the old record or the new one, never a missing or partial file. On local
  disk that is a POSIX ``rename(2)`` through Hadoop's raw local file system (not
  ``FileContext``: its ``OVERWRITE`` rename on local disk deletes the target first, and
  the checksummed local file system would leave a stale ``.crc`` beside the new file).
  Other file systems get a ``FileContext`` rename with ``Options.Rename.OVERWRITE``,
  atomic where the file system implements it natively (HDFS) and a delete + rename
  otherwise; so does a file system without a ``FileContext`` binding. Object stores
  (S3A, GCS, ABFS, ...) cannot rename atomically and get one PUT of the new object
  instead, which readers see atomically too.
- No file is ever appended to (object stores cannot): the alias record keeps the
  version it replaced in ``previous_version``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

from sparkml_prod.core.errors import ModelNotFoundError, PromotionRefusedError, SparkmlProdError
from sparkml_prod.registry.card import CARD_FILE, ModelCard
from sparkml_prod.registry.loading import load_verified_pipeline, pipeline_file_hashes
from sparkml_prod.registry.storage import TMP_PREFIX, Storage, normalize_root

__all__ = ["ModelVersion", "ModelRegistry", "format_versions"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_VERSION = re.compile(r"[1-9][0-9]*\Z")
_MAX_REGISTER_ATTEMPTS = 100
# Created first, only if absent, to claim a version number on an object store.
CLAIM_FILE = ".claim"


# Metrics format_versions shows when a version's card has them.
HEADLINE_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc", "log_loss")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model.

    Attributes
    ----------
    name : str
        Model name.
    version : int
        Version number, from 1.
    path : str
        The version directory, ``<root>/<name>/<version>``.
    card : ModelCard
        The version's model card.
    has_report : bool
        Whether a report directory was registered with the model.

    Examples
    --------
    >>> v = registry.get("churn/3")  # doctest: +SKIP
    >>> v.model_path, v.card.metrics["roc_auc"]  # doctest: +SKIP
    ('/models/churn/3/model', 0.8139)
    """

    name: str
    version: int
    path: str
    card: ModelCard = field(hash=False)
    has_report: bool = field(default=False, repr=False)

    @property
    def model_path(self) -> str:
        """Where the PipelineModel is saved: ``<path>/model``."""
        return f"{self.path}/model"

    @property
    def report_path(self) -> str | None:
        """The copied report directory ``<path>/report``, or None if none was registered."""
        return f"{self.path}/report" if self.has_report else None


# A promotion gate: gate(candidate, current holder of the alias or None) -> (ok, reason).
Gate = Callable[[ModelVersion, ModelVersion | None], tuple[bool, str]]


def _check_name(value: str, kind: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"The {kind} {value!r} is not valid: it must start with a letter or digit and "
            "contain only letters, digits, '_', '.' and '-'. Rename it, e.g. 'churn_v2'."
        )
    return value


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class ModelRegistry:
    """Versioned PipelineModels with movable aliases, under one root path.

    Parameters
    ----------
    spark : SparkSession
        A classic (JVM-backed) session; its Hadoop configuration reaches the root.
    root : str
        Registry root: a local path, ``file:/...``, ``hdfs://...``, ``s3a://...``.
        Created on the first register.
    allowed_classes : sequence of str
        Stage classes (or package prefixes ending in ``.``) that may load besides
        ``pyspark.ml.``, ``xgboost.spark.`` and ``sparkml_prod.``.
    storage : Storage, optional
        The file operations on ``root`` (default: ``Storage(spark, root)``); a subclass
        can observe or fail each write, as the registry's fault-injection tests do.

    Examples
    --------
    >>> registry = ModelRegistry(spark, "s3a://ml/models")  # doctest: +SKIP
    >>> v = registry.register("churn", model, {"metrics": {"roc_auc": 0.83}})  # doctest: +SKIP
    >>> registry.promote("churn", v.version, "production")  # doctest: +SKIP
    >>> scorer = registry.load("churn@production")  # doctest: +SKIP
    """

    def __init__(
        self,
        spark: SparkSession,
        root: str,
        allowed_classes: Sequence[str] = (),
        *,
        storage: Storage | None = None,
    ) -> None:
        self.spark = spark
        self.root = normalize_root(root)
        self.allowed_classes = tuple(allowed_classes)
        self._storage = storage if storage is not None else Storage(spark, self.root)

    def __repr__(self) -> str:
        return f"ModelRegistry(root={self.root!r})"

    # -- paths ---------------------------------------------------------------------------

    def _model_dir(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _alias_file(self, name: str, alias: str) -> str:
        return f"{self.root}/{name}/aliases/{alias}"

    # -- reading -------------------------------------------------------------------------

    def _version_numbers(self, name: str) -> list[int]:
        """Every version directory of ``name``, ascending (complete or still copying)."""
        children = self._storage.list_dir(self._model_dir(name))
        return sorted(int(n) for n, is_dir in children if is_dir and _VERSION.match(n))

    def _read_version(self, name: str, version: int) -> ModelVersion | None:
        path = f"{self._model_dir(name)}/{version}"
        text = self._storage.read_text(f"{path}/{CARD_FILE}")
        if text is None:
            return None
        card = ModelCard.from_json(text, where=f"of model {name}/{version} ('{path}/{CARD_FILE}')")
        has_report = self._storage.exists(f"{path}/report")
        return ModelVersion(name, version, path, card, has_report)

    def _read_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        location = self._alias_file(name, alias)
        text = self._storage.read_text(location, alias=True)
        if text is None:
            return None
        try:
            record = json.loads(text)
            int(record["version"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise SparkmlProdError(
                f"Alias file '{location}' is not a JSON object with an integer 'version' "
                f"({error!r}). Point the alias again with set_alias('{name}', '{alias}', "
                "<version>)."
            ) from error
        return dict(record)

    def _unknown_name(self, name: str, ref: str) -> ModelNotFoundError:
        names = self.names()
        held = (
            f"Models in the registry: {', '.join(names)}."
            if names
            else "The registry holds no models yet."
        )
        return ModelNotFoundError(
            f"No model '{name}' in registry '{self.root}' (ref '{ref}'). {held} "
            "Check the name, or register the model first."
        )

    def _get_version(self, name: str, version: int, ref: str) -> ModelVersion:
        found = self._read_version(name, version)
        if found is not None:
            return found
        numbers = [v.version for v in self._versions(name, ref)]  # unknown name raises here
        raise ModelNotFoundError(
            f"No version {version} of model '{name}' in registry '{self.root}' (ref "
            f"'{ref}'). Versions present: {', '.join(map(str, numbers))}. Use one of them, "
            f"or '{name}' for the latest."
        )

    def names(self) -> list[str]:
        """The registered model names, sorted.

        Examples
        --------
        >>> ModelRegistry(spark, "/models").names()  # doctest: +SKIP
        ['churn', 'fraud']
        """
        children = self._storage.list_dir(self.root)
        return sorted(
            n for n, is_dir in children if is_dir and _NAME.match(n) and self._has_versions(n)
        )

    def _has_versions(self, name: str) -> bool:
        """Whether ``name`` has a complete version (one with a card)."""
        model_dir = self._model_dir(name)
        numbers = reversed(self._version_numbers(name))
        return any(self._storage.exists(f"{model_dir}/{n}/{CARD_FILE}") for n in numbers)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every complete version of ``name``, ascending (``.tmp-*`` leftovers ignored).

        Raises
        ------
        ModelNotFoundError
            When the registry holds no version of ``name``.

        Examples
        --------
        >>> [v.version for v in registry.versions("churn")]  # doctest: +SKIP
        [1, 2, 3]
        """
        return self._versions(name, name)

    def _versions(self, name: str, ref: str) -> list[ModelVersion]:
        _check_name(name, "model name")
        found = [self._read_version(name, n) for n in self._version_numbers(name)]
        versions = [v for v in found if v is not None]
        if not versions:
            raise self._unknown_name(name, ref)
        return versions

    def get(self, ref: str) -> ModelVersion:
        """The version a ref names: ``"name@alias"``, ``"name/3"`` or ``"name"`` (latest).

        Raises
        ------
        ModelNotFoundError
            For an unknown name, version or alias, listing what the registry holds.
        ValueError
            For a malformed ref.

        Examples
        --------
        >>> registry.get("churn@production").version  # doctest: +SKIP
        2
        """
        if "@" in ref:
            name, alias = ref.split("@", 1)
            _check_name(name, "model name")
            _check_name(alias, "alias")
            record = self._read_alias(name, alias)
            if record is None:
                held = self._aliases(name, ref)  # unknown name raises here
                listing = ", ".join(f"{a} -> {v}" for a, v in sorted(held.items())) or "none"
                raise ModelNotFoundError(
                    f"No alias '{alias}' of model '{name}' in registry '{self.root}' (ref "
                    f"'{ref}'). Aliases present: {listing}. Point it at a version with "
                    f"set_alias('{name}', '{alias}', <version>) or promote()."
                )
            return self._get_version(name, int(record["version"]), ref)
        if "/" in ref:
            name, number = ref.split("/", 1)
            _check_name(name, "model name")
            if not _VERSION.match(number):
                raise ValueError(
                    f"The ref {ref!r} is not valid: after '/' comes a version number from 1. "
                    f"Use e.g. '{name}/1', '{name}@production' or '{name}'."
                )
            return self._get_version(name, int(number), ref)
        return self.versions(ref)[-1]

    def load(self, ref: str) -> PipelineModel:
        """Load the PipelineModel of a ref (see :meth:`get`), verified before loading.

        Every file must match the SHA-256 its card records, and every stage class must
        be allowlisted (:mod:`sparkml_prod.registry.loading`); otherwise a
        :class:`~sparkml_prod.core.errors.ModelIntegrityError` names the file or class
        and nothing is loaded.

        Examples
        --------
        >>> scores = registry.load("churn@production").transform(features)  # doctest: +SKIP
        """
        return self.load_version(self.get(ref))

    def load_version(self, version: ModelVersion) -> PipelineModel:
        """Load a version already resolved by :meth:`get` (verified as in :meth:`load`)."""
        return load_verified_pipeline(
            self.spark,
            version.model_path,
            version.card.pipeline_sha256,
            model_label=version.card.label_ref,
            extra_allowed=self.allowed_classes,
        )

    def aliases(self, name: str) -> dict[str, int]:
        """Each alias of ``name`` and the version it points at.

        Examples
        --------
        >>> registry.aliases("churn")  # doctest: +SKIP
        {'challenger': 3, 'production': 2}
        """
        return self._aliases(name, name)

    def _aliases(self, name: str, ref: str) -> dict[str, int]:
        if not self._has_versions(_check_name(name, "model name")):
            raise self._unknown_name(name, ref)
        children = self._storage.list_dir(f"{self._model_dir(name)}/aliases")
        held = {}
        for alias, is_dir in sorted(children):
            if not is_dir and _NAME.match(alias):
                record = self._read_alias(name, alias)
                if record is not None:
                    held[alias] = int(record["version"])
        return held

    # -- writing -------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: PipelineModel,
        card: ModelCard,
        report_dir: str | None = None,
    ) -> ModelVersion:
        """Save ``model`` with its ``card`` as the next version of ``name``.

        On local disk and HDFS the version is written completely into
        ``<root>/<name>/.tmp-<uuid>`` and then renamed to ``<root>/<name>/<version>``; on
        an object store the number is claimed with a create-if-absent object and the
        files are written in place (see the module docstring). Either way no reader sees
        a partial version: the card is written last, with ``name``, ``version``,
        ``created_at`` (UTC) and the SHA-256 of every file of the saved pipeline filled
        in by the registry.

        Parameters
        ----------
        name : str
            Model name: a letter or digit, then letters, digits, ``_``, ``.``, ``-``.
        model : PipelineModel
            The fitted pipeline.
        card : ModelCard
            The model card training built (its identity fields are replaced).
        report_dir : str, optional
            A report directory (report.html, PNGs, metrics.json) copied to ``report/``.

        Examples
        --------
        >>> v = registry.register("churn", model, card,
        ...                       report_dir="demo-output/report")  # doctest: +SKIP
        >>> v.version, v.report_path  # doctest: +SKIP
        (1, '/models/churn/1/report')
        """
        _check_name(name, "model name")
        try:
            json.dumps(dataclasses.asdict(card))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"The model card of model '{name}' is not JSON-serialisable: {error}. Convert "
                "values to str, int, float, bool, list or dict first."
            ) from error
        report_source = None
        if report_dir is not None:
            report_source = report_dir
            if "://" not in report_dir and not report_dir.startswith("file:"):
                if not os.path.isdir(report_dir):
                    raise FileNotFoundError(
                        f"Report directory '{report_dir}' of model '{name}' does not exist "
                        "or is not a directory. Write the report first, or pass "
                        "report_dir=None."
                    )
                report_source = Path(report_dir).resolve().as_uri()

        if self._storage.object_store:
            return self._register_in_place(name, model, card, report_source)
        temp = f"{self._model_dir(name)}/{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            self._storage.save_pipeline(model, f"{temp}/model")
            hashes = pipeline_file_hashes(self.spark, f"{temp}/model")
            if report_source is not None:
                self._storage.copy_in(report_source, f"{temp}/report")
            version = max(self._version_numbers(name), default=0) + 1
            for _ in range(_MAX_REGISTER_ATTEMPTS):
                record = dataclasses.replace(
                    card,
                    name=name,
                    version=version,
                    created_at=_utc_now(),
                    pipeline_sha256=hashes,
                )
                self._storage.write_text(f"{temp}/{CARD_FILE}", record.to_json())
                path = f"{self._model_dir(name)}/{version}"
                if self._storage.rename_new(temp, path):
                    return ModelVersion(name, version, path, record, report_source is not None)
                # Another register took this number: try the next free one.
                version = max([*self._version_numbers(name), version]) + 1
            raise self._numbers_taken(name)
        except BaseException:
            self._storage.delete(temp)
            raise

    def _numbers_taken(self, name: str) -> SparkmlProdError:
        return SparkmlProdError(
            f"Could not register model '{name}' in registry '{self.root}': "
            f"{_MAX_REGISTER_ATTEMPTS} version numbers were taken concurrently. Retry."
        )

    def _register_in_place(
        self, name: str, model: PipelineModel, card: ModelCard, report_source: str | None
    ) -> ModelVersion:
        """Register on an object store: claim a number, write in place, the card last.

        The number is claimed by creating ``<version>/.claim`` only if absent (one
        conditional PUT), so two registrations never share a directory; a taken number
        makes this one try the next. The pipeline and report are then written into the
        claimed directory directly (no rename, which an object store does by copying),
        and ``card.json`` with the SHA-256 of every pipeline file is written last, in one
        PUT: readers see a version only once its card is there, and then whole.
        """
        version = max(self._version_numbers(name), default=0) + 1
        claim = json.dumps({"claimed_at": _utc_now(), "token": uuid.uuid4().hex})
        for _ in range(_MAX_REGISTER_ATTEMPTS):
            path = f"{self._model_dir(name)}/{version}"
            if self._storage.create_new(f"{path}/{CLAIM_FILE}", claim):
                break
            version = max([*self._version_numbers(name), version]) + 1
        else:
            raise self._numbers_taken(name)
        try:
            self._storage.save_pipeline(model, f"{path}/model")
            hashes = pipeline_file_hashes(self.spark, f"{path}/model")
            if report_source is not None:
                self._storage.copy_in(report_source, f"{path}/report")
        except BaseException:
            # Remove what was written but keep the claim: the number stays taken, so no
            # later registration writes into a directory this one may still be deleting.
            with contextlib.suppress(Exception):
                self._storage.delete(f"{path}/model")
                self._storage.delete(f"{path}/report")
            raise
        record = dataclasses.replace(
            card, name=name, version=version, created_at=_utc_now(), pipeline_sha256=hashes
        )
        # The commit point. Nothing is deleted if it fails: the card may have landed.
        self._storage.write_text(f"{path}/{CARD_FILE}", record.to_json())
        return ModelVersion(name, version, path, record, report_source is not None)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point ``alias`` of ``name`` at ``version``, atomically for readers.

        The record keeps the version the alias pointed at before in
        ``previous_version``. Pointing an alias at the version it already holds changes
        nothing.

        Raises
        ------
        ModelNotFoundError
            When the version does not exist; the alias is left unchanged.

        Examples
        --------
        >>> registry.set_alias("churn", "challenger", 3)  # doctest: +SKIP
        """
        _check_name(name, "model name")
        _check_name(alias, "alias")
        self._get_version(name, int(version), f"{name}/{version}")
        current = self._read_alias(name, alias)
        previous = None if current is None else int(current["version"])
        if previous == version:
            return
        record = {"version": int(version), "updated_at": _utc_now(), "previous_version": previous}
        self._storage.replace_file(self._alias_file(name, alias), json.dumps(record))

    def promote(
        self,
        name: str,
        version: int,
        alias: str = "production",
        *,
        gate: Gate | None = None,
    ) -> ModelVersion:
        """Move ``alias`` to ``version`` if the ``gate`` (when given) accepts it.

        Parameters
        ----------
        name, version : str, int
            The candidate.
        alias : str
            The alias to move, ``"production"`` by default.
        gate : callable, optional
            Called as ``gate(candidate, current)`` where ``current`` is the version the
            alias points at now (None if unset); returns ``(accepted, reason)``.

        Returns
        -------
        ModelVersion
            The candidate, which the alias now points at.

        Raises
        ------
        PromotionRefusedError
            When the gate refuses; the alias is unchanged.

        Examples
        --------
        >>> def beats_current(candidate, current):
        ...     if current is None:
        ...         return True, "no current model"
        ...     gain = candidate.card.metrics["roc_auc"] - current.card.metrics["roc_auc"]
        ...     return gain >= 0.005, f"roc_auc gain {gain:+.4f} (needs +0.0050)"
        >>> registry.promote("churn", 3, gate=beats_current)  # doctest: +SKIP
        """
        candidate = self._get_version(name, int(version), f"{name}/{version}")
        _check_name(alias, "alias")
        record = self._read_alias(name, alias)
        current = None if record is None else self._read_version(name, int(record["version"]))
        if gate is not None:
            accepted, reason = gate(candidate, current)
            if not accepted:
                holder = (
                    f"still points at version {current.version}"
                    if current is not None
                    else "stays unset"
                )
                raise PromotionRefusedError(
                    f"Promotion of model '{name}' version {candidate.version} to alias "
                    f"'{alias}' refused: {reason}. The alias {holder}. Improve the "
                    "candidate, or call set_alias to override the gate deliberately."
                )
        self.set_alias(name, alias, candidate.version)
        return candidate


def _format_metric(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:.4f}"


def format_versions(versions: list[ModelVersion], aliases: dict[str, int]) -> str:
    """A plain-text table of versions: number, creation time, aliases, headline metrics.

    The metrics columns are those of ``roc_auc``, ``pr_auc`` and ``log_loss`` that at
    least one version's card has in ``metrics``; ``-`` marks a missing value.

    Examples
    --------
    >>> print(format_versions(registry.versions("churn"), {"production": 1}))  # doctest: +SKIP
    version  created_at                 aliases     roc_auc
          1  2024-06-01T10:00:00+00:00  production   0.8123
    """
    if not versions:
        return "(no versions)"
    metrics = [m for m in HEADLINE_METRICS if any(m in v.card.metrics for v in versions)]
    header = ["version", "created_at", "aliases", *metrics]
    rows = []
    for v in versions:
        pointing = ", ".join(sorted(a for a, n in aliases.items() if n == v.version)) or "-"
        values = v.card.metrics
        rows.append(
            [
                str(v.version),
                v.card.created_at,
                pointing,
                *(_format_metric(values.get(m)) for m in metrics),
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {0, *range(3, len(header))}

    def line(cells: list[str]) -> str:
        padded = (
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join(line(r) for r in [header, *rows])
