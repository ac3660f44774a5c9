"""The registry's file operations on any Hadoop file system, through the session's JVM.

How each write stays safe for concurrent readers is described in
:mod:`sparkml_prod.registry.registry`; this module holds the mechanics: listing, reading,
writing, a create that refuses an existing file (atomically on object stores), a rename
that refuses an existing target, and a replace that readers see whole.

Every write of a registration goes through one :class:`Storage` method, so a test can
wrap them to inject a fault (or run another writer or a reader) at any step.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from py4j.java_gateway import is_instance_of
from py4j.protocol import Py4JJavaError
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

from sparkml_prod.core.errors import SparkmlProdError

__all__ = ["Storage", "TMP_PREFIX", "normalize_root"]

_S3A = "org.apache.hadoop.fs.s3a.S3AFileSystem"
# S3A's create-if-absent: the PUT carries "If-None-Match: *", which the store refuses
# (HTTP 412) when the object exists; no existence probe before it.
_S3A_CONDITIONAL_CREATE = "fs.option.create.conditional.overwrite"

TMP_PREFIX = ".tmp-"

# File systems without an atomic rename, whose single PUT per object is atomic instead.
_OBJECT_STORES = frozenset(
    {"s3", "s3a", "s3n", "gs", "abfs", "abfss", "wasb", "wasbs", "oss", "cosn", "obs"}
)


class Storage:
    """The Hadoop FileSystem calls of the registry, through the session's JVM."""

    def __init__(self, spark: SparkSession, root: str) -> None:
        jvm: Any = getattr(spark, "_jvm", None)
        if jvm is None:
            raise SparkmlProdError(
                "ModelRegistry needs a classic SparkSession with a JVM (Hadoop's FileSystem "
                f"API); got {type(spark).__name__} without one (Spark Connect?). Create the "
                "session with sparkml_prod.get_spark()."
            )
        self._gateway: Any = spark.sparkContext._gateway
        self._conf: Any = spark._jsc.hadoopConfiguration()
        self._hadoop: Any = jvm.org.apache.hadoop.fs
        self.fs: Any = self.path(root).getFileSystem(self._conf)
        self.scheme = str(self.fs.getUri().getScheme())
        # The local file system checksums through hidden .crc side files, which a rename
        # cannot replace together with the file: alias files skip them, and so do the
        # listing, hashing and metadata reads of verified loading (the bytes as stored).
        checksummed = is_instance_of(self._gateway, self.fs, "org.apache.hadoop.fs.LocalFileSystem")
        self._alias_fs: Any = self.fs.getRawFileSystem() if checksummed else self.fs
        #: No atomic rename: a registration writes its files in place, the card last.
        self.object_store = self.scheme in _OBJECT_STORES
        self._s3a = self.object_store and str(self.fs.getClass().getName()) == _S3A

    def path(self, location: str) -> Any:
        return self._hadoop.Path(location)

    def is_java(self, error: Py4JJavaError, class_name: str) -> bool:
        return bool(is_instance_of(self._gateway, error.java_exception, class_name))

    def list_dir(self, location: str) -> list[tuple[str, bool]]:
        """(name, is_directory) of each child; empty when ``location`` does not exist."""
        try:
            statuses = self.fs.listStatus(self.path(location))
        except Py4JJavaError as error:
            if self.is_java(error, "java.io.FileNotFoundException"):
                return []
            raise
        return [(str(s.getPath().getName()), bool(s.isDirectory())) for s in statuses]

    def exists(self, location: str) -> bool:
        return bool(self.fs.exists(self.path(location)))

    def delete(self, location: str) -> None:
        self.fs.delete(self.path(location), True)

    def walk_files(self, location: str) -> list[tuple[str, int]]:
        """(POSIX path relative to ``location``, length) of every file below it, sorted.

        Empty when ``location`` does not exist or is a file. Lists through the raw file
        system, so the local file system's ``.crc`` side files are included; callers that
        do not want them leave them out.
        """
        fs = self._alias_fs
        root = fs.makeQualified(self.path(location))
        prefix = str(root).rstrip("/") + "/"
        found = []
        try:
            files = fs.listFiles(root, True)
            while files.hasNext():
                status = files.next()
                name = str(status.getPath())
                if name.startswith(prefix):
                    found.append((name[len(prefix) :], int(status.getLen())))
        except Py4JJavaError as error:
            if self.is_java(error, "java.io.FileNotFoundException"):
                return []
            raise
        return sorted(found)

    def sha256(self, location: str) -> str:
        """SHA-256 (hex) of a file's bytes as stored (raw file system, no checksum check).

        Computed in the JVM: the file streams through a small buffer, so a booster of tens
        of MB is never whole in memory, and no byte of it crosses to Python.
        """
        jvm = self._gateway.jvm
        digest = jvm.java.security.MessageDigest.getInstance("SHA-256")
        stream = self._alias_fs.open(self.path(location))
        try:
            hashing = jvm.java.security.DigestInputStream(stream, digest)
            hashing.transferTo(jvm.java.io.OutputStream.nullOutputStream())
        finally:
            stream.close()
        return bytes(digest.digest()).hex()

    def read_bytes(self, location: str, alias: bool = False) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        fs = self._alias_fs if alias else self.fs
        try:
            stream = fs.open(self.path(location))
        except Py4JJavaError as error:
            if self.is_java(error, "java.io.FileNotFoundException"):
                return None
            raise
        try:
            return bytes(stream.readAllBytes())
        finally:
            stream.close()

    def write_bytes(self, location: str, data: bytes, alias: bool = False) -> None:
        """Create or replace the file with ``data``."""
        fs = self._alias_fs if alias else self.fs
        stream = fs.create(self.path(location), True)
        stream.write(bytearray(data))
        stream.close()  # not on a failed write: an object store would upload the part

    def create_new(self, location: str, text: str) -> bool:
        """Create the file with ``text`` unless it exists; False when it does.

        On S3A this is one conditional PUT (``If-None-Match: *``): of two writers, exactly
        one succeeds, whatever the timing. Other object-store connectors get Hadoop's
        ``create(overwrite=false)``, as atomic as the connector makes it (GCS and ABFS
        send a create-if-absent precondition); HDFS refuses an existing file atomically.
        """
        path = self.path(location)
        try:
            if self._s3a:
                builder = self.fs.createFile(path).overwrite(False)
                builder.must(_S3A_CONDITIONAL_CREATE, True)
                stream = builder.build()
            else:
                stream = self.fs.create(path, False)
            stream.write(bytearray(text.encode("utf-8")))
            stream.close()  # S3A sends the PUT, and learns of a refusal, here
        except Py4JJavaError as error:
            if self.is_java(error, "org.apache.hadoop.fs.FileAlreadyExistsException"):
                return False
            if self._s3a and self.is_java(
                error, "org.apache.hadoop.fs.s3a.RemoteFileChangedException"
            ):
                return False  # 412 Precondition Failed: another writer created it first
            raise
        return True

    def save_pipeline(self, model: PipelineModel, location: str) -> None:
        """``model.write().save(location)``: the pipeline's files, written by Spark."""
        model.write().save(location)

    def read_text(self, location: str, alias: bool = False) -> str | None:
        """The file's text, or None when it does not exist."""
        data = self.read_bytes(location, alias)
        return None if data is None else data.decode("utf-8")

    def write_text(self, location: str, text: str, alias: bool = False) -> None:
        self.write_bytes(location, text.encode("utf-8"), alias)

    def copy_in(self, source: str, target: str) -> None:
        """Copy a directory tree from any file system (``file:`` URIs for local ones)."""
        source_path = self.path(source)
        self._hadoop.FileUtil.copy(
            source_path.getFileSystem(self._conf),
            source_path,
            self.fs,
            self.path(target),
            False,
            self._conf,
        )

    def _file_context(self) -> Any | None:
        try:
            return self._hadoop.FileContext.getFileContext(self.fs.getUri(), self._conf)
        except Py4JJavaError as error:
            if self.is_java(error, "org.apache.hadoop.fs.UnsupportedFileSystemException"):
                return None
            raise

    def _rename_options(self, overwrite: bool) -> Any:
        rename = getattr(self._hadoop, "Options$Rename")
        options = self._gateway.new_array(rename, 1)
        options[0] = rename.OVERWRITE if overwrite else rename.NONE
        return options

    def rename_new(self, source: str, target: str) -> bool:
        """Rename to a target that must not exist; False when it does (nothing moved)."""
        src, dst = (
            self.fs.makeQualified(self.path(source)),
            self.fs.makeQualified(self.path(target)),
        )
        context = self._file_context()
        try:
            if context is not None:
                context.rename(src, dst, self._rename_options(overwrite=False))
            elif self.fs.exists(dst) or not self.fs.rename(src, dst):
                return False
        except Py4JJavaError as error:
            if self.is_java(error, "org.apache.hadoop.fs.FileAlreadyExistsException"):
                return False
            raise
        # A target created between FileContext's existence check and the local rename
        # makes Hadoop copy the source *into* it: move it back out and report a clash.
        nested = self._hadoop.Path(dst, src.getName())
        if self.fs.exists(nested):
            self.fs.rename(nested, src)
            return False
        return True

    def replace_file(self, location: str, text: str) -> None:
        """Replace a small file so that readers see the old content or the new, whole."""
        strategy = _replace_strategy(self.scheme)
        if strategy == "put":
            self.write_text(location, text, alias=True)
            return
        target = self.path(location)
        temp = self._hadoop.Path(target.getParent(), f"{TMP_PREFIX}{uuid.uuid4().hex}")
        fs = self._alias_fs
        stream = fs.create(temp, False)
        stream.write(bytearray(text.encode("utf-8")))
        stream.close()
        try:
            context = self._file_context() if strategy == "file_context" else None
            if strategy == "posix_rename":
                # RawLocalFileSystem.rename is java.io.File.renameTo: rename(2), which
                # replaces an existing file atomically.
                if not fs.rename(temp, target):
                    raise SparkmlProdError(_refused_rename(temp, target))
            elif context is not None:
                context.rename(
                    fs.makeQualified(temp),
                    fs.makeQualified(target),
                    self._rename_options(overwrite=True),
                )
            else:
                fs.delete(target, False)
                if not fs.rename(temp, target):
                    raise SparkmlProdError(_refused_rename(temp, target))
        except BaseException:
            fs.delete(temp, False)
            raise


def _refused_rename(temp: Any, target: Any) -> str:
    return (
        f"Could not move the new alias record '{temp}' to '{target}': the file system "
        f"refused the rename. Check write access to '{target.getParent()}' and retry."
    )


def _replace_strategy(scheme: str) -> str:
    """How :meth:`Storage.replace_file` replaces a file on a file system of this scheme."""
    if scheme in _OBJECT_STORES:
        return "put"
    if scheme == "file":
        return "posix_rename"
    return "file_context"


def normalize_root(root: str) -> str:
    if "://" in root or root.startswith("file:"):
        stripped = root.rstrip("/")
        return root if stripped.endswith(":") else stripped
    return os.path.abspath(root)
