"""A throwaway HDFS on 127.0.0.1 for tests: Hadoop's ``MiniDFSCluster`` in its own JVM.

:func:`mini_dfs_cluster` starts a JVM with only the ``hadoop-client-minicluster`` jars on
its classpath (a py4j gateway, so the jars never enter the Spark session's classpath),
builds a cluster of one NameNode and one DataNode through the gateway, yields a
:class:`MiniDfs` with the ``hdfs://127.0.0.1:PORT`` URI, and stops it however the
``with`` block ends: the cluster's own shutdown, then the JVM's process group by PID
(SIGTERM, SIGKILL after a grace period). The JVM also exits by itself when this Python
process dies (py4j's ``--die-on-broken-pipe``).

Every server binds 127.0.0.1 on a port the OS picks (port 0: free at bind time, so two
clusters on one machine never race for a port): the NameNode's RPC and HTTP ports, the
DataNode's data transfer, IPC and HTTP ports. Names, data and logs live under the given
base directory. WebHDFS is off (nothing uses it, and it costs a few seconds of start-up).

The jars come from ``make hdfs-jars`` (``mvn dependency:copy-dependencies`` of
``tests/hdfs-minicluster.pom.xml`` at the Hadoop line pyspark bundles) into
``$VIRTUAL_ENV/hdfs-jars``, or from ``$SPARKML_PROD_HDFS_JARS``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyspark
from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
from standalone import log_tail, stop_process_groups

__all__ = ["HDFS_JARS_ENV", "MiniDfs", "hdfs_jars_dir", "mini_dfs_cluster"]

HDFS_JARS_ENV = "SPARKML_PROD_HDFS_JARS"
JVM_OPTIONS = ["-Xmx768m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]


@dataclass(frozen=True)
class MiniDfs:
    """A running cluster: its URI (``hdfs://127.0.0.1:PORT``), ports, JVM and start-up time."""

    uri: str
    namenode_port: int
    namenode_http_port: int
    pid: int
    startup_s: float
    base_dir: Path

    def url(self, path: str) -> str:
        """The full URI of an absolute path on the cluster (``/t/events`` -> ``hdfs://...``)."""
        return f"{self.uri}/{path.lstrip('/')}"


def hdfs_jars_dir() -> Path:
    """Where ``make hdfs-jars`` put the minicluster jars (``$SPARKML_PROD_HDFS_JARS``, else
    ``hdfs-jars`` in this interpreter's virtualenv)."""
    return Path(os.environ.get(HDFS_JARS_ENV) or Path(sys.prefix) / "hdfs-jars")


def _classpath(jars: Path) -> str:
    if not any(jars.glob("hadoop-client-minicluster-*.jar")):
        raise RuntimeError(
            f"No hadoop-client-minicluster jar under {jars}: run 'make hdfs-jars' (which "
            f"'make test' runs), or set {HDFS_JARS_ENV} to a directory holding the jars."
        )
    # The web apps extracted next to the jars (see the Makefile) spare Jetty unpacking them
    # from the 56 MB jar at every start; they come first on the classpath.
    webapps = jars / "resources"
    return os.pathsep.join([*([str(webapps)] if webapps.is_dir() else []), str(jars / "*")])


def _py4j_jar() -> str:
    found = sorted((Path(pyspark.__file__).parent / "jars").glob("py4j-*.jar"))
    if not found:
        raise RuntimeError("No py4j jar in pyspark's jars: is pyspark installed whole?")
    return str(found[0])


def _build(jvm: Any, base_dir: Path) -> Any:
    conf = jvm.org.apache.hadoop.hdfs.HdfsConfiguration()
    conf.set("hdfs.minidfs.basedir", str(base_dir))
    conf.setBoolean("dfs.webhdfs.enabled", False)
    for key in ("dfs.datanode.address", "dfs.datanode.ipc.address", "dfs.datanode.http.address"):
        conf.set(key, "127.0.0.1:0")
    builder = getattr(jvm.org.apache.hadoop.hdfs, "MiniDFSCluster$Builder")(conf)
    cluster = (
        builder.numDataNodes(1)
        .nameNodePort(0)
        .nameNodeHttpPort(0)
        .checkDataNodeAddrConfig(True)  # the DataNode takes the addresses above
        .build()
    )
    cluster.waitActive()
    return cluster


@contextlib.contextmanager
def mini_dfs_cluster(base_dir: Path) -> Iterator[MiniDfs]:
    """Run a one-DataNode HDFS on 127.0.0.1 with its files under ``base_dir``; yield it.

    The JVM's output goes to ``base_dir/minidfs.log``.

    Examples
    --------
    >>> with mini_dfs_cluster(tmp_path) as hdfs:  # doctest: +SKIP
    ...     spark.range(3).write.format("delta").save(hdfs.url("/t/numbers"))
    """
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)
    log = base_dir / "minidfs.log"
    started = time.perf_counter()
    classpath = _classpath(hdfs_jars_dir())
    # Open while the JVM runs: py4j copies its stdout into it line by line (stderr is the
    # file itself, inherited).
    out = log.open("w")
    try:
        port, process = launch_gateway(
            jarpath=_py4j_jar(),
            classpath=classpath,
            javaopts=JVM_OPTIONS,
            die_on_exit=True,
            redirect_stdout=out,
            redirect_stderr=out,
            create_new_process_group=True,
            return_proc=True,
            cwd=str(base_dir),
        )
    except BaseException:
        out.close()
        raise
    gateway: JavaGateway | None = None
    cluster: Any = None
    try:
        gateway = JavaGateway(gateway_parameters=GatewayParameters(port=port))
        try:
            cluster = _build(gateway.jvm, base_dir / "dfs")
        except Exception as error:
            raise RuntimeError(
                f"MiniDFSCluster did not start: {error}\nLast lines of {log}:\n{log_tail(log)}"
            ) from error
        namenode = cluster.getNameNode()
        yield MiniDfs(
            uri=f"hdfs://127.0.0.1:{int(cluster.getNameNodePort())}",
            namenode_port=int(cluster.getNameNodePort()),
            namenode_http_port=int(namenode.getHttpAddress().getPort()),
            pid=process.pid,
            startup_s=time.perf_counter() - started,
            base_dir=base_dir,
        )
    finally:
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.shutdown()
        if gateway is not None:
            with contextlib.suppress(Exception):
                gateway.close()
        stop_process_groups([process])
        out.close()
